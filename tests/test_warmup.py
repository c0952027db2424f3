"""The warm-up that compiles the kernels while the weights load reaches every kernel variant a
request reaches, so a fresh machine's first request compiles nothing (helios_backends.warmup).

Triton compiles one variant per specialization of a launch: each argument's type, the
divisibility (by 16) or unit value of its integers and pointers, and the constexprs. On CPU the
kernels run on Triton's interpreter, which compiles nothing, so each launch's specialization is
recorded with Triton's own function for it and the warm-up's set is compared with a request's.
"""

from __future__ import annotations

import os

import pytest
import torch

from helios_backends.loading import load_transformer
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest
from helios_backends.vae import WanVAE
from helios_backends.warmup import run_decoder_once, run_transformer_once

from .conftest import HEIGHT, WIDTH

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (scripts/test sets it)")


def specialization(kernel, args, kwargs) -> tuple:
    """What Triton compiles a launch of `kernel` for (triton.runtime.jit's specialization)."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    unspecialized = set(kernel.kwargs.get("do_not_specialize") or ())
    types = tuple(native_specialize_impl(BaseBackend, arg, False, name not in unspecialized, True)
                  for name, arg in zip(kernel.arg_names, args))
    return (kernel.fn.__name__, types, tuple(sorted(kwargs.items())))


@pytest.fixture
def launches(monkeypatch):
    """The specializations of the Triton launches made while the fixture is active."""
    from triton.runtime.interpreter import InterpretedFunction

    seen: set[tuple] = set()
    run = InterpretedFunction.run

    def recorded(self, *args, grid, warmup, **kwargs):
        seen.add(specialization(self, args, kwargs))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recorded)
    return seen


def cuda_like(folder, reference: Helios) -> Helios:
    """The tiny folder as CUDA runs it, on the CPU: a bfloat16 transformer with fused projections
    and a channels-last bfloat16 VAE, both on the fused kernels."""
    from helios_triton_kernels import ops as triton_ops

    transformer = load_transformer(folder, torch.bfloat16, torch.device("cpu"), triton_ops.TritonOps())
    transformer.fuse_projections()
    vae = WanVAE.load(folder, torch.bfloat16, torch.device("cpu"), channels_last=True)
    vae._decode.kernels = triton_ops  # what the CUDA backend supplies
    return Helios(transformer, reference.pipeline, reference.scheduler, reference.text_encoder, vae)


@pytest.mark.parametrize("variant", ["distilled", "mid"])
def test_the_warmup_launches_every_kernel_variant_that_a_request_launches(checkpoints, cores, launches, variant):
    folder, _ = checkpoints[variant]
    helios = cuda_like(folder, cores[variant])
    request = GenerationRequest(prompt="a lake", height=HEIGHT, width=WIDTH, num_frames=33, pyramid_steps=(1, 1, 1), seed=2)
    for _ in helios.stream(request):
        pass
    needed = set(launches)
    launches.clear()
    with torch.no_grad():
        run_transformer_once(helios.transformer.config, torch.bfloat16, helios.transformer.ops, torch.device("cpu"), None)
        run_decoder_once(helios.vae)
    assert {name for name, _, _ in needed} == {"_modulated_layernorm", "_gated_residual", "_rmsnorm_rope", "_channel_rmsnorm_silu", "_bias_residual"}
    assert needed - launches == set()


def test_the_cuda_backend_asks_for_the_warmup_because_triton_compiles_on_first_use():
    from helios_triton_kernels.backend import BACKEND

    assert BACKEND.compiles_on_first_use
