"""A stand-in for SGLang-Diffusion's NPU platform on a CPU machine.

On Ascend, SGLang-Diffusion picks its built-in `platforms.npu.NPUPlatformBase` (device_name and
device_type "npu", `get_local_torch_device` = `npu:<LOCAL_RANK>`) when `torch.npu.is_available()`
or `SGLANG_DIFFUSION_PLATFORM_OVERRIDE=npu`. A platform from outside SGLang is declared in its
entry-point group `sglang.multimodal_gen.platforms` and chosen by naming it in that variable;
this one is (tests/npu_standin.py's `register_entry_points`). It says "npu" as its device type
and, unlike the real one, keeps tensors on the host, where the stand-in torch_npu's ops run.
"""

from __future__ import annotations

import torch
from sglang.multimodal_gen.runtime.platforms import PlatformEnum
from sglang.multimodal_gen.runtime.platforms.cpu import CpuPlatform

ENTRY_POINT = "helios_ascend_standin"


class AscendStandinPlatform(CpuPlatform):
    """NPUPlatformBase's identity (device "npu"), out of tree as SGLang requires, over the host."""

    _enum = PlatformEnum.OOT
    device_name = "npu"
    device_type = "npu"
    dispatch_key = CpuPlatform.dispatch_key

    def get_device(self, local_rank: int) -> torch.device:
        """The host, where NPUPlatformBase gives npu:<local_rank> (SGLang asks an out-of-tree platform for it)."""
        return torch.device("cpu")

    def is_cpu(self) -> bool:
        """No device memory: SGLang's worker skips its device statistics (torch.npu's on Ascend), as on the CPU."""
        return True


def activate() -> str:
    return f"{__name__}.AscendStandinPlatform"
