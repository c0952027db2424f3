"""What importing the core's entry points loads: the heavy model libraries wait for a model.

transformers (the UMT5 encoder) and diffusers (the Wan VAE) take seconds to import; the CLI's
argument checks, `--help` and the engines' request checks need neither, so they load with the
text encoder and the VAE. PyAV loads where a video is read or written (issue 24's cold start; its
timing lives in bench/, not here).
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

HEAVY = ("transformers", "diffusers", "av")
KERNEL_PACKAGES = ("helios_npu", "helios_triton_kernels", "torch_npu")


def loaded_after_import(module: str, packages: tuple[str, ...]) -> list[str]:
    """Which of `packages` a fresh interpreter has loaded after importing `module`."""
    script = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({packages!r})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return ast.literal_eval(done.stdout.strip())


@pytest.mark.parametrize("module", ["helios_backends.pipeline", "helios_backends.cli", "helios_backends.session"])
def test_importing_an_entry_point_loads_no_model_or_video_library(module):
    assert loaded_after_import(module, HEAVY) == []


@pytest.mark.parametrize("module", ["helios_backends", "helios_backends.ops", "helios_backends.pipeline"])
def test_importing_the_core_imports_no_kernel_package(module):
    """Kernel packages register by entry point (helios_backends/backends.py); the core names none."""
    assert loaded_after_import(module, KERNEL_PACKAGES) == []
