"""The vLLM-Omni pipeline for Helios checkpoints: vLLM-Omni's pipeline contract driving our core.

vLLM-Omni builds this class from its `OmniDiffusionConfig`, asks it to run requests, and turns
what it returns into videos. Everything Helios-specific (loading, validation, sampling, decoding)
is the core's; this file translates requests and results and maps the engine's step-wise
execution (used by `--diffusion-streaming-output`) onto the core's `Generation` state machine.
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
from vllm_omni.diffusion.models.interface import ReferenceVideoDecodeSpec
from vllm_omni.errors import OmniClientError

from helios_backends.errors import GenerationTimeout, RequestError
from helios_backends.loading import FolderConfigs, plan_for_folder, read_configs
from helios_backends.media import MAX_VIDEO_FRAMES
from helios_backends.config import uses_cfg_by_default
from helios_backends.parallel import ParallelConfig, ParallelGroups, engine_parallel_config
from helios_backends.pipeline import Helios
from helios_backends.sampler import Generation

from .front_door import check_engine_options
from .requests import to_generation_request

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
    from vllm_omni.platforms import current_omni_platform

    from .platform import CpuOmniPlatform

    if config.world_size > 1 and not od_config.step_execution and isinstance(current_omni_platform, CpuOmniPlatform):
        raise ValueError(
            f"{config.world_size} diffusion workers on the CPU platform need --step-execution (step_execution=True): "
            "vLLM-Omni's request-mode output thread needs an accelerator stream"
        )


def core_offload(od_config: OmniDiffusionConfig) -> str:
    """The core's offload mode for the engine's offload settings, which the core then owns.

    `--enable-cpu-offload` (or `--diffusion-offload-config` mode=module) -> "model",
    `--enable-layerwise-offload` (mode=layer) -> "layer" with its prefetching side stream. The
    policy vLLM-Omni resolved for this worker is then set to none, so its own offload backend
    does not hook the core's modules a second time.
    """
    from vllm_omni.diffusion.offloader.config import OffloadStrategy, resolve_offload

    modes = {OffloadStrategy.NONE: "none", OffloadStrategy.MODEL_LEVEL: "model", OffloadStrategy.LAYER_WISE: "layer"}
    resolved = resolve_offload(od_config)
    if resolved.strategy not in modes:
        raise ValueError(
            f"offload strategy {resolved.strategy.name.lower()} (--enable-distributed-layerwise-offload): "
            "not supported by the Helios core; accepted: --enable-cpu-offload or --enable-layerwise-offload"
        )
    od_config._resolved_diffusion_offload = dataclasses.replace(resolved, strategy=OffloadStrategy.NONE)
    return modes[resolved.strategy]


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

    def pre_process(request):
        sampling = request.sampling_params
        try:
            for name in ("timesteps", "sigmas"):
                if getattr(sampling, name) is not None:
                    raise RequestError(name, "custom schedules are not accepted; Helios' schedule comes from its scheduler config")
            core_request, _ = to_generation_request(request.prompt, sampling)
            planned = plan_for_folder(folder, core_request, sp_degree)
        except RequestError as exc:
            raise client_error(exc) from None
        if od_config.step_execution or od_config.streaming_output:
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


class _Run:
    """One request in flight: the core's Generation plus what the engine adds (output type, collected output)."""

    def __init__(self, helios: Helios, gen: Generation, output_type: str):
        self.helios = helios
        self.gen = gen
        self.latent_output = output_type == "latent"
        self.collected: list[torch.Tensor] = []
        if self.latent_output and gen.prefix_latents is not None:
            self.collected.append(gen.prefix_latents.float().cpu())

    def chunk_steps(self, chunk: int) -> int:
        return sum(self.gen.plan.chunk_steps(chunk, self.gen.scheduler.kind))

    def step(self) -> None:
        """One core step; the core's timeout_s deadline becomes the client's 408."""
        try:
            self.gen.step()
        except GenerationTimeout as exc:
            raise OmniClientError(f"Helios request: {exc}", status_code=408) from None

    def finish_chunk(self) -> torch.Tensor:
        """End the denoised chunk; its frames (B, T, H, W, 3) uint8, or its latents for output_type latent."""
        chunk = self.gen.end_chunk()
        if self.latent_output:
            return chunk.latents.float().cpu()
        return self.helios.decode(self.gen, chunk)

    def video(self) -> torch.Tensor:
        return torch.cat(self.collected, dim=2 if self.latent_output else 1)


