"""Registering the Helios pipelines with SGLang-Diffusion's model registry.

SGLang picks the pipeline class by model_index.json `_class_name` and the configs by hub name or
by a detector; its built-in Helios claims the hub names and any path containing "helios", so
everything here registers with overwrite=True (which also puts our detector first).
"""

from __future__ import annotations

import threading

PIPELINE_CLASS_NAMES = ("heliospipeline", "heliospyramidpipeline")
HUB_PATHS = {
    "HeliosPipeline": ["BestWishYsh/Helios-Base"],
    "HeliosPyramidPipeline": ["BestWishYsh/Helios-Mid", "BestWishYsh/Helios-Distilled"],
}

_lock = threading.Lock()
_registered = False


def is_helios_pipeline_class(probe: str) -> bool:
    """Detector: SGLang also probes with the folder's lower-cased `_class_name`."""
    return probe in PIPELINE_CLASS_NAMES


def register() -> None:
    """Register once per process (the package import and the entry point both call this)."""
    global _registered
    with _lock:
        if _registered:
            return
        from sglang.multimodal_gen.registry import register_pipeline

        from .configs import HeliosCoreConfig, HeliosCoreSamplingParams
        from .front_door import register_front_door
        from .pipeline import HeliosCorePipeline, HeliosCorePyramidPipeline
        from .realtime import register_realtime

        for pipeline_cls in (HeliosCorePipeline, HeliosCorePyramidPipeline):
            register_pipeline(
                pipeline_cls,
                sampling_param_cls=HeliosCoreSamplingParams,
                pipeline_config_cls=HeliosCoreConfig,
                hf_model_paths=HUB_PATHS[pipeline_cls.pipeline_name],
                model_detectors=[is_helios_pipeline_class],
                overwrite=True,
            )
        register_front_door()
        register_realtime()
        _registered = True
