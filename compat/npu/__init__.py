"""The pre-0.2 name of `helios_npu` (as in `npu.device.npu_device`): imports `helios_npu`, with a FutureWarning, for one release."""

from helios_backends.renamed import forward

forward(__name__, "helios_npu")
