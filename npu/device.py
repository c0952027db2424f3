"""Choosing an Ascend NPU device; torch_npu is imported only here, behind a guard."""

from __future__ import annotations

import torch

from helios_backends.errors import CheckpointError


def import_torch_npu():
    """torch_npu, or None where it is not installed or cannot load (no CANN stack)."""
    try:
        import torch_npu
    except (ImportError, OSError, RuntimeError):
        return None
    return torch_npu


def npu_device(name: str) -> torch.device:
    """A usable NPU device for "npu" or "npu:N", or a one-line error saying why not."""
    if import_torch_npu() is None:
        raise CheckpointError(f"device {name!r}: torch_npu is not installed or cannot load (needs an Ascend CANN stack)")
    device = torch.device(name)
    count = torch.npu.device_count()
    if count == 0:
        raise CheckpointError(f"device {name!r}: no Ascend NPU is visible")
    if device.index is not None and device.index >= count:
        raise CheckpointError(f"device {name!r}: only {count} NPU(s) present")
    return device
