"""The stand-in for vllm-ascend's `vllm_ascend.platform.NPUPlatform` (see __init__.py).

vLLM imports it while it is still choosing its platform, so it imports vLLM's platform classes
only (nothing of vLLM-Omni, which imports the rest of vLLM).
"""

from __future__ import annotations

from vllm.platforms.cpu import CpuPlatform
from vllm.platforms.interface import PlatformEnum


class AscendStandinPlatform(CpuPlatform):
    """NPUPlatform's identity, out of tree with device "npu", over the host's CPU platform."""

    _enum = PlatformEnum.OOT
    device_name: str = "npu"
    device_type: str = "npu"
