"""The vLLM-Omni pipeline for Helios checkpoints: vLLM-Omni's pipeline contract driving our core.

vLLM-Omni builds this class from its `OmniDiffusionConfig`, asks it to run requests, and turns
what it returns into videos. Everything Helios-specific (loading, validation, sampling, decoding)
is the core's; this file translates requests and results and maps the engine's request and
step-wise execution (used by `--diffusion-streaming-output`) onto one core `Session` per request.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from vllm_omni.diffusion.cancellation import check_request_cancellation
from vllm_omni.diffusion.data import DiffusionOutput, OmniDiffusionConfig
from vllm_omni.diffusion.distributed.utils import get_local_device
from vllm_omni.diffusion.interaction.mixin import InteractionMixin
from vllm_omni.diffusion.interaction.modality_handlers.prompt import PromptSession
from vllm_omni.diffusion.interaction.types import ChunkMediaSpec
from vllm_omni.diffusion.models.interface import ReferenceVideoDecodeSpec
from vllm_omni.errors import OmniClientError
from vllm_omni.platforms import current_omni_platform
from vllm.logger import init_logger

from helios_backends.errors import CheckpointError, GenerationTimeout, RequestError
from helios_backends.loading import FolderConfigs, plan_for_folder, read_configs
from helios_backends.media_read import MAX_VIDEO_FRAMES
from helios_backends.ops import default_ops
from helios_backends.config import VARIANT_DEFAULTS, uses_cfg_by_default
from helios_backends.parallel import ParallelConfig, ParallelGroups, engine_parallel_config
from helios_backends.pipeline import Helios
from helios_backends.session import Session

from .front_door import check_engine_options, core_quantization
from .lora import FIELD as LORA_FIELD, adapter_error, check_request_loras, request_loras, startup_loras
from .requests import to_generation_request

# Under vllm_omni's logger, which vLLM-Omni hangs under vLLM's: worker logs show it.
logger = init_logger(f"vllm_omni.{__name__}")

# vLLM-Omni parallel settings the core maps onto its own parallelism -> the flag that sets each.
CORE_PARALLEL_SETTINGS = {
    "ulysses_degree": "--ulysses-degree / --usp",
    "ring_degree": "--ring-degree",
    "cfg_parallel_size": "--cfg-parallel-size",
}
# Settings the core has no counterpart for: each must stay at 1.
REFUSED_PARALLEL_SETTINGS = {
    "tensor_parallel_size": "--tensor-parallel-size",
    "pipeline_parallel_size": "--pipeline-parallel-size",
    "data_parallel_size": "--data-parallel-size",
    "allgather_degree": "--allgather-degree",
    "vae_patch_parallel_size": "--vae-patch-parallel-size",
    "text_encoder_tp_size": "--text-encoder-tp-size",
}
PARALLEL_SETTINGS = {**CORE_PARALLEL_SETTINGS, **REFUSED_PARALLEL_SETTINGS}

# state.extra key: the engine has passed a chunk boundary that the next step applies.
BOUNDARY_DUE = "helios_boundary_due"


def core_parallel_config(parallel_config, num_heads: int, uses_cfg: bool = True) -> ParallelConfig:
    """The core's ParallelConfig for vLLM-Omni's parallel settings, or a start-up error naming the flag.

    Ulysses, Ring and CFG-parallel (size 2, for variants that run CFG) map onto the core; every
    other degree must be 1.
    """
    for name, flag in REFUSED_PARALLEL_SETTINGS.items():
        degree = int(getattr(parallel_config, name, 1) or 1)
        if degree > 1:
            raise ValueError(f"{name}={degree} ({flag}): the Helios core has no {name.removesuffix('_size')}; accepted: 1")
    for name, flag, default in (("use_hsdp", "--use-hsdp", False), ("enable_expert_parallel", "--enable-expert-parallel", False),
                                ("ulysses_mode", "--ulysses-mode", "strict"), ("ulysses_a2a_permute", "--ulysses-a2a-permute", False)):
        value = getattr(parallel_config, name, default)
        if value != default:
            raise ValueError(f"{name}={value!r} ({flag}): not supported by the Helios core; accepted: {default!r}")
    degrees = {name: int(getattr(parallel_config, name, 1) or 1) for name in CORE_PARALLEL_SETTINGS}
    flags = {"ulysses_degree": CORE_PARALLEL_SETTINGS["ulysses_degree"], "ring_degree": CORE_PARALLEL_SETTINGS["ring_degree"],
             "cfg_degree": CORE_PARALLEL_SETTINGS["cfg_parallel_size"]}
    return engine_parallel_config(
        degrees["ulysses_degree"], degrees["ring_degree"], degrees["cfg_parallel_size"], num_heads, flags, uses_cfg
    )


def served_parallel_config(od_config: OmniDiffusionConfig, configs: FolderConfigs) -> ParallelConfig:
    """`core_parallel_config` for the served folder's head count and variant (its read_configs)."""
    return core_parallel_config(
        od_config.parallel_config, configs.transformer.num_attention_heads, uses_cfg_by_default(configs.pipeline.variant)
    )


