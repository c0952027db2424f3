"""A stand-in Ascend platform for vLLM and vLLM-Omni on a CPU machine, registered as vllm-ascend's is.

On Ascend, vllm-ascend declares `ascend = vllm_ascend:register` in vLLM's entry-point group
`vllm.platform_plugins`; `register()` names `vllm_ascend.platform.NPUPlatform` (out of tree,
device_name and device_type "npu") without importing it, since vLLM is still choosing its
platform. vLLM-Omni then picks its `NPUOmniPlatform(OmniPlatform, NPUPlatform)`, whose
`get_torch_device` is `npu:<rank>`. Here `activate` and `activate_omni` are declared in
`vllm.platform_plugins` and `vllm_omni.platform_plugins` (tests/npu_standin.py's
`register_entry_points`) and name the classes in `.platform` and `.omni_platform` the same way.
"""


def activate() -> str:
    return f"{__name__}.platform.AscendStandinPlatform"


def activate_omni() -> str:
    return f"{__name__}.omni_platform.AscendStandinOmniPlatform"