class HeliosCorePipeline(nn.Module):
    """vLLM-Omni pipeline for the `HeliosPipeline` / `HeliosPyramidPipeline` architectures.

    Request mode (`forward`) runs a whole request; step mode (`prepare_encode`, `denoise_step`,
    `step_scheduler`, `post_decode`) lets the engine interleave requests step by step and, with
    `--diffusion-streaming-output`, hand out every chunk as soon as the core has decoded it.
    """

    supports_step_execution: ClassVar[bool] = True
    supports_request_cancellation: ClassVar[bool] = True
    # No start-up warm-up: the core compiles nothing, and the engine's fixed 512x512 warm-up
    # request would cost a whole chunk (75 s for the tiny model on 2 CPU cores).
    dummy_run_num_frames: ClassVar[int] = 0
    _dit_modules: ClassVar[list[str]] = ["transformer"]
    _encoder_modules: ClassVar[list[str]] = ["text_encoder"]
    _vae_modules: ClassVar[list[str]] = ["vae"]

    def __init__(self, *, od_config: OmniDiffusionConfig, prefix: str = ""):
        super().__init__()
        self.od_config = od_config
        configs = read_configs(od_config.model)
        check_engine_options(od_config)  # quantization, cache backends, LoRA, sleep mode: refused by flag
        # Refuses, at start-up, what the core cannot run; maps the rest onto the engine's groups.
        config = served_parallel_config(od_config, configs)
        check_cpu_workers(od_config, config)
        parallel = engine_parallel_groups(config)
        self.streaming = bool(od_config.streaming_output)
        offload = core_offload(od_config)
        with default_dtype(torch.float32):
            self.helios = Helios.from_pretrained(
                od_config.model, device=get_local_device(), dtype=od_config.dtype, parallel=parallel, offload=offload
            )
        # Registered as submodules so the engine's memory accounting, offload and compile find them.
        self.transformer = self.helios.transformer
        self.text_encoder = self.helios.text_encoder.encoder
        self.vae = self.helios.vae.model

    @classmethod
    def reference_video_decode_spec(cls, *, num_frames: int | None, extra_args: dict) -> ReferenceVideoDecodeSpec:
        """Hand V2V the whole uploaded video, as the core's CLI does: its first frame anchors the
        video and its end-aligned chunks feed the history; the engine's default would keep only
        the first num_frames."""
        return ReferenceVideoDecodeSpec(max_frames=MAX_VIDEO_FRAMES, keep="first")

    def load_weights(self, weights) -> None:
        """Weights were read by the core's loader when the pipeline was built; the engine sends none.

        Returning None tells the engine there is no per-tensor bookkeeping to check.
        """
        for _ in weights:
            raise RuntimeError("HeliosCorePipeline loads its checkpoint itself; it takes no engine weights")
        return None

    # -- request mode -----------------------------------------------------------------------------

    def _start(self, prompt, sampling) -> _Run:
        try:
            request, adapter = to_generation_request(prompt, sampling)
            gen = self.helios.start(request)
        except RequestError as exc:
            raise client_error(exc) from None
        return _Run(self.helios, gen, adapter.get("output_type", "frames"))

    def forward(self, req) -> DiffusionOutput:
        if len(req.requests) != 1:
            raise ValueError(f"Helios runs one request at a time, got a batch of {len(req.requests)}")
        request = req.requests[0]
        run = self._start(request.prompt, request.sampling_params)
        gen = run.gen
        while not gen.done:
            gen.begin_chunk()
            while not gen.chunk_denoised:
                check_request_cancellation()
                run.step()
            run.collected.append(run.finish_chunk())
        return DiffusionOutput(output=run.video())

    # -- step mode --------------------------------------------------------------------------------
    # The engine's runner batches `state.latents` and `state.timesteps` rows across requests and
    # counts steps with `step_index` / `step_in_chunk`. The core owns the real latents and
    # schedule, so a state carries one placeholder row per video and the step indices of its
    # current chunk (streaming) or of the whole request, which is all the runner reads.

    def _set_step_window(self, state, run: _Run) -> None:
        steps = run.chunk_steps(run.gen.chunk) if self.streaming else run.gen.total_steps
        state.timesteps = torch.arange(steps)
        state.chunk_num_steps = steps if self.streaming else None
        state.step_index = 0
        state.step_in_chunk = 0

    def prepare_encode(self, state, **kwargs: Any):
        run = self._start(state.prompt, state.sampling)
        run.gen.begin_chunk()
        state.extra["helios"] = run
        state.total_chunks = run.gen.plan.num_chunks
        state.chunk_index = 0
        state.do_true_cfg = False  # the core applies CFG itself; the runner must not batch it
        state.latents = torch.zeros(run.gen.plan.batch_size, 1)
        self._set_step_window(state, run)
        return state

    def denoise_step(self, input_batch, *, states: Sequence | None = None, **kwargs: Any) -> None:
        """No batched forward: each request's step runs in `step_scheduler`, so a failure stays that request's."""
        return None

    def step_scheduler(self, state, noise_pred, **kwargs: Any) -> None:
        run: _Run = state.extra["helios"]
        run.step()
        state.step_index += 1
        state.step_in_chunk += 1
        gen = run.gen
        if not self.streaming and gen.chunk_denoised and gen.chunk < gen.plan.num_chunks - 1:
            run.collected.append(run.finish_chunk())
            gen.begin_chunk()

    def post_decode(self, state, **kwargs: Any) -> DiffusionOutput:
        run: _Run = state.extra["helios"]
        index = run.gen.chunk
        output = run.finish_chunk()
        state.chunk_index = index + 1
        if not self.streaming:
            run.collected.append(output)
            return DiffusionOutput(output=run.video())
        if not run.gen.done:
            run.gen.begin_chunk()
            self._set_step_window(state, run)
        return DiffusionOutput(
            output=output,
            chunk_index=index,
            total_chunks=state.total_chunks,
            finished=run.gen.done,
        )