def check_cpu_workers(od_config: OmniDiffusionConfig, config: ParallelConfig) -> None:
    """Several CPU workers need --step-execution: vLLM-Omni's request-mode output thread opens an
    accelerator stream (`torch.Stream`), which fails on a host without one and leaves requests hanging."""
    from .platform import CpuOmniPlatform

    if config.world_size > 1 and not od_config.step_execution and isinstance(current_omni_platform, CpuOmniPlatform):
        raise ValueError(
            f"{config.world_size} diffusion workers on the CPU platform need --step-execution (step_execution=True): "
            "vLLM-Omni's request-mode output thread needs an accelerator stream"
        )


def core_offload(od_config: OmniDiffusionConfig) -> tuple[str, int]:
    """The core's offload mode and resident blocks for the engine's offload settings, which the core then owns.

    `--enable-cpu-offload` (or `--diffusion-offload-config` mode=module) -> "model",
    `--enable-layerwise-offload` (mode=layer) -> "layer" with its prefetching side stream.
    `{"mode": "layer", "components": ["dit"], "layer_options": {"dit": {"weight_transfer":
    "rank-local", "resident_layers": K}}}` (which vLLM-Omni files under its distributed layerwise strategy) -> "layer" keeping K blocks on the
    device; an all-gathered transfer (weights sharded over the ranks) is refused. The policy
    vLLM-Omni resolved for this worker is then set to none, so its own offload backend does not
    hook the core's modules a second time.
    """
    from vllm_omni.diffusion.offloader.config import DIT_COMPONENT, OffloadStrategy, resolve_offload

    modes = {OffloadStrategy.NONE: "none", OffloadStrategy.MODEL_LEVEL: "model", OffloadStrategy.LAYER_WISE: "layer"}
    resolved = resolve_offload(od_config)
    resident = 0
    if resolved.strategy is OffloadStrategy.DISTRIBUTED_LAYER_WISE and not resolved.uses_allgather(DIT_COMPONENT):
        mode, resident = "layer", resolved.resident_layers
    elif resolved.strategy in modes:
        mode = modes[resolved.strategy]
    else:
        raise ValueError(
            f"offload strategy {resolved.strategy.name.lower()} (--enable-distributed-layerwise-offload, weights all-gathered "
            "over the ranks): not supported by the Helios core; accepted: --enable-cpu-offload, --enable-layerwise-offload, "
            "or a rank-local layer offload with resident_layers"
        )
    od_config._resolved_diffusion_offload = dataclasses.replace(resolved, strategy=OffloadStrategy.NONE)
    return mode, resident


HELIOS_SETTINGS = {"vae_dtype": ("float32", "bfloat16")}


