"""The stand-in for vLLM-Omni's `NPUOmniPlatform(OmniPlatform, NPUPlatform)` (see __init__.py).

It says "npu" as its device type; unlike the real one it keeps tensors on the host, where the
stand-in torch_npu's ops run, so its devices, memory and streams are the helios CPU platform's.
"""

from __future__ import annotations

from helios_vllm.platform import CpuOmniPlatform

from .platform import AscendStandinPlatform


class AscendStandinOmniPlatform(CpuOmniPlatform):
    device_name: str = AscendStandinPlatform.device_name
    device_type: str = AscendStandinPlatform.device_type
