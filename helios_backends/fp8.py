"""FP8 (e4m3) weights and activations for the transformer blocks' linear layers (`--quantization fp8`).

Each weight row (output channel) gets its own scale and each activation row (token) its own,
computed per call, so one outlier channel or token does not flatten the others' precision; the
GEMM multiplies the e4m3 operands and applies both scales in its epilogue (`torch._scaled_mm`
with row-wise scales: Hopper's FP8 tensor cores on CUDA). What is small or sensitive stays in the
checkpoint's dtype: the patch, time and text embedders, the output projection, norms and
modulation, and the cross-attention's key/value projection (it runs once per request).
"""

from __future__ import annotations

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
# The per-block linears quantized, by their path inside a block (fused or not).
QUANTIZED = ("attn1.to_qkv", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0",
             "ffn.net.0.proj", "ffn.net.2")


def supports_fp8(device: torch.device) -> bool:
    """FP8 tensor cores: NVIDIA compute capability 8.9 (Ada) and later."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def check_quantization(quantization: str | None, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, naming the reason, a quantization this device or dtype cannot run."""
    from .errors import CheckpointError

    if quantization is None:
        return
    if quantization != "fp8":
        raise CheckpointError(f"quantization must be 'fp8' or none, got {quantization!r}")
    if not supports_fp8(device):
        raise CheckpointError(f"quantization fp8 needs an NVIDIA GPU with FP8 tensor cores (compute capability 8.9+, "
                              f"e.g. H100/H200/L40S); device {device} has none")
    if dtype != torch.bfloat16:
        raise CheckpointError(f"quantization fp8 runs a bfloat16 transformer (its GEMMs output bf16); got dtype {dtype}")


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, fp32 scale per row) with t ~= values * scale: each row's largest magnitude maps to 448."""
    amax = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Fp8Linear(nn.Module):
    """A linear layer with e4m3 weights (one scale per output channel) and per-token e4m3 inputs;
    the output in the input's dtype (bf16).

    The inputs are quantized by the backend's `ops.quantize_rows` (a fused kernel on CUDA: the
    unfused torch version costs about what FP8 saves in the GEMM), optionally through the
    feed-forward's GELU in the same pass.
    """

    def __init__(self, linear: nn.Linear, ops):
        super().__init__()
        self.quantize = ops.quantize_rows
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach())
        self.weight = nn.Parameter(weight, requires_grad=False)  # (out, in), row-major: the GEMM reads it column-major
        self.weight_scale = nn.Parameter(scale.view(1, -1), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """x @ W.T + b, or GELU(x) @ W.T + b with gelu (the feed-forward's down projection)."""
        values, scale = self.quantize(x.reshape(-1, self.in_features), gelu)
        y = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=self.bias, out_dtype=x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def dequantized(self) -> nn.Linear:
        """The nn.Linear these e4m3 weights stand for (the reference the tests compare against)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.weight.device,
                           dtype=torch.float32)
        with torch.no_grad():
            linear.weight.copy_(self.weight.float() * self.weight_scale.view(-1, 1))
            if self.bias is not None:
                linear.bias.copy_(self.bias.float())
        return linear.requires_grad_(False)


def fp8_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Fp8Linear) for m in model.modules())


def quantize_blocks(blocks: nn.ModuleList, ops) -> int:
    """Swap each block's QUANTIZED linears for Fp8Linear (inputs quantized by `ops`) in place; the number swapped."""
    swapped = 0
    for block in blocks:
        for path in QUANTIZED:
            try:
                linear = block.get_submodule(path)
            except AttributeError:  # the other of fused / unfused projections
                continue
            if isinstance(linear, nn.Linear):
                parent, _, name = path.rpartition(".")
                setattr(block.get_submodule(parent), name, Fp8Linear(linear, ops))  # a ModuleList's "0" included
                swapped += 1
    return swapped
