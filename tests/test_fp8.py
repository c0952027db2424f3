"""FP8 quantization's math on CPU (torch._scaled_mm runs there too); its speed and its deviation on
the 14B weights are measured on a GPU by bench/."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helios_backends.errors import CheckpointError
from helios_backends.fp8 import E4M3_MAX, Fp8Linear, check_quantization, fp8_quantized, quantize_blocks, quantize_rows
from helios_backends.loading import load_transformer
from helios_backends.ops import TorchOps

from .conftest import relative_error


def test_each_row_is_scaled_so_its_largest_magnitude_is_the_largest_e4m3_value():
    t = torch.randn(6, 64, generator=torch.Generator().manual_seed(0)) * torch.tensor([1e-3, 1, 10, 100, 1e3, 1e4]).view(-1, 1)
    values, scale = quantize_rows(t)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (6, 1)
    assert torch.equal(values.float().abs().amax(dim=1), torch.full((6,), E4M3_MAX))
    # e4m3 keeps 3 mantissa bits: each value within half a step (1/16 relative) of the original,
    # at every row's magnitude, since every row has its own scale
    back = values.float() * scale
    assert ((back - t).abs() <= t.abs() / 16 + scale * 2**-9).all()


def test_an_all_zero_row_quantizes_to_zeros_not_nan():
    values, scale = quantize_rows(torch.zeros(2, 32))
    assert torch.equal(values.float(), torch.zeros(2, 32)) and torch.isfinite(scale).all()


def test_the_fp8_gemm_equals_the_matmul_of_its_dequantized_operands():
    g = torch.Generator().manual_seed(1)
    linear = nn.Linear(64, 48).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 64, generator=g) / 8)
        linear.bias.copy_(torch.randn(48, generator=g))
    fp8 = Fp8Linear(linear, TorchOps())
    x = torch.randn(2, 5, 64, generator=g).to(torch.bfloat16)
    got = fp8(x)
    assert got.shape == (2, 5, 48) and got.dtype == torch.bfloat16
    values, scale = quantize_rows(x.reshape(-1, 64))
    want = fp8.dequantized()((values.float() * scale)).view(2, 5, 48)
    assert relative_error(got.float(), want) <= 1e-2  # bf16 output rounding only
    assert 1e-3 < relative_error(got.float(), linear(x).float()) <= 0.1  # quantization's own error, bounded


def test_the_down_projection_takes_gelu_of_its_input_in_its_quantization():
    """The feed-forward's FP8 path: GELU is applied inside the input quantization (one pass on CUDA)."""
    g = torch.Generator().manual_seed(3)
    linear = nn.Linear(64, 32).to(torch.bfloat16)
    fp8 = Fp8Linear(linear, TorchOps())
    h = torch.randn(7, 64, generator=g).to(torch.bfloat16)
    assert torch.equal(fp8(h, gelu=True), fp8(torch.nn.functional.gelu(h, approximate="tanh")))
    assert not torch.equal(fp8(h, gelu=True), fp8(h))


def test_blocks_get_fp8_linears_and_the_embedders_norms_and_output_stay_dense(checkpoints):
    folder, _ = checkpoints["distilled"]
    model = load_transformer(folder, torch.bfloat16, torch.device("cpu"))
    model.fuse_projections()
    assert not fp8_quantized(model)
    swapped = quantize_blocks(model.blocks, model.ops)
    assert swapped == 6 * len(model.blocks)  # qkv, out; cross q, out; ffn up, down (cross k/v stays: once per request)
    block = model.blocks[0]
    assert isinstance(block.attn1.to_qkv, Fp8Linear) and isinstance(block.ffn.net[2], Fp8Linear)
    assert isinstance(block.attn2.to_kv, nn.Linear) and isinstance(model.proj_out, nn.Linear)
    assert fp8_quantized(model) and not any(isinstance(m, Fp8Linear) for m in model.condition_embedder.modules())


def test_an_fp8_core_follows_the_bf16_core_closely(checkpoints):
    """Latents of a short run stay near the bf16 run's (the tiny model's random weights; the 14B
    figures are bench/'s)."""
    from helios_backends.pipeline import Helios
    from helios_backends.request import GenerationRequest

    folder, _ = checkpoints["distilled"]
    req = GenerationRequest(prompt="a lake", height=64, width=128, num_frames=33, pyramid_steps=(1, 1, 1), seed=2)
    bf16 = Helios.from_pretrained(folder, dtype="bfloat16")
    fp8 = Helios.from_pretrained(folder, dtype="bfloat16")
    quantize_blocks(fp8.transformer.blocks, fp8.transformer.ops)  # from_pretrained refuses fp8 without FP8 hardware; the math runs on CPU
    want, got = (torch.cat([c.latents.float() for c in core.stream(req, decode=False)], 2) for core in (bf16, fp8))
    assert 0 < relative_error(got, want) <= 0.05


def test_fp8_is_refused_without_fp8_hardware_naming_why():
    with pytest.raises(CheckpointError, match=r"needs an NVIDIA GPU with FP8 tensor cores .* device cpu has none"):
        check_quantization("fp8", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(CheckpointError, match="quantization must be 'fp8' or none, got 'int4'"):
        check_quantization("int4", torch.device("cpu"), torch.bfloat16)


def test_lora_on_an_fp8_core_is_refused_and_the_weights_stay(checkpoints, tmp_path):
    from helios_backends.pipeline import Helios
    from helios_backends.tiny import make_tiny_lora

    folder, _ = checkpoints["distilled"]
    core = Helios.from_pretrained(folder, dtype="bfloat16")
    quantize_blocks(core.transformer.blocks, core.transformer.ops)
    before = core.transformer.blocks[0].attn1.to_out[0].weight.clone()
    with pytest.raises(CheckpointError, match="LoRA with quantization fp8"):
        core.set_loras([(make_tiny_lora(tmp_path / "l.safetensors"), 1.0)])
    core.set_loras([])  # the default (no adapters) still applies
    assert torch.equal(core.transformer.blocks[0].attn1.to_out[0].weight.float(), before.float())