def core_settings(od_config: OmniDiffusionConfig) -> dict[str, str]:
    """Core settings vLLM-Omni has no flag for, from `--additional-config '{"helios": {...}}'`
    (the engine's per-model settings; other keys there belong to other components): an unknown
    key or value is refused at start-up, naming it."""
    given = (od_config.additional_config or {}).get("helios") or {}
    if not isinstance(given, dict):
        raise ValueError(f"--additional-config helios: must be an object of settings, got {given!r}")
    settings = {"vae_dtype": "float32"}
    for key, value in given.items():
        if key not in HELIOS_SETTINGS:
            raise ValueError(f"--additional-config helios.{key}: not a Helios setting; accepted: {sorted(HELIOS_SETTINGS)}")
        if value not in HELIOS_SETTINGS[key]:
            raise ValueError(f"--additional-config helios.{key}: {value!r} is not one of {list(HELIOS_SETTINGS[key])}")
        settings[key] = value
    return settings


def engine_parallel_groups(config: ParallelConfig) -> ParallelGroups | None:
    """This worker's `ParallelGroups` from vLLM-Omni's own process groups (None when nothing is parallel).

    The engine lays ranks out as cfg-outer, sp-inner with contiguous Ulysses groups, so its sp group
    rank is the token shard, Ulysses groups share a ring index, Ring groups share a Ulysses index and
    each cfg group pairs the ranks holding the same shard: the core's layout.
    """
    if config.world_size == 1:
        return None
    from vllm_omni.diffusion.distributed.parallel_state import get_cfg_group, get_sp_group

    sp, cfg = get_sp_group(), get_cfg_group()
    return ParallelGroups.from_engine(
        config, cfg.world_size * sp.world_size, ulysses=sp.ulysses_group, ring=sp.ring_group, sp=sp.device_group, cfg=cfg.device_group
    )


