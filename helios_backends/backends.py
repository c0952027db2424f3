"""Device backends: what a kernel package supplies for one torch device type, found by entry point.

The core imports no kernel package by name. A package declares a `DeviceBackend` in the entry-point
group `helios_backends.backends` under the device type it serves (pyproject.toml: `cuda` ->
helios_triton_kernels, `npu` -> helios_npu); the core loads it only when a model is placed on
such a device, so importing the core never imports Triton or torch_npu, and there is no import
cycle (the kernel packages import the core, never the reverse). A caller with other ops passes
them (`Helios.from_pretrained(ops=...)`) and no backend is consulted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

import torch

from .errors import CheckpointError

if TYPE_CHECKING:
    from .ops import TorchOps

ENTRY_POINT_GROUP = "helios_backends.backends"


class DecoderKernels(Protocol):
    """Fused passes of the chunk-wise VAE decoder (wan_decoder.WanChunkDecoder)."""

    def channel_rmsnorm_silu(self, x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, scale: float, eps: float = 1e-12,
                             pre_bias: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor: ...

    def bias_residual_(self, x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DeviceBackend:
    """ops: builds the transformer's ops for the device type. device: checks that a device name
    ("npu:1") is usable and returns it, raising CheckpointError in one line (None: torch's own
    device check). decoder: fused VAE decoder passes (None: the decoder's torch code).
    compiles_on_first_use: its kernels compile when first launched (Triton), so loading a model
    runs it once on tiny inputs meanwhile (helios_backends.warmup)."""

    ops: Callable[[], TorchOps]
    device: Callable[[str], torch.device] | None = None
    decoder: DecoderKernels | None = None
    compiles_on_first_use: bool = False


def device_type_of(device: torch.device | str) -> str:
    """The device type of a torch device or device name ("npu:1" -> "npu"), without asking torch,
    which knows "npu" only once torch_npu is imported."""
    return str(device).split(":")[0]


def device_backend(device_type: str) -> DeviceBackend | None:
    """The installed backend for a torch device type ("cuda", "npu"), or None where none is."""
    found = {ep.value: ep for ep in entry_points(group=ENTRY_POINT_GROUP, name=device_type)}
    if len(found) > 1:
        raise CheckpointError(f"several backends claim device type {device_type!r}: {sorted(found)}")
    return next(iter(found.values())).load() if found else None
