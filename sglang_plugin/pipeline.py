"""SGLang pipelines that run the Helios core step by step.

SGLang loads the checkpoint through `load_modules`, which here builds one `Helios` from the
folder; two stages then run the request on SGLang's request object:

    HeliosPlanStage      Req -> GenerationRequest -> Plan   (bad fields fail the request, named)
    HeliosSessionStage   one core Session: text and I2V/V2V conditioning encoded, every chunk
                         denoised (progress reported per step) and decoded, each chunk encoded into
                         the mp4 while the next is generated (helios_sglang.streamed_mp4); the
                         request's hold on the device released at its end

A realtime websocket's chunk requests (`batch.session` set) skip the plan and run one chunk of
the websocket's own core session (helios_sglang.realtime).

The served mp4 is SGLang's own encoding of the core's uint8 frames: written by its streamed
encoder during the session where SGLang allows a stage to (CUDA, a saved single video), else
from the frames handed over as uint8 arrays, which its writer takes as they are.

The pipeline is a `LoRAPipeline`, the class SGLang's worker asks for its LoRA routes
(/v1/set_lora, /v1/merge_lora_weights, /v1/unmerge_lora_weights, /v1/list_loras) and whose start-up applies
--lora-path; its methods are overridden to merge through the core (helios_sglang.lora).
"""

from __future__ import annotations

import numpy as np

from sglang.multimodal_gen.runtime.disaggregation.roles import RoleType
from sglang.multimodal_gen.runtime.distributed.group_coordinator import get_local_torch_device
from sglang.multimodal_gen.runtime.pipelines_core.lora.pipeline import LoRAPipeline
from sglang.multimodal_gen.runtime.platforms import current_platform
from sglang.multimodal_gen.runtime.pipelines_core.schedule_batch import OutputBatch, Req
from sglang.multimodal_gen.runtime.pipelines_core.stages.base import PipelineStage
from sglang.multimodal_gen.runtime.server_args import ServerArgs
from sglang.multimodal_gen.runtime.utils.hf_diffusers_utils import maybe_download_model
from sglang.multimodal_gen.runtime.utils.logging_utils import init_logger
from sglang.multimodal_gen.runtime.utils.precision_types import PRECISION_TO_TYPE

from helios_backends.errors import CheckpointError, RequestError
from helios_backends.loading import read_configs
from helios_backends.ops import default_ops
from helios_backends.pipeline import Helios

from .front_door import check_not_deleted, core_quantization, forget_deleted
from .lora import ALWAYS_MERGED, NamedAdapter, check_target, check_strength, configured_paths, lora_status, requested_adapters
from .offload import core_offload
from .parallel import worker_parallel_groups
from .realtime import run_realtime_chunk
from .request_mapping import core_generator, explicit_fields_of, to_generation_request
from .streamed_mp4 import StreamedMp4


logger = init_logger(__name__)


class _HeliosStage(PipelineStage):
    def __init__(self, helios: Helios):
        super().__init__()
        self.helios = helios


class HeliosPlanStage(_HeliosStage):
    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        if batch.session is not None:  # a realtime chunk: its session was planned at chunk 0
            return batch
        request = to_generation_request(batch.sampling_params, explicit_fields_of(batch))
        batch.helios_plan = self.helios.plan(request)
        return batch


class HeliosSessionStage(_HeliosStage):
    def forward(self, batch: Req, server_args: ServerArgs) -> OutputBatch:
        if batch.session is not None:
            return run_realtime_chunk(self.helios, batch)
        plan = batch.helios_plan
        session = self.helios.session(plan, generator=core_generator(batch.sampling_params, plan), keep="frames")
        mp4 = StreamedMp4.open(batch, server_args, plan.batch_size, self.helios.device)
        try:
            with self.progress_bar(total=session.total_steps, batch=batch) as progress:

                def on_step(_):
                    progress.update(1)
                    check_not_deleted(batch.request_id)  # a DELETE stops the job before its next step

                check_not_deleted(batch.request_id)
                for chunk in session.chunks(on_step=on_step):
                    if mp4 is not None:
                        mp4.write(chunk.frames)  # encoded while the next chunk is generated
        except BaseException:
            if mp4 is not None:
                mp4.abort()
            raise
        finally:
            session.close()
            forget_deleted(batch.request_id)
            logger.info("Helios core: request released; offloaded blocks on the device: %s", self.helios.resident_blocks)
        del batch.helios_plan
        written = mp4.finish() if mp4 is not None else None
        if written is not None:
            logger.info("Helios core: mp4 encoded chunk by chunk during the session: %s", written[0])
            return OutputBatch(output_file_paths=written, metrics=batch.metrics)
        frames = session.video()
        return OutputBatch(output=[np.ascontiguousarray(v) for v in frames.numpy()], metrics=batch.metrics)


