"""vLLM-Omni plugin: `vllm serve <Helios folder> --omni` runs the helios-backends core.

`register()` is the `vllm.general_plugins` entry point; vLLM loads it in every process it
spawns (API server, engine, diffusion workers), so it must be cheap and idempotent. It imports
no torch model code: the pipeline class is registered by name and imported by the worker.
"""

from __future__ import annotations

import dataclasses

ARCHITECTURES = ("HeliosPipeline", "HeliosPyramidPipeline")
PIPELINE_MODULE = "helios_vllm.pipeline"
PIPELINE_CLASS = "HeliosCorePipeline"


def register() -> None:
    """Serve both Helios architectures with our pipeline, replacing vLLM-Omni's own Helios."""
    from vllm_omni.diffusion.registry import _DIFFUSION_MODELS, register_diffusion_model

    for arch in ARCHITECTURES:
        if _DIFFUSION_MODELS.get(arch) != (PIPELINE_MODULE, "", PIPELINE_CLASS):
            register_diffusion_model(
                arch,
                PIPELINE_MODULE,
                PIPELINE_CLASS,
                pre_process_func_name="get_pre_process_func",
                post_process_func_name="get_post_process_func",
            )
    declare_video_output_and_options()


def declare_video_output_and_options() -> None:
    """Mark both architectures' output as video and declare the Helios request options.

    vLLM-Omni keeps these in plain module dicts with no register function
    (`model_metadata._DIFFUSION_MODEL_METADATA`: the output type the video endpoints check;
    `model_extras.registry._EXTRA_SPECS`: the extra-body fields its chat endpoint passes
    through to `extra_args`), so this is the one place that writes them. vLLM-Omni 0.30 already
    lists both architectures as video; the entry is written only if that ever changes.
    """
    from vllm_omni.diffusion.model_metadata import _DIFFUSION_MODEL_METADATA, DiffusionModelMetadata
    from vllm_omni.model_extras.registry import _EXTRA_SPECS

    from .requests import HELIOS_EXTRA_PARAMS

    for arch in ARCHITECTURES:
        metadata = _DIFFUSION_MODEL_METADATA.get(arch, DiffusionModelMetadata())
        if metadata.final_output_type != "video":
            _DIFFUSION_MODEL_METADATA[arch] = dataclasses.replace(metadata, final_output_type="video")
        spec = _EXTRA_SPECS.get(arch, {})
        if spec.get("extra_body_params") != HELIOS_EXTRA_PARAMS:
            _EXTRA_SPECS[arch] = {**spec, "extra_body_params": HELIOS_EXTRA_PARAMS, "extra_output_params": frozenset()}
