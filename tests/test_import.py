"""What importing the core's entry points loads: the heavy model libraries wait for a model.

Loading a model and generating import neither transformers nor diffusers: the UMT5 text encoder,
its tokenizer and the Wan VAE are our own modules (transformers' UMT5 alone costs a fresh process seconds of imports,
torch._dynamo among them). PyAV loads where a video is read or written (issue 24's cold start;
its timing lives in bench/, not here).
"""

from __future__ import annotations

import ast
import os
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


def test_loading_and_running_a_model_imports_no_diffusers_transformers_or_torch_dynamo(tmp_path):
    """The tiny folder is written in one process, which loads no diffusers (its VAE is our
    helios_backends.wan_vae; writing the text encoder uses transformers' save_pretrained). A fresh
    process then loads it and generates from text and from an image (a VAE encode): no diffusers,
    no transformers (the text encoder and tokenizer are ours) and no torch._dynamo (which
    transformers' model code imports, and torch on the meta device for some ops) may load.
    TORCHDYNAMO_DISABLE is removed: it changes what torch does when dynamo is asked for, not
    whether it gets imported."""
    make = (f"import sys; from helios_backends.tiny import make_tiny; make_tiny({str(tmp_path / 'tiny')!r}, 'distilled'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'diffusers'))")
    made = subprocess.run([sys.executable, "-c", make], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    assert made.stdout.splitlines() == ["[]"]
    script = (
        "import sys\n"
        "import torch\n"
        "from PIL import Image\n"
        "from helios_backends.pipeline import Helios\n"
        "from helios_backends.request import GenerationRequest\n"
        "def loaded():\n"
        "    return sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers') or m.startswith('torch._dynamo'))\n"
        "print(loaded())\n"
        f"core = Helios.from_pretrained({str(tmp_path / 'tiny')!r})\n"
        "print(loaded())\n"
        "image = Image.new('RGB', (128, 64), (200, 40, 90))\n"
        "for extra in ({}, {'image': image}):\n"
        "    request = GenerationRequest(prompt='a fox', height=64, width=128, num_frames=33, pyramid_steps=(1, 1, 1), **extra)\n"
        "    frames = torch.cat([chunk.frames for chunk in core.stream(request)], 1)\n"
        "    assert frames.shape == (1, 33, 64, 128, 3), frames.shape\n"
        "print(loaded())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHDYNAMO_DISABLE"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["[]", "[]", "[]"]