def client_error(exc: RequestError) -> OmniClientError:
    """A core request error as the 4xx that vLLM-Omni returns to the client."""
    return OmniClientError(f"Helios request: {exc}")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """The core is written for torch's float32 default; the engine loads models under its --dtype default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def get_pre_process_func(od_config: OmniDiffusionConfig):
    """Validate requests in the engine process before they are queued, against the checkpoint's configs
    and the served Ulysses x Ring degree.

    A bad request is refused with a 4xx naming the field without reaching the model worker. In
    step mode the engine's step scheduler sizes a request by `sampling_params.timesteps`; the
    schedule itself is the core's, so the planned step indices are recorded there.
    """
    folder = Path(od_config.model)
    configs = read_configs(folder)  # a folder that cannot serve fails at start-up
    kind = configs.scheduler.kind
    sp_degree = served_parallel_config(od_config, configs).sp_degree
    default_loras = startup_loras(od_config.lora_path, od_config.lora_scale)
    step_mode = od_config.step_execution or od_config.streaming_output

    def pre_process(request):
        sampling = request.sampling_params
        try:
            loras = request_loras(sampling.lora_request, sampling.lora_scale, default_loras)
            if step_mode and loras != default_loras:
                # Step mode interleaves requests' steps; switching weights would change another's run.
                raise RequestError(LORA_FIELD, "a per-request LoRA needs request mode (this server runs step mode); use the server's --lora-path set")
            check_request_loras(sampling.lora_request, loras, configs.transformer)
            for name in ("timesteps", "sigmas"):
                if getattr(sampling, name) is not None:
                    raise RequestError(name, "custom schedules are not accepted; Helios' schedule comes from its scheduler config")
            core_request, _ = to_generation_request(request.prompt, sampling)
            planned = plan_for_folder(folder, core_request, sp_degree)
        except RequestError as exc:
            raise client_error(exc) from None
        if step_mode:
            sampling.timesteps = torch.arange(planned.total_steps(kind))
        return request

    return pre_process


def get_post_process_func(od_config: OmniDiffusionConfig):
    """Frames leave the worker as a (B, T, H, W, 3) uint8 tensor; the encoders take numpy; latents stay tensors."""

    def post_process(output):
        if isinstance(output, torch.Tensor) and output.dtype == torch.uint8:
            return output.numpy()
        return output

    return post_process


@contextlib.contextmanager
def timeout_as_408():
    """The core's timeout_s deadline becomes the client's 408."""
    try:
        yield
    except GenerationTimeout as exc:
        raise OmniClientError(f"Helios request: {exc}", status_code=408) from None


class HeliosCorePipeline(nn.Module, InteractionMixin):
    """vLLM-Omni pipeline for the `HeliosPipeline` / `HeliosPyramidPipeline` architectures.

    Request mode (`forward`) runs a whole request; step mode (`prepare_encode`, `denoise_step`,
    `step_scheduler`, `post_decode`) lets the engine interleave requests step by step and, with
    `--diffusion-streaming-output`, hand out every chunk as soon as the core has decoded it.
    Streaming requests take live prompt changes (`session.interaction` on the realtime websocket)
    through vLLM-Omni's interaction contract (`encode_prompt`, the chunk-boundary hooks).
    """

    supports_step_execution: ClassVar[bool] = True
    supports_request_cancellation: ClassVar[bool] = True
    # The engine's own warm-up request is fixed at 512x512 and compiles nothing the core uses at
    # Helios' sizes; the core warms up in `setup_compile` instead.
    dummy_run_num_frames: ClassVar[int] = 0
    _dit_modules: ClassVar[list[str]] = ["transformer"]
    _encoder_modules: ClassVar[list[str]] = ["text_encoder"]
    _vae_modules: ClassVar[list[str]] = ["vae"]
    # The core merges LoRA itself (vllm_plugin.lora); this keeps the engine's PEFT manager away.
    lora_is_fused: ClassVar[bool] = True

    def __init__(self, *, od_config: OmniDiffusionConfig, prefix: str = ""):
        super().__init__()
        self.od_config = od_config
        configs = read_configs(od_config.model)
        check_engine_options(od_config)  # quantization, cache backends, sleep mode: refused by flag
        # Refuses, at start-up, what the core cannot run; maps the rest onto the engine's groups.
        config = served_parallel_config(od_config, configs)
        check_cpu_workers(od_config, config)
        parallel = engine_parallel_groups(config)
        self.streaming = bool(od_config.streaming_output)
        offload, resident = core_offload(od_config)
        settings = core_settings(od_config)
        logger.info("Helios core: offload=%s resident=%d parallel=%s", offload, resident, None if parallel is None else parallel.config)
        with default_dtype(torch.float32):
            self.helios = Helios.from_pretrained(
                od_config.model, device=get_local_device(), dtype=od_config.dtype, vae_dtype=settings["vae_dtype"],
                parallel=parallel, offload=offload, offload_resident=resident,
                ops=default_ops(current_omni_platform.device_type),  # vllm-ascend's platform: the NPU backend
                cuda_graphs=not od_config.enforce_eager,  # --enforce-eager: no captured graphs either
                quantization=core_quantization(od_config),
            )
        self.default_loras = startup_loras(od_config.lora_path, od_config.lora_scale)
        self.helios.set_loras(self.default_loras)  # a bad adapter fails start-up, naming it
        # Registered as submodules so the engine's memory accounting, offload and compile find them.
        self.transformer = self.helios.transformer
        self.text_encoder = self.helios.text_encoder.encoder
        self.vae = self.helios.vae.model

    @property
    def device(self) -> torch.device:
        return self.helios.device

    @classmethod
    def reference_video_decode_spec(cls, *, num_frames: int | None, extra_args: dict) -> ReferenceVideoDecodeSpec:
        """Hand V2V the whole uploaded video, as the core's CLI does: its first frame anchors the
        video and its end-aligned chunks feed the history; the engine's default would keep only
        the first num_frames."""
        return ReferenceVideoDecodeSpec(max_frames=MAX_VIDEO_FRAMES, keep="first")

    def setup_compile(self) -> None:
        """The engine's start-up compile hook (skipped with --enforce-eager): the core compiles its
        kernels and captures its graphs here, so the first request runs as fast as the next."""
        self.helios.warm_up()

    def load_weights(self, weights) -> None:
        """Weights were read by the core's loader when the pipeline was built; the engine sends none.

        Returning None tells the engine there is no per-tensor bookkeeping to check.
        """
        for _ in weights:
            raise RuntimeError("HeliosCorePipeline loads its checkpoint itself; it takes no engine weights")
        return None

    def _session(self, prompt, sampling, whole: bool) -> Session:
        """The request's core session: frames, or latents for output_type latent; whole: it keeps
        every chunk for one output (else each chunk is handed out on its own)."""
        try:
            try:
                self.helios.set_loras(request_loras(sampling.lora_request, sampling.lora_scale, self.default_loras))
            except CheckpointError as exc:  # the weights stay as they were; the next request runs
                raise adapter_error(sampling.lora_request, exc) from None
            request, adapter = to_generation_request(prompt, sampling)
            decode = adapter.get("output_type", "frames") != "latent"
            keep = ("frames" if decode else "latents") if whole else None
            return self.helios.session(request, decode=decode, keep=keep)
        except RequestError as exc:
            raise client_error(exc) from None

    def _close(self, session: Session) -> None:
        """Release the request's hold on the device, and say what of the offloaded blocks stayed there."""
        session.close()
        logger.info("Helios core: request released; offloaded blocks on the device: %s", self.helios.resident_blocks)

    @staticmethod
    def _video(session: Session) -> torch.Tensor:
        return session.video() if session.decode else session.latents()

    # -- request mode -----------------------------------------------------------------------------

    def forward(self, req) -> DiffusionOutput:
        if len(req.requests) != 1:
            raise ValueError(f"Helios runs one request at a time, got a batch of {len(req.requests)}")
        request = req.requests[0]
        check_request_cancellation()
        session = self._session(request.prompt, request.sampling_params, whole=True)
        try:
            with timeout_as_408():
                session.run(on_step=lambda _: check_request_cancellation())
        finally:
            self._close(session)
        return DiffusionOutput(output=self._video(session))

    # -- step mode --------------------------------------------------------------------------------
    # The engine's runner batches `state.latents` and `state.timesteps` rows across requests and
    # counts steps with `step_index` / `step_in_chunk`. The core owns the real latents and
    # schedule, so a state carries one placeholder row per video and the step indices of its
    # current chunk (streaming) or of the whole request, which is all the runner reads. The
    # session is closed when its last chunk is out or a step fails; a state the engine drops
    # (an aborted request) releases its session when it is garbage.

    def _set_step_window(self, state, session: Session, chunk: int) -> None:
        steps = session.chunk_steps(chunk) if self.streaming else session.total_steps
        state.timesteps = torch.arange(steps)
        state.chunk_num_steps = steps if self.streaming else None
        state.step_index = 0
        state.step_in_chunk = 0

    def prepare_encode(self, state, **kwargs: Any):
        session = self._session(state.prompt, state.sampling, whole=not self.streaming)
        state.extra["helios"] = session
        state.total_chunks = session.plan.num_chunks
        state.chunk_index = 0
        state.do_true_cfg = False  # the core applies CFG itself; the runner must not batch it
        # The engine's prompt handler takes live changes only once a request has prompt embeddings.
        state.prompt_embeds = session.generation.prompt_text[:1]
        state.latents = torch.zeros(session.plan.batch_size, 1)
        self._set_step_window(state, session, 0)
        return state

    def denoise_step(self, input_batch, *, states: Sequence | None = None, **kwargs: Any) -> None:
        """No batched forward: each request's step runs in `step_scheduler`, so a failure stays that request's."""
        return None

    def step_scheduler(self, state, noise_pred, **kwargs: Any) -> None:
        session: Session = state.extra["helios"]
        try:
            if state.extra.pop(BOUNDARY_DUE, False):
                self._start_interactions(state, session)
            with timeout_as_408():
                finished = session.step()
        except BaseException:
            self._close(session)
            raise
        if finished is not None:
            state.extra["helios_chunk"] = finished
        state.step_index += 1
        state.step_in_chunk += 1

    def post_decode(self, state, **kwargs: Any) -> DiffusionOutput:
        session: Session = state.extra["helios"]
        chunk = state.extra.pop("helios_chunk")
        state.chunk_index = chunk.index + 1
        if session.done:
            self._close(session)
        if not self.streaming:
            return DiffusionOutput(output=self._video(session))
        if not session.done:
            self._set_step_window(state, session, chunk.index + 1)
        output = chunk.frames if session.decode else chunk.latents.float().cpu()
        return DiffusionOutput(
            output=output,
            chunk_index=chunk.index,
            total_chunks=state.total_chunks,
            finished=session.done,
        )

    # -- live prompt changes (vLLM-Omni's interaction contract) -----------------------------------
    # The engine's PromptInteractionHandler encodes a `session.interaction` prompt with
    # `encode_prompt` when it arrives and starts it at a chunk boundary; the blend itself is the
    # core's (the session's prompt list), so a change that starts at chunk k makes the video of
    # the prompt schedule that starts it there with the same transition. The handler's own
    # blended `state.prompt_embeds` is its bookkeeping and is not read.
    #
    # The engine calls the boundary hook at the end of the step that finishes chunk k-1, after
    # decoding it, and takes an interaction only between steps. A change that reached the workers
    # during that step would miss the boundary to k and start at k+1, or never when k is the last
    # chunk. With few steps per chunk (Base at 2 steps under CFG-parallel on CPU: two quick steps,
    # then a long decode) a change sent on seeing chunk k-2 arrives during that step, so in a
    # three-chunk video it never started. The hook therefore only marks the boundary due, and the
    # handlers advance at the start of the next step, just before chunk k's first denoising step:
    # any change that arrived before chunk k began starts at k. Every rank takes an interaction at
    # the same point of the engine's broadcast message order and runs the same steps, so every
    # rank starts it at the same chunk.

    def encode_prompt(
        self, prompt: str, negative_prompt: str | None = None, do_classifier_free_guidance: bool = False,
        num_videos_per_prompt: int = 1, max_sequence_length: int | None = None, device=None, dtype=None,
    ) -> tuple[torch.Tensor, None]:
        """(1, S, D) states of a live prompt; the handler asks for no negative prompt (the request's stays)."""
        if negative_prompt is not None or do_classifier_free_guidance or num_videos_per_prompt != 1:
            raise ValueError("a live prompt change takes the prompt only: the request's negative prompt and video count stay")
        length = max_sequence_length or VARIANT_DEFAULTS[self.helios.variant].max_sequence_length
        with torch.no_grad():
            return self.helios.encode_prompts([prompt], length), None

    def peek_chunk_media(self, state) -> ChunkMediaSpec:
        """The upcoming chunk's extent, for timeline modalities (the prompt handler needs none)."""
        session: Session = state.extra["helios"]
        fps = state.sampling.fps
        if fps is None or fps <= 0:
            raise ValueError(f"sampling.fps: must be > 0 for a chunk media timeline, got {fps!r}")
        return ChunkMediaSpec(num_media_frames=session.generation.frames_to_keep(state.chunk_index), fps=float(fps),
                              num_latent_frames=session.plan.chunk_frames)

    def apply_interaction_at_chunk_boundary(self, state) -> None:
        """Mark the boundary due: it is applied at the next chunk's first step (see above)."""
        state.extra[BOUNDARY_DUE] = True

    def _start_interactions(self, state, session: Session) -> None:
        """The engine's handlers advance their events; a prompt event started here goes to the core,
        which takes it at the chunk the session begins next (the one this step begins). The engine
        reports the started event with that chunk."""
        super().apply_interaction_at_chunk_boundary(state)
        started = state.interaction_chunk_metadata.started_event_ids if state.interaction_chunk_metadata else []
        track = state.interaction_sessions.get("prompt")
        if isinstance(track, PromptSession) and track.active_event is not None and track.active_event.event_id in started:
            event = track.active_event
            session.generation.set_prompt(event.target_prompt_embeds, event.transition_chunks)
