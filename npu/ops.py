"""The core's ops on an Ascend NPU through torch_npu's fused kernels.

Constraints are those of the torch-npu 2.13.0 op docs (torch_npu/_op_plugin_docs.py); every call
here is checked against the schemas that release registers by tests/test_npu_schemas.py:
  npu_fusion_attention(query, key, value, head_num, input_layout, ..., scale=1., ...) -> 7-tuple,
      output at [0]; BSND is [batch, tokens, heads, head_dim], the core's attention layout.
  npu_rms_norm(self, gamma, epsilon=1e-06) -> (y, rstd); gamma must have self's dtype.
  npu_rotary_mul(input, r1, r2, rotary_mode='half'|'interleave') -> r1 * x + r2 * x_new, where
      'interleave' has x_new[2i] = -x[2i+1], x_new[2i+1] = x[2i]. With r1 = cos and r2 = sin
      repeated per element of each pair, that is exactly Helios' pair rotation
      (out[2i] = x[2i]cos_i - x[2i+1]sin_i, out[2i+1] = x[2i]sin_i + x[2i+1]cos_i); 'half'
      (rotate_half) is not. For a BSND input, interleave mode takes r1/r2 only as (1, S, 1, D),
      requires B * N < 1000, and exists only with jit_compile off (set in helios_npu.device.configure).
"""

from __future__ import annotations

import math

import torch

from helios_backends.errors import CheckpointError
from helios_backends.ops import TorchOps

from .device import MISSING, configure, import_torch_npu

# npu_rotary_mul's interleave mode: B * N < 1000 per call.
ROTARY_MAX_BATCH_HEADS = 999


class NpuOps(TorchOps):
    """Attention, q/k RMSNorm and RoPE on torch_npu kernels, with TorchOps' dtype rules.

    LayerNorm, modulation and the gated residual stay TorchOps' aten code (fp32 statistics and
    fp32 modulation, result in x's dtype): torch_npu runs those ops natively on the NPU.
    Building one applies the Ascend settings (once per process), however the caller got here.
    """

    name = "npu"

    def __init__(self):
        self.torch_npu = import_torch_npu()
        if self.torch_npu is None:
            raise CheckpointError(f"NpuOps: {MISSING}")
        configure(self.torch_npu)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax attention over [B, S, H, D] tensors, in their dtype, scale 1/sqrt(D)."""
        return self.torch_npu.npu_fusion_attention(
            q.contiguous(), k.contiguous(), v.contiguous(), q.shape[2], input_layout="BSND", scale=1.0 / math.sqrt(q.shape[-1])
        )[0]

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm over the last dim in the wider of x's and the weight's dtypes, as TorchOps does.

        npu_rms_norm wants gamma in x's dtype; widening both (not narrowing the weight) keeps an
        fp32 weight's precision, and the kernel keeps its statistics in fp32 either way.
        """
        dtype = torch.promote_types(x.dtype, weight.dtype)
        return self.torch_npu.npu_rms_norm(x.to(dtype), weight.to(dtype), epsilon=eps)[0].to(x.dtype)

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Helios' interleaved-pair RoPE via npu_rotary_mul(..., 'interleave'), computed in fp32.

        cos/sin (B or 1, L, D/2) become r1/r2 (1, L, 1, D), each value repeated for both members
        of its pair. fp32 matches TorchOps and diffusers, whose fp32 tables promote the product.
        The batch is split where the kernel's limits need it: per sample when the tables differ
        per sample (interleave takes only 1S1D tables), and into B * N < 1000 groups.
        """
        b, _, heads, _ = x.shape
        xf = x.float().contiguous()
        r1 = cos.float().repeat_interleave(2, dim=-1).unsqueeze(2)
        r2 = sin.float().repeat_interleave(2, dim=-1).unsqueeze(2)
        per_sample = r1.shape[0] > 1
        step = 1 if per_sample else max(1, ROTARY_MAX_BATCH_HEADS // heads)
        if step >= b:
            return self.torch_npu.npu_rotary_mul(xf, r1, r2, rotary_mode="interleave").to(x.dtype)
        parts = []
        for start in range(0, b, step):
            rows = slice(start, start + step)
            c, s = (r1[rows], r2[rows]) if per_sample else (r1, r2)
            parts.append(self.torch_npu.npu_rotary_mul(xf[rows], c, s, rotary_mode="interleave"))
        return torch.cat(parts).to(x.dtype)
