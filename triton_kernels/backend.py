"""This package as the core's CUDA backend (entry point `cuda` in `helios_backends.backends`)."""

from helios_backends.backends import DeviceBackend

from . import ops

BACKEND = DeviceBackend(ops=ops.TritonOps, decoder=ops, compiles_on_first_use=True)  # the module has the DecoderKernels functions
