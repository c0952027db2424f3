"""Kernel packages register with the core by entry point; the core imports none of them by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helios_backends.backends import device_backend
from helios_backends.ops import TorchOps, default_ops
from helios_backends.wan_decoder import WanChunkDecoder


def test_cuda_and_npu_are_served_by_the_installed_kernel_packages():
    from helios_npu.device import npu_device
    from helios_npu.ops import NpuOps
    from helios_triton_kernels import ops as triton_ops

    cuda, npu = device_backend("cuda"), device_backend("npu")
    assert cuda.ops is triton_ops.TritonOps and cuda.decoder is triton_ops and cuda.device is None
    assert npu.ops is NpuOps and npu.device is npu_device and npu.decoder is None


def test_a_device_without_a_backend_gets_the_torch_reference():
    from .test_vae import tiny_vaes

    assert device_backend("cpu") is None
    assert type(default_ops("cpu")) is TorchOps
    assert WanChunkDecoder(tiny_vaes()[0]).kernels is None


def test_the_pre_0_2_package_names_import_the_new_packages_with_a_warning(tmp_path):
    """Run outside the checkout: there the folders' own names are not on the path, only the installed ones."""
    script = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import npu.device, vllm_plugin\n"
        "import helios_npu.device, helios_vllm\n"
        "assert npu.device is helios_npu.device and vllm_plugin is helios_vllm, (npu.device, vllm_plugin)\n"
        "for w in caught: print(w.category.__name__, w.message)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "FutureWarning the package 'npu' is now named 'helios_npu'; 'npu' goes away in the next release",
        "FutureWarning the package 'vllm_plugin' is now named 'helios_vllm'; 'vllm_plugin' goes away in the next release",
    ]
