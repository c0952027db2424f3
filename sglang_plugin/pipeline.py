"""SGLang pipelines that run the Helios core step by step.

SGLang loads the checkpoint through `load_modules`, which here builds one `Helios` from the
folder; the stages then drive the core's step-wise API on SGLang's request object:

    HeliosPlanStage      Req -> GenerationRequest -> Plan   (bad fields fail the request, named)
    HeliosEncodeStage    helios.start: text and I2V/V2V conditioning encoded, first noise drawn
    HeliosDenoiseStage   begin_chunk / step / end_chunk, reporting progress per step
    HeliosDecodeStage    helios.decode per chunk -> uint8 frames SGLang writes as the mp4

The frames are handed over as uint8 arrays, which SGLang's writer takes as they are, so the
served video holds exactly the core's frames.
"""

from __future__ import annotations

import numpy as np
import torch

from sglang.multimodal_gen.runtime.disaggregation.roles import RoleType
from sglang.multimodal_gen.runtime.distributed.group_coordinator import get_local_torch_device
from sglang.multimodal_gen.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from sglang.multimodal_gen.runtime.pipelines_core.schedule_batch import OutputBatch, Req
from sglang.multimodal_gen.runtime.pipelines_core.stages.base import PipelineStage
from sglang.multimodal_gen.runtime.server_args import ServerArgs
from sglang.multimodal_gen.runtime.utils.hf_diffusers_utils import maybe_download_model
from sglang.multimodal_gen.runtime.utils.logging_utils import init_logger
from sglang.multimodal_gen.runtime.utils.precision_types import PRECISION_TO_TYPE

from helios_backends.loading import read_configs
from helios_backends.pipeline import Helios

from .front_door import check_not_deleted
from .offload import core_offload
from .parallel import worker_parallel_groups
from .request_mapping import explicit_fields_of, to_generation_request


logger = init_logger(__name__)


class _HeliosStage(PipelineStage):
    def __init__(self, helios: Helios):
        super().__init__()
        self.helios = helios


class HeliosPlanStage(_HeliosStage):
    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        request = to_generation_request(batch.sampling_params, explicit_fields_of(batch))
        batch.helios_plan = self.helios.plan(request)
        return batch


class HeliosEncodeStage(_HeliosStage):
    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        plan = batch.helios_plan
        generator = None
        if batch.sampling_params.generator_device == "cpu" and plan.seed is not None:
            # SGLang's switch for device-independent noise: the core draws on this generator's device.
            generator = torch.Generator("cpu").manual_seed(plan.seed)
        batch.helios_generation = self.helios.start(plan, generator=generator)
        return batch


class HeliosDenoiseStage(_HeliosStage):
    @property
    def role_affinity(self) -> RoleType:
        return RoleType.DENOISER

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        gen = batch.helios_generation
        chunks = []
        with torch.no_grad(), self.progress_bar(total=gen.total_steps, batch=batch) as progress:
            while not gen.done:
                gen.begin_chunk()
                while not gen.chunk_denoised:
                    check_not_deleted(batch.request_id)
                    gen.step()
                    progress.update(1)
                chunks.append(gen.end_chunk())
        batch.helios_chunks = chunks
        return batch


class HeliosDecodeStage(_HeliosStage):
    @property
    def role_affinity(self) -> RoleType:
        return RoleType.DECODER

    def forward(self, batch: Req, server_args: ServerArgs) -> OutputBatch:
        gen = batch.helios_generation
        frames = torch.cat([self.helios.decode(gen, chunk) for chunk in batch.helios_chunks], dim=1)
        del batch.helios_chunks, batch.helios_generation
        return OutputBatch(output=[np.ascontiguousarray(v) for v in frames.cpu().numpy()], metrics=batch.metrics)


class HeliosCorePipeline(ComposedPipelineBase):
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
        process groups (sglang_plugin.parallel) with SGLang's offload settings (sglang_plugin.offload)."""
        folder = maybe_download_model(self.model_path, force_diffusers_model=True, revision=server_args.revision)
        self.model_path = folder
        config = server_args.pipeline_config
        offload, offload_slots = core_offload(server_args, read_configs(folder).transformer.num_layers)
        parallel = worker_parallel_groups(server_args, folder)
        logger.info(
            "Helios core: offload=%s offload_slots=%d parallel=%s", offload, offload_slots, parallel.config if parallel else None
        )
        helios = Helios.from_pretrained(
            folder,
            device=get_local_torch_device(),
            dtype=PRECISION_TO_TYPE[config.dit_precision],
            vae_dtype=PRECISION_TO_TYPE[config.vae_precision],
            parallel=parallel,
            offload=offload,
            offload_slots=offload_slots,
        )
        return {"helios": helios}

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        helios = self.get_module("helios")
        self.add_stage(HeliosPlanStage(helios), "helios_plan_stage")
        self.add_stage(HeliosEncodeStage(helios), "helios_encode_stage")
        self.add_stage(HeliosDenoiseStage(helios), "helios_denoise_stage")
        self.add_stage(HeliosDecodeStage(helios), "helios_decode_stage")


class HeliosCorePyramidPipeline(HeliosCorePipeline):
    """Helios-Mid and Helios-Distilled (`_class_name` HeliosPyramidPipeline, told apart by its flags)."""

    pipeline_name = "HeliosPyramidPipeline"
