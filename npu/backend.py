"""This package as the core's Ascend backend (entry point `npu` in `helios_backends.backends`).

Loading it never imports torch_npu; building the ops or checking a device does.
"""

from helios_backends.backends import DeviceBackend

from .device import npu_device
from .ops import NpuOps

BACKEND = DeviceBackend(ops=NpuOps, device=npu_device)
