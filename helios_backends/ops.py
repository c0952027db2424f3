"""The small set of operations the transformer routes through, so a backend can swap them.

Fused Triton kernels, an engine's sequence-parallel attention or torch_npu implement the same
methods; the model code never changes. Tensors are [batch, tokens, ...]; attention tensors are
[batch, tokens, heads, head_dim].

Per-token modulation in Helios has two rows: history tokens use the t=0 embedding and the
current chunk uses the step's timestep. `shift`, `scale` and `gate` are therefore (B, R, D) with
R = 1 (every token alike) or R = 2 (the first `split` tokens take row 0, the rest row 1); ops
apply the rows to token slices instead of materialising a (B, L, D) tensor per block.

The interface: attention, norm_rope (q/k RMSNorm over all heads + interleaved RoPE, fused by the
Triton backend), rms_norm, rope, layer_norm, modulated_norm, gated_residual, linear_gelu (the
feed-forward's first layer), quantize_rows (FP8 linears' inputs), and the token sharding hooks
shard_tokens / gather_tokens that sequence parallelism overrides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import device_backend, device_type_of
from .fp8 import quantize_rows


def _rows(t: torch.Tensor, split: int, length: int):
    """Yield (token slice, row) pairs for a (B, R, D) modulation tensor."""
    if t.shape[1] == 1:
        yield slice(0, length), t
    else:
        if split > 0:
            yield slice(0, split), t[:, 0:1]
        yield slice(split, length), t[:, 1:2]


class TorchOps:
    """Reference implementations in plain torch; the behaviour every other backend must match."""

    name = "torch"

    def shard_tokens(self, x: torch.Tensor, history_len: int) -> tuple[torch.Tensor, int]:
        """This rank's tokens of a [history, current] sequence and its history count (all of them here)."""
        return x, history_len

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The current chunk's tokens of every rank (this rank has them all here)."""
        return x

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm over the last dim, statistics in fp32 (Helios' q/k norm spans all heads)."""
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return (y * weight.float()).to(x.dtype)

    def norm_rope(self, x: torch.Tensor, weight: torch.Tensor, eps: float, heads: int, rope) -> torch.Tensor:
        """q/k path: RMSNorm over all heads of (B, L, H*hd), split heads, RoPE when `rope` is given."""
        y = self.rms_norm(x, weight, eps).unflatten(2, (heads, -1))
        return y if rope is None else self.rope(y, rope.cos, rope.sin)

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
        """fp32 LayerNorm returning x's dtype (norm2, the affine cross-attention norm)."""
        w = None if weight is None else weight.float()
        b = None if bias is None else bias.float()
        return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps).to(x.dtype)

    def modulated_norm(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, split: int, eps: float
    ) -> torch.Tensor:
        """fp32 LayerNorm(x) * (1 + scale) + shift, per modulation row, cast back to x's dtype."""
        normed = F.layer_norm(x.float(), (x.shape[-1],), None, None, eps)
        out = torch.empty_like(x)
        for (tokens, sh), (_, sc) in zip(_rows(shift, split, x.shape[1]), _rows(scale, split, x.shape[1])):
            out[:, tokens] = (normed[:, tokens] * (1 + sc) + sh).to(x.dtype)
        return out

    def gated_residual(self, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, split: int) -> torch.Tensor:
        """x + y * gate in fp32, per modulation row, cast back to x's dtype."""
        out = torch.empty_like(x)
        for tokens, g in _rows(gate, split, x.shape[1]):
            out[:, tokens] = (x[:, tokens].float() + y[:, tokens].float() * g).to(x.dtype)
        return out

    def linear_gelu(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """GELU (tanh approximation) of a linear layer."""
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")

    def quantize_rows(self, x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """FP8 linears' input: each row of (N, K) x, through tanh-GELU if asked, as e4m3 values and an fp32 scale (N, 1)."""
        return quantize_rows(F.gelu(x, approximate="tanh") if gelu else x)

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate interleaved pairs (x[2i], x[2i+1]) of each head; cos/sin are (B, L, head_dim/2)."""
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        c, s = cos.unsqueeze(2), sin.unsqueeze(2)
        out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
        return out.to(x.dtype)


def default_ops(device: torch.device | str) -> TorchOps:
    """The ops a device gets when the caller names none: its installed backend's (fused Triton
    kernels on CUDA, torch_npu's kernels on an Ascend NPU: helios_backends.backends), else the
    torch reference.

    device: a torch device ("npu:1") or an engine platform's device type ("npu"). The engine
    adapters pass their platform's device type, so the engine's platform choice (vllm-ascend's,
    SGLang's NPU platform) is what picks the core's kernels; no adapter names a device itself.
    """
    backend = device_backend(device_type_of(device))
    return TorchOps() if backend is None else backend.ops()
