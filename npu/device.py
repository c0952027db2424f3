"""Choosing an Ascend NPU device; torch_npu is imported only here, behind a guard.

torch_npu needs the CANN runtime: where it is absent, importing it raises ImportError, OSError
(libhccl.so) or RuntimeError, and `importlib.util.find_spec` finding the package proves nothing.
Every such failure means "no NPU here", so CPU and CUDA machines work as if it did not exist.
"""

from __future__ import annotations

import torch

from helios_backends.errors import CheckpointError

MISSING = "torch_npu is not installed or cannot load (needs an Ascend CANN stack)"

_configured = False


def import_torch_npu():
    """torch_npu, or None where it is not installed or cannot load (no CANN stack)."""
    try:
        import torch_npu
    except (ImportError, OSError, RuntimeError):
        return None
    return torch_npu


def configure(torch_npu) -> None:
    """Apply the process-wide Ascend settings once.

    Internal (private NZ) formats off, as upstream Helios sets it: tensors keep the ND layout the
    model's reshapes and safetensors loading assume. jit_compile off: npu_rotary_mul's
    'interleave' mode, which Helios' pair RoPE needs, exists only in that mode.
    """
    global _configured
    if _configured:
        return
    torch_npu.npu.config.allow_internal_format = False
    torch_npu.npu.set_compile_mode(jit_compile=False)
    _configured = True


def npu_device(name: str) -> torch.device:
    """A usable NPU device for "npu" (the current one) or "npu:N", or a one-line error saying why not."""
    torch_npu = import_torch_npu()
    if torch_npu is None:
        raise CheckpointError(f"device {name!r}: {MISSING}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CheckpointError(f"unknown device {name!r} (accepted: cpu, cuda[:N], npu[:N])") from None
    count = torch_npu.npu.device_count()
    if count == 0:
        raise CheckpointError(f"device {name!r}: no Ascend NPU is visible")
    if device.index is not None and device.index >= count:
        raise CheckpointError(f"device {name!r}: only {count} NPU(s) present")
    configure(torch_npu)
    # Indexed: the current device is per thread, and from_pretrained loads on a second thread.
    return device if device.index is not None else torch.device("npu", torch_npu.npu.current_device())