class HeliosCorePipeline(LoRAPipeline):
    """Helios-Base (model_index.json `_class_name` HeliosPipeline) on the shared core."""

    pipeline_name = "HeliosPipeline"
    is_video_pipeline = True
    _required_config_modules = ["text_encoder", "tokenizer", "vae", "transformer", "scheduler"]

    def validate_disagg_role(self, role: RoleType) -> None:
        # A request's sampler state lives in one process from start to finish.
        if role != RoleType.MONOLITHIC:
            raise ValueError(f"--disagg-role {role.value}: Helios runs monolithic only (accepted: monolithic)")

    def load_modules(self, server_args: ServerArgs, loaded_modules=None) -> dict:
        """One `Helios` from the folder, in the precisions of the pipeline config, on SGLang's
        process groups (helios_sglang.parallel) with SGLang's offload settings (helios_sglang.offload);
        LoRAPipeline's start-up then merges --lora-path through `set_lora`."""
        folder = maybe_download_model(self.model_path, force_diffusers_model=True, revision=server_args.revision)
        self.model_path = folder
        config = server_args.pipeline_config
        offload = core_offload(server_args, read_configs(folder).transformer.num_layers)
        parallel = worker_parallel_groups(server_args, folder)
        logger.info(
            "Helios core: offload=%s offload_slots=%d offload_resident=%d parallel=%s", offload.offload, offload.slots, offload.resident,
            parallel.config if parallel else None
        )
        helios = Helios.from_pretrained(
            folder,
            device=get_local_torch_device(),
            ops=default_ops(current_platform.device_type),  # SGLang's NPU platform: the NPU backend
            dtype=PRECISION_TO_TYPE[config.dit_precision],
            vae_dtype=PRECISION_TO_TYPE[config.vae_precision],
            parallel=parallel,
            offload=offload.offload,
            offload_slots=offload.slots,
            offload_resident=offload.resident,
            quantization=core_quantization(server_args),
        )
        return {"helios": helios}

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        helios = self.get_module("helios")
        self.add_stage(HeliosPlanStage(helios), "helios_plan_stage")
        self.add_stage(HeliosSessionStage(helios), "helios_session_stage")

    # -- LoRA: SGLang's LoRAPipeline interface on the core's merged adapters ----------------------

    adapter_set: tuple[NamedAdapter, ...] = ()  # the adapters of the last set_lora
    adapters_merged: bool = False

    def convert_to_lora_layers(self, snapshot_base: bool = True) -> None:
        """Nothing to wrap: the core merges adapters into its own weights and keeps the base values."""

    def set_lora(
        self,
        lora_nickname: str | list[str],
        lora_path: str | None | list[str | None] = None,
        target: str | list[str] = "all",
        strength: float | list[float] = 1.0,
        merge_weights: bool | None = None,
        merge_mode: str | None = None,
        lora_alpha: int | None | list[int | None] = None,
        cache_merged: bool = False,
    ) -> None:
        """Merge exactly the named adapters (SGLang's start-up with --lora-path, and /v1/set_lora).

        A path must be the server's --lora-path or inside it; a bad adapter raises naming it and
        leaves the weights as they were (the worker answers the route with the error and serves on).
        """
        if merge_weights is False:
            raise RequestError("merge_weights", f"{ALWAYS_MERGED} (accepted: true)")
        adapters = requested_adapters(
            lora_nickname, lora_path, strength, target, merge_mode, lora_alpha, configured_paths(self.server_args), self.loaded_adapter_paths
        )
        try:
            self.get_module("helios").set_loras([(a.path, a.scale) for a in adapters])
        except CheckpointError as exc:
            raise RequestError("lora_path", str(exc)) from None
        self.loaded_adapter_paths.update((a.nickname, a.path) for a in adapters)
        self.adapter_set, self.adapters_merged = tuple(adapters), True
        logger.info("Helios core: LoRA merged: %s", [(a.nickname, a.scale) for a in adapters])

    def merge_lora_weights(self, target: str = "all", strength: float = 1.0) -> None:
        """Merge the adapters of the last set_lora again (after an unmerge), each at `strength`."""
        check_target(target)
        if not self.adapter_set:
            raise RequestError("merge_lora_weights", "no adapter is loaded; call /v1/set_lora first")
        adapters = tuple(NamedAdapter(a.nickname, a.path, check_strength(strength)) for a in self.adapter_set)
        self.get_module("helios").set_loras([(a.path, a.scale) for a in adapters])
        self.adapter_set, self.adapters_merged = adapters, True

    def unmerge_lora_weights(self, target: str = "all") -> None:
        """The base weights back (bit-exact); the adapters stay loaded for merge_lora_weights."""
        check_target(target)
        self.get_module("helios").set_loras([])
        self.adapters_merged = False

    def is_lora_set(self, target: str = "all") -> bool:
        return bool(self.adapter_set)

    def is_lora_effective(self, target: str = "all") -> bool:
        return self.adapters_merged

    def get_lora_status(self) -> dict:
        return lora_status(self.adapter_set, self.loaded_adapter_paths, self.adapters_merged)


class HeliosCorePyramidPipeline(HeliosCorePipeline):
    """Helios-Mid and Helios-Distilled (`_class_name` HeliosPyramidPipeline, told apart by its flags)."""

    pipeline_name = "HeliosPyramidPipeline"
