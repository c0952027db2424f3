"""Fused Triton kernels equal their torch references (run on CPU by the Triton interpreter)."""

from __future__ import annotations

import os

import pytest
import torch

from helios_backends.loading import load_transformer
from helios_backends.ops import TorchOps
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest
from helios_backends.transformer import Rope
from helios_backends.wan_decoder import DecoderCache, WanChunkDecoder, to_channels_last

from .conftest import HEIGHT, WIDTH, relative_error

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs a GPU or TRITON_INTERPRET=1 (scripts/test sets it)",
)
REF = TorchOps()


@pytest.fixture(scope="module")
def fused():
    from helios_triton_kernels.ops import TritonOps

    return TritonOps()


def tol(dtype):
    return dict(rtol=0, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,split", [(1, 0), (2, 5), (2, 0)])
def test_modulated_layernorm_matches_torch(fused, dtype, rows, split):
    g = torch.Generator().manual_seed(rows + split)
    x = (torch.randn(2, 12, 96, generator=g) * 3 + 1).to(dtype)
    shift, scale = torch.randn(2, rows, 96, generator=g), torch.randn(2, rows, 96, generator=g)
    torch.testing.assert_close(fused.modulated_norm(x, shift, scale, split, 1e-6), REF.modulated_norm(x, shift, scale, split, 1e-6), **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,split", [(1, 0), (2, 7)])
def test_gated_residual_matches_torch(fused, dtype, rows, split):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 12, 80, generator=g).to(dtype), torch.randn(2, 12, 80, generator=g).to(dtype)
    gate = torch.randn(1, rows, 80, generator=g).expand(2, -1, -1)
    torch.testing.assert_close(fused.gated_residual(x, y, gate, split), REF.gated_residual(x, y, gate, split), **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_rope", [True, False])
def test_qk_rmsnorm_fused_with_interleaved_rope_matches_torch(fused, dtype, with_rope):
    g = torch.Generator().manual_seed(4)
    heads, hd, length = 4, 16, 10
    x = (torch.randn(2, length, heads * hd, generator=g) * 2).to(dtype)
    w = torch.randn(heads * hd, generator=g).to(dtype)
    angles = torch.randn(1, length, hd // 2, generator=g) * 3
    rope = Rope(angles.cos(), angles.sin()) if with_rope else None
    got = fused.norm_rope(x, w, 1e-6, heads, rope)
    assert got.shape == (2, length, heads, hd)
    torch.testing.assert_close(got, REF.norm_rope(x, w, 1e-6, heads, rope), **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_reads_q_and_k_in_place_from_the_fused_qkv_output(fused, dtype):
    g = torch.Generator().manual_seed(5)
    heads, hd, length = 4, 16, 10
    qkv = (torch.randn(2, length, 3 * heads * hd, generator=g) * 2).to(dtype)
    q, k, _ = qkv.chunk(3, dim=-1)
    assert not q.is_contiguous()
    w = torch.randn(heads * hd, generator=g).to(dtype)
    angles = torch.randn(1, length, hd // 2, generator=g)
    rope = Rope(angles.cos(), angles.sin())
    for part in (q, k):
        torch.testing.assert_close(fused.norm_rope(part, w, 1e-6, heads, rope), REF.norm_rope(part.contiguous(), w, 1e-6, heads, rope), **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_affine_layernorm_on_the_modulated_kernel_matches_torch(fused, dtype):
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(2, 12, 96, generator=g) * 3 + 1).to(dtype)
    weight, bias = torch.randn(96, generator=g) * 2, torch.randn(96, generator=g)
    torch.testing.assert_close(fused.layer_norm(x, weight, bias, 1e-6), REF.layer_norm(x, weight, bias, 1e-6), **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels,bias", [(24, False), (96, True)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_vae_channel_norm_fused_with_silu_matches_diffusers_modules(dtype, channels, bias, layout):
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm
    from helios_triton_kernels.ops import channel_rmsnorm_silu

    g = torch.Generator().manual_seed(channels)
    norm = WanRMS_norm(channels, images=False, bias=bias)
    with torch.no_grad():
        norm.gamma.copy_(torch.randn(norm.gamma.shape, generator=g))
        if bias:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
    norm = norm.to(dtype)
    x = (torch.randn(2, channels, 3, 5, 7, generator=g) * 3).to(dtype).contiguous(memory_format=layout)
    got = channel_rmsnorm_silu(x, norm.gamma, norm.bias if bias else None, norm.scale)
    with torch.no_grad():
        want = torch.nn.functional.silu(norm(x))
    assert got.is_contiguous(memory_format=layout)
    torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_vae_norm_folds_the_previous_convs_bias_and_writes_into_a_frame_slice_of_a_buffer(layout):
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm
    from helios_triton_kernels.ops import channel_rmsnorm_silu

    g = torch.Generator().manual_seed(1)
    norm = WanRMS_norm(32, images=False, bias=False)
    with torch.no_grad():
        norm.gamma.copy_(torch.randn(norm.gamma.shape, generator=g))
    x = torch.randn(1, 32, 3, 5, 7, generator=g).contiguous(memory_format=layout)
    conv_bias = torch.randn(32, generator=g)
    buffer = torch.full((1, 32, 5, 5, 7), 7.0).contiguous(memory_format=layout)  # 2 cached frames, then x's 3
    channel_rmsnorm_silu(x, norm.gamma, None, norm.scale, pre_bias=conv_bias, out=buffer[:, :, 2:])
    with torch.no_grad():
        want = torch.nn.functional.silu(norm(x + conv_bias.view(1, -1, 1, 1, 1)))
    torch.testing.assert_close(buffer[:, :, 2:], want, **tol(torch.float32))
    assert (buffer[:, :, :2] == 7.0).all()  # the cached frames are left alone


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_residual_add_with_the_convs_bias_in_one_pass(layout):
    from helios_triton_kernels.ops import bias_residual_

    g = torch.Generator().manual_seed(2)
    x, res = (torch.randn(2, 24, 3, 5, 7, generator=g).contiguous(memory_format=layout) for _ in range(2))
    bias = torch.randn(24, generator=g)
    want = x + bias.view(1, -1, 1, 1, 1) + res
    got = bias_residual_(x, bias, res)
    assert got is x
    torch.testing.assert_close(x, want, **tol(torch.float32))


@pytest.mark.parametrize("channels_last", [False, True])
def test_vae_chunk_decoder_on_the_fused_kernels_equals_diffusers_frame_by_frame(channels_last):
    from helios_triton_kernels import ops as triton_ops

    from .test_vae import CHUNK, assert_close, diffusers_decode, latents, tiny_vaes

    vae, theirs = tiny_vaes()
    z = latents(2 * CHUNK)
    want = diffusers_decode(theirs, z)
    if channels_last:
        to_channels_last(vae)
    decoder, cache = WanChunkDecoder(vae, channels_last=channels_last, frames_per_pass=1), DecoderCache()
    decoder.kernels = triton_ops  # what the CUDA backend supplies; here under the Triton interpreter
    assert_close(torch.cat([decoder(z[:, :, :CHUNK], cache), decoder(z[:, :, CHUNK:], cache)], 2), want)


def test_whole_run_on_fused_kernels_equals_the_torch_reference(checkpoints, cores, fused):
    folder, _ = checkpoints["mid"]
    reference = cores["mid"]
    transformer = load_transformer(folder, torch.float32, torch.device("cpu"), fused)
    transformer.fuse_projections()
    core = Helios(transformer, reference.pipeline, reference.scheduler, reference.text_encoder, reference.vae)
    req = GenerationRequest(prompt="a lake", height=HEIGHT, width=WIDTH, num_frames=33, pyramid_steps=(2, 1, 1), seed=2)
    got = torch.cat([c.latents for c in core.stream(req, decode=False)], 2)
    want = torch.cat([c.latents for c in reference.stream(req, decode=False)], 2)
    assert relative_error(got, want) <= 1e-5
