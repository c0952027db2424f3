"""SGLang-Diffusion plugin: `sglang serve` / `sglang generate` run Helios on the shared core.

Named by `SGLANG_EXTERNAL_MODEL_PACKAGE=helios_sglang` (imported once per SGLang process, the
CLI's model detection and the workers included) and by the `sglang.multimodal_gen.plugins`
entry point `helios`; either way `register()` replaces SGLang's built-in Helios, for every
folder whose model_index.json names HeliosPipeline or HeliosPyramidPipeline.
"""

from .registration import register

register()

__all__ = ["register"]
