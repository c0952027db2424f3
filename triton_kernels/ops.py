"""`TritonOps`: the core's ops on fused Triton kernels, falling back to torch off the GPU.

The kernels run where Triton can launch them: CUDA tensors, or any tensor under the Triton
interpreter (TRITON_INTERPRET=1, how the CPU tests run them). Anything else goes to the torch
reference, so the same ops object works on every device.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from helios_backends.ops import TorchOps

from .kernels import (_bias_residual, _channel_rmsnorm_silu, _gated_residual, _modulated_layernorm, _quantize_rows_e4m3, _rmsnorm_rope,
                      block_rows, num_warps)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _launchable(*tensors: torch.Tensor) -> bool:
    return all(t.is_cuda or INTERPRETED for t in tensors)


def _rows_layout(x: torch.Tensor, mod: torch.Tensor, split: int):
    """(rows, L, D, split, R) and the contiguous fp32 modulation for a (B, L, D) tensor."""
    b, length, d = x.shape
    mod = mod.float().expand(b, -1, -1).contiguous()
    return b * length, length, d, split if mod.shape[1] == 2 else 0, mod.shape[1], mod


# cuDNN's fused attention reaches ~600 TFLOP/s on an H200 at Helios' [history + current] lengths
# (2,940-11,040 tokens, 40 heads x 128), flash ~360 (bench/probe_gpu.py); flash is the fallback.
ATTENTION_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class TritonOps(TorchOps):
    name = "triton"

    def attention(self, q, k, v):
        if not q.is_cuda:
            return super().attention(q, k, v)
        with sdpa_kernel(ATTENTION_BACKENDS, set_priority=True):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    def modulated_norm(self, x, shift, scale, split, eps):
        if not _launchable(x):
            return super().modulated_norm(x, shift, scale, split, eps)
        x = x.contiguous()
        n, length, d, split, r, shift = _rows_layout(x, shift, split)
        scale = scale.float().expand(x.shape[0], -1, -1).contiguous()
        out = torch.empty_like(x)
        bm = block_rows(d)
        bd = triton.next_power_of_2(d)
        _modulated_layernorm[(triton.cdiv(n, bm),)](
            x, shift, scale, out, n, length, d, split, r, eps, BLOCK_M=bm, BLOCK_D=bd, num_warps=num_warps(bm * bd)
        )
        return out

    def gated_residual(self, x, y, gate, split):
        if not _launchable(x, y):
            return super().gated_residual(x, y, gate, split)
        x, y = x.contiguous(), y.contiguous()
        n, length, d, split, r, gate = _rows_layout(x, gate, split)
        out = torch.empty_like(x)
        bm = block_rows(d)
        bd = triton.next_power_of_2(d)
        _gated_residual[(triton.cdiv(n, bm),)](x, y, gate, out, n, length, d, split, r, BLOCK_M=bm, BLOCK_D=bd, num_warps=num_warps(bm * bd))
        return out

    def layer_norm(self, x, weight, bias, eps):
        """The affine LayerNorm is the modulated one with shift = bias, scale = weight - 1."""
        if weight is None or bias is None or not _launchable(x):
            return super().layer_norm(x, weight, bias, eps)
        shift, scale = bias.float().view(1, 1, -1), (weight.float() - 1).view(1, 1, -1)
        return self.modulated_norm(x, shift, scale, 0, eps)

    def linear_gelu(self, x, weight, bias):
        """GELU(tanh) in the GEMM's epilogue (cuBLASLt) instead of a pass over the hidden states."""
        if not x.is_cuda:
            return super().linear_gelu(x, weight, bias)
        return torch._addmm_activation(bias, x.flatten(0, -2), weight.t(), use_gelu=True).unflatten(0, x.shape[:-1])

    def quantize_rows(self, x, gelu=False):
        """One pass over x per row (GELU, amax, scale, e4m3) instead of torch's several.
        CUDA only: the Triton interpreter's e4m3 conversion does not round as the hardware does,
        so the CPU tests check the torch reference and tests/gpu this kernel against it."""
        if not x.is_cuda:
            return super().quantize_rows(x, gelu)
        if x.stride(-1) != 1:
            x = x.contiguous()
        n, k = x.shape
        values = torch.empty((n, k), dtype=torch.float8_e4m3fn, device=x.device)
        scale = torch.empty((n, 1), dtype=torch.float32, device=x.device)
        bk = triton.next_power_of_2(k)
        _quantize_rows_e4m3[(n,)](x, values, scale, k, x.stride(0), GELU=gelu, BLOCK_K=bk, num_warps=min(max(bk // 512, 1), 16))
        return values, scale

    def norm_rope(self, x, weight, eps, heads, rope):
        """Fused q/k RMSNorm (over all heads) + interleaved RoPE: (B, L, H*hd) -> (B, L, H, hd)."""
        tables_ok = rope is None or (rope.cos.shape[0] == 1 and _launchable(rope.cos))
        if not (_launchable(x) and tables_ok):
            return super().norm_rope(x, weight, eps, heads, rope)
        b, length, d = x.shape
        if x.stride(2) != 1 or x.stride(0) != length * x.stride(1):  # rows not evenly spaced
            x = x.contiguous()
        out = torch.empty((b, length, d), dtype=x.dtype, device=x.device)
        half_head = d // heads // 2
        cos = sin = x  # unused when HAS_ROPE is False
        if rope is not None:
            cos, sin = rope.cos[0].float().contiguous(), rope.sin[0].float().contiguous()
        bp = triton.next_power_of_2(d // 2)
        bm = block_rows(d // 2)
        _rmsnorm_rope[(triton.cdiv(b * length, bm),)](
            x, weight.contiguous(), cos, sin, out, b * length, length, d, x.stride(1), half_head, eps,
            HAS_ROPE=rope is not None, BLOCK_M=bm, BLOCK_P=bp, num_warps=num_warps(2 * bm * bp),
        )
        return out.unflatten(2, (heads, -1))


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


def _bcn_strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, channel, position) strides of a (B, C, T, H, W) tensor whose T, H, W positions are
    evenly strided (contiguous or channels_last_3d, or a frame slice of one)."""
    return x.stride(0), x.stride(1), x.stride(-1)


def channel_rmsnorm_silu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, scale: float, eps: float = 1e-12,
                         pre_bias: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(F.normalize(x + pre_bias, dim=1) * scale * gamma + bias) for (B, C, T, H, W) x, one
    pass in fp32: the Wan VAE decoder's norm + activation without its fp32 and per-op
    temporaries. pre_bias: the producing conv's bias, folded in here instead of a pass of its own.
    x is contiguous or channels_last_3d (what cuDNN's convolutions take natively); `out` (else a
    new tensor of x's layout) may be a frame slice of a larger buffer of either layout."""
    if not _channels_last(x):
        x = x.contiguous()
    b, c = x.shape[:2]
    n = x[0, 0].numel()
    out = torch.empty_like(x) if out is None else out
    if out.shape != x.shape or out.stride(-1) * out.shape[-1] != out.stride(-2) or out.stride(-2) * out.shape[-2] != out.stride(-3):
        raise ValueError("out must be x-shaped with evenly strided positions")
    bc = triton.next_power_of_2(c)
    bn = max(16, 8192 // bc)
    gamma = gamma.reshape(c).contiguous()
    _channel_rmsnorm_silu[(triton.cdiv(n, bn), b)](
        x, gamma, gamma if bias is None else bias.reshape(c).contiguous(), gamma if pre_bias is None else pre_bias.contiguous(), out,
        c, n, *_bcn_strides(x), *_bcn_strides(out), float(scale), eps,
        HAS_BIAS=bias is not None, HAS_PRE_BIAS=pre_bias is not None, BLOCK_C=bc, BLOCK_N=bn, num_warps=num_warps(bc * bn),
    )
    return out


def bias_residual_(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """x += bias (per channel, dim 1) + residual, in place and in one pass: a conv's output (made
    without its bias) closing a residual block. Fused when x and residual are both contiguous or both
    channels_last_3d."""
    if not (x.is_contiguous() and residual.is_contiguous()) and not (_channels_last(x) and _channels_last(residual)):
        return x.add_(residual).add_(bias.view(1, -1, *([1] * (x.dim() - 2))))  # no shared dense layout: torch, two passes
    c = x.shape[1]
    block = 2048
    _bias_residual[(triton.cdiv(x.numel(), block),)](
        x, bias.contiguous(), residual, x.numel(), c, 1 if _channels_last(x) else x[0, 0].numel(), BLOCK=block, num_warps=8,
    )
    return x
