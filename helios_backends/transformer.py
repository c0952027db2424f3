"""The Helios DiT, top to bottom in one file.

Helios is Wan-2.1's DiT with a memory of past frames: each chunk's noisy latents are preceded in
the token sequence by three compressed views of the history (long: 16 frames at 1/4 x 1/4 x 1/4
of the short grid, mid: 2 frames at 1/2, short: the first frame and the last one at full
resolution), in the order [long, mid, short, current]. History tokens are modulated with the
t=0 timestep embedding, skip cross-attention, and get RoPE positions on fixed relative frame
indices, pooled to their coarser grids. Parameter names equal the released checkpoints' keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TransformerConfig
from .ops import TorchOps

# Modules whose weights stay fp32 whatever the compute dtype (as upstream and diffusers keep them).
FP32_MODULES = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3", "history_key_scale")


@dataclass(frozen=True)
class FramePositions:
    """Relative frame indices for RoPE; they are the same for every chunk of a request."""

    current: torch.Tensor
    short: torch.Tensor
    mid: torch.Tensor
    long: torch.Tensor

    @classmethod
    def helios(cls, history_sizes: tuple[int, int, int], chunk_frames: int, keep_first_frame: bool) -> "FramePositions":
        """arange split as [prefix?, long, mid, 1x, current]; short = [prefix, 1x] with keep_first_frame."""
        long_n, mid_n, short_n = history_sizes
        if keep_first_frame:
            idx = torch.arange(1 + long_n + mid_n + short_n + chunk_frames)
            prefix, long, mid, one, current = idx.split([1, long_n, mid_n, short_n, chunk_frames])
            short = torch.cat([prefix, one])
        else:
            idx = torch.arange(long_n + mid_n + short_n + 1 + chunk_frames)
            long, mid, short, current = idx.split([long_n, mid_n, short_n + 1, chunk_frames])
        return cls(current=current, short=short, mid=mid, long=long)


@dataclass(frozen=True)
class History:
    """The three history views of one chunk, latents (B, C, T, h, w) at the chunk's resolution."""

    short: torch.Tensor
    mid: torch.Tensor
    long: torch.Tensor


@dataclass(frozen=True)
class TextContext:
    """Per-request text keys/values of every block's cross-attention, computed once per prompt.

    The text does not change between steps (nor, without a prompt schedule, between chunks), so
    its projection and the 40 K/V projections are hoisted out of the denoising loop.
    """

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class Rope:
    """cos/sin tables (1, L, head_dim/2) for the whole [history, current] sequence."""

    cos: torch.Tensor
    sin: torch.Tensor


def _pad_to_multiple(x: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = x.shape[-3:]
    pads = [(k - (n % k)) % k for n, k in zip((t, h, w), kernel)]
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")


def _rope_grid(head_dims: tuple[int, int, int], theta: float, frames: torch.Tensor, height: int, width: int, device):
    """Angles (1, head_dim/2, T, H, W) for a grid whose frame axis uses the given indices."""
    frames = frames.to(device=device, dtype=torch.float32)
    axes = (frames, torch.arange(height, device=device, dtype=torch.float32), torch.arange(width, device=device, dtype=torch.float32))
    angles = []
    for axis, (dim, pos) in enumerate(zip(head_dims, axes)):
        base = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32)[: dim // 2] / dim))
        a = base[:, None] * pos[None, :]
        shape = [dim // 2, 1, 1, 1]
        shape[axis + 1] = -1
        angles.append(a.view(shape).expand(dim // 2, len(frames), height, width))
    return torch.cat(angles, dim=0).unsqueeze(0)


def rope_tables(
    config: TransformerConfig,
    positions: FramePositions,
    current_grid: tuple[int, int],
    history_grid: tuple[int, int] | None,
    device,
) -> Rope:
    """RoPE for [long, mid, short, current], each on its post-patch grid (h, w).

    History keeps full resolution while a pyramid stage's current latents are smaller, so the two
    grids differ; mid and long take the short grid's cos/sin, padded and average-pooled 2x / 4x.
    """
    parts = [(positions.current, current_grid, 1)]
    if history_grid is not None:
        parts = [(positions.long, history_grid, 4), (positions.mid, history_grid, 2), (positions.short, history_grid, 1), *parts]
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        cos_parts, sin_parts = [], []
        for frames, (h, w), pool in parts:
            ang = _rope_grid(config.rope_dim, config.rope_theta, frames, h, w, device)
            cos, sin = ang.cos(), ang.sin()
            if pool > 1:
                cos = F.avg_pool3d(_pad_to_multiple(cos, (pool,) * 3), pool)
                sin = F.avg_pool3d(_pad_to_multiple(sin, (pool,) * 3), pool)
            cos_parts.append(cos.flatten(2).transpose(1, 2))
            sin_parts.append(sin.flatten(2).transpose(1, 2))
        return Rope(torch.cat(cos_parts, 1).contiguous(), torch.cat(sin_parts, 1).contiguous())


def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos | sin] embedding of (possibly fractional) timesteps, max period 10000."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLP2(nn.Module):
    """linear_1 -> act -> linear_2 (the time and text embedders)."""

    def __init__(self, dim_in: int, dim: int, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(dim_in, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.act = act

    def forward(self, x):
        x = self.linear_1(x)
        x = F.silu(x) if self.act == "silu" else F.gelu(x, approximate="tanh")
        return self.linear_2(x)


# fuse_projections' fused layers and the checkpoint's layers they hold, in row order.
FUSED_PARTS = {"to_qkv": ("to_q", "to_k", "to_v"), "to_kv": ("to_k", "to_v")}


def checkpoint_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters under the checkpoint's names. After fuse_projections, to_q / to_k /
    to_v are views of their rows in to_qkv / to_kv, so writing one writes the fused layer."""
    named = {}
    for name, param in model.named_parameters():
        module_name, _, attr = name.rpartition(".")
        parent, _, leaf = module_name.rpartition(".")
        parts = FUSED_PARTS.get(leaf)
        if parts is None:
            named[name] = param
            continue
        for part, rows in zip(parts, param.chunk(len(parts))):
            named[f"{parent}.{part}.{attr}" if parent else f"{part}.{attr}"] = rows
    return named


class ConditionEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int, text_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = MLP2(freq_dim, dim, "silu")
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = MLP2(text_dim, dim, "gelu_tanh")

    def time(self, t: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(temb (B, D), per-block modulation (B, 6, D)) for timesteps t (B,)."""
        emb = timestep_sinusoid(t, self.freq_dim).to(self.time_embedder.linear_1.weight.dtype)
        temb = self.time_embedder(emb).to(out_dtype)
        proj = self.time_proj(F.silu(temb).to(self.time_proj.weight.dtype))
        return temb, proj.unflatten(-1, (6, -1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float, amplify_history: str | None = None):
        super().__init__()
        self.heads = heads
        self.eps = eps
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.amplify_history = amplify_history
        if amplify_history is not None:
            self.history_key_scale = nn.Parameter(torch.ones(heads if amplify_history == "per_head" else 1))

    def fuse_projections(self, cross: bool) -> None:
        """One GEMM for q, k, v (self-attention) or for k, v (cross-attention) instead of three or two."""
        parts = (self.to_k, self.to_v) if cross else (self.to_q, self.to_k, self.to_v)
        fused = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts), device=parts[0].weight.device, dtype=parts[0].weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([p.weight for p in parts]))
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
        fused.requires_grad_(False)
        if cross:
            self.to_kv = fused
            del self.to_k, self.to_v
        else:
            self.to_qkv = fused
            del self.to_q, self.to_k, self.to_v

    def context_kv(self, ops, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys and values (B, S, H, hd) of a cross-attention context."""
        if hasattr(self, "to_kv"):
            k, v = self.to_kv(context).chunk(2, dim=-1)
        else:
            k, v = self.to_k(context), self.to_v(context)
        return ops.norm_rope(k, self.norm_k.weight, self.eps, self.heads, None), v.unflatten(2, (self.heads, -1))

    def forward(self, ops, x, kv=None, rope: Rope | None = None, history_len: int = 0):
        """Self-attention over x, or cross-attention onto precomputed context keys/values `kv`."""
        if kv is not None:
            q, (k, v) = self.to_q(x), kv
        elif hasattr(self, "to_qkv"):
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        q = ops.norm_rope(q, self.norm_q.weight, self.eps, self.heads, rope)
        if kv is None:
            k = ops.norm_rope(k, self.norm_k.weight, self.eps, self.heads, rope)
            v = v.unflatten(2, (self.heads, -1))
        if self.amplify_history is not None and history_len > 0:
            # A learned per-head key scale in (1, 10) makes history tokens easier to attend to.
            scale = (1.0 + torch.sigmoid(self.history_key_scale) * 9.0).view(1, 1, -1, 1)
            k = torch.cat([k[:, :history_len] * scale, k[:, history_len:]], dim=1)
        out = ops.attention(q, k, v).flatten(2).type_as(q)
        return self.to_out[0](out)


class GeluProj(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.ModuleList([GeluProj(dim, hidden), nn.Identity(), nn.Linear(hidden, dim)])

    def forward(self, ops, x):
        up = self.net[0].proj
        if not isinstance(up, nn.Linear):  # FP8 (helios_backends.fp8): GELU fused into the down projection's input quantization
            return self.net[2](up(x), gelu=True)
        return self.net[2](ops.linear_gelu(x, up.weight, up.bias))


class LayerNormParams(nn.Module):
    """Holds norm2's affine weight and bias; the op itself goes through `ops.layer_norm`."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        dim = config.inner_dim
        self.eps = config.eps
        self.guidance_cross_attn = config.guidance_cross_attn
        amplify = config.history_scale_mode if config.is_amplify_history else None
        self.attn1 = Attention(dim, config.num_attention_heads, config.eps, amplify)
        self.attn2 = Attention(dim, config.num_attention_heads, config.eps)
        self.norm2 = LayerNormParams(dim) if config.cross_attn_norm else None
        self.ffn = FeedForward(dim, config.ffn_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim).div_(dim**0.5))  # in place: on meta, "/" runs torch._refs, which imports torch._dynamo

    def forward(self, ops, x, text_kv, modulation, rope: Rope, history_len: int):
        """modulation: (B, R, 6, D) timestep projections; R = 2 gives history tokens their own row."""
        mod = (self.scale_shift_table.unsqueeze(1) + modulation.float()).unbind(2)
        shift, scale, gate, c_shift, c_scale, c_gate = mod
        split = history_len

        h = ops.modulated_norm(x, shift, scale, split, self.eps)
        x = ops.gated_residual(x, self.attn1(ops, h, rope=rope, history_len=history_len), gate, split)

        # Guidance cross-attention: only the current chunk's tokens read the text. In place: x is
        # gated_residual's fresh output, so no [history, current] concatenation is needed.
        start = history_len if self.guidance_cross_attn else 0
        cur = x[:, start:]
        normed = cur if self.norm2 is None else ops.layer_norm(cur, self.norm2.weight, self.norm2.bias, self.eps)
        cur += self.attn2(ops, normed, kv=text_kv)

        h = ops.modulated_norm(x, c_shift, c_scale, split, self.eps)
        return ops.gated_residual(x, self.ffn(ops, h), c_gate, split)


class OutputNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim).div_(dim**0.5))  # in place, as in Block


class HeliosTransformer(nn.Module):
    def __init__(self, config: TransformerConfig, ops=None):
        super().__init__()
        self.config = config
        self.ops = ops or TorchOps()
        dim, c = config.inner_dim, config.in_channels
        p = config.patch_size
        self.patch_embedding = nn.Conv3d(c, dim, kernel_size=p, stride=p)
        self.patch_short = nn.Conv3d(c, dim, kernel_size=p, stride=p)
        self.patch_mid = nn.Conv3d(c, dim, kernel_size=tuple(2 * k for k in p), stride=tuple(2 * k for k in p))
        self.patch_long = nn.Conv3d(c, dim, kernel_size=tuple(4 * k for k in p), stride=tuple(4 * k for k in p))
        self.condition_embedder = ConditionEmbedder(dim, config.freq_dim, config.text_dim)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.norm_out = OutputNorm(dim)
        self.proj_out = nn.Linear(dim, config.out_channels * math.prod(p))

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    def post_patch_grid(self, height: int, width: int) -> tuple[int, int]:
        _, ph, pw = self.config.patch_size
        return height // ph, width // pw

    def fuse_projections(self) -> None:
        for block in self.blocks:
            block.attn1.fuse_projections(cross=False)
            block.attn2.fuse_projections(cross=True)

    def encode_text(self, text: torch.Tensor) -> TextContext:
        """Project the text once for all blocks' cross-attention (see TextContext)."""
        projected = self.condition_embedder.text_embedder(text)
        return TextContext(tuple(block.attn2.context_kv(self.ops, projected) for block in self.blocks), text.dtype)

    def embed_history(self, history: History) -> torch.Tensor:
        """History tokens in sequence order [long, mid, short]."""
        p = self.config.patch_size
        long = self.patch_long(_pad_to_multiple(history.long, tuple(4 * k for k in p)))
        mid = self.patch_mid(_pad_to_multiple(history.mid, tuple(2 * k for k in p)))
        short = self.patch_short(history.short)
        return torch.cat([t.flatten(2).transpose(1, 2) for t in (long, mid, short)], dim=1)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        history: History | None = None,
        rope: Rope | None = None,
        positions: FramePositions | None = None,
    ) -> torch.Tensor:
        """Predict the flow for one chunk.

        latents (B, C, T, H, W); timestep (B,); text: (B, S, text_dim) encoder states, or their
        `encode_text` context when the caller reuses it across steps;
        history: the chunk's history views (None for a history-free call, positions then 0..T-1).
        rope: precomputed tables for this sequence (`rope_for`), else built from positions.
        """
        b = latents.shape[0]
        pt, ph, pw = self.config.patch_size
        x = self.patch_embedding(latents)
        frames, gh, gw = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        current_len = x.shape[1]

        if history is not None:
            x = torch.cat([self.embed_history(history), x], dim=1)
        history_len = x.shape[1] - current_len
        if rope is None:
            if positions is None:
                if history is not None:
                    raise ValueError("history needs frame positions (FramePositions) or precomputed rope")
                idx = torch.arange(frames)
                positions = FramePositions(idx, idx[:0], idx[:0], idx[:0])
            history_hw = None if history is None else tuple(history.short.shape[-2:])
            rope = self.rope_for(positions, tuple(latents.shape[-2:]), history_hw, x.device)

        # Sequence parallelism: each rank keeps its slice of the history and of the current tokens.
        x, local_history = self.ops.shard_tokens(x, history_len)
        rope = Rope(self.ops.shard_tokens(rope.cos, history_len)[0], self.ops.shard_tokens(rope.sin, history_len)[0])

        context = text if isinstance(text, TextContext) else self.encode_text(text)
        temb, proj = self.condition_embedder.time(timestep, context.dtype)
        modulation = proj.unsqueeze(1)  # (B, 1, 6, D)
        if history_len > 0 and self.config.zero_history_timestep:
            t0 = torch.zeros(1, dtype=timestep.dtype, device=timestep.device)
            _, proj0 = self.condition_embedder.time(t0, context.dtype)
            modulation = torch.cat([proj0.unsqueeze(1).expand(b, 1, -1, -1), modulation], dim=1)

        for block, kv in zip(self.blocks, context.kv):
            x = block(self.ops, x, kv, modulation, rope, local_history)

        x = x[:, local_history:]
        shift, scale = (self.norm_out.scale_shift_table + temb.unsqueeze(1)).unbind(1)
        x = self.ops.modulated_norm(x, shift.unsqueeze(1), scale.unsqueeze(1), 0, self.config.eps)
        x = self.ops.gather_tokens(self.proj_out(x))
        x = x.reshape(b, frames, gh, gw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def rope_for(self, positions: FramePositions, latents_hw: tuple[int, int], history_hw: tuple[int, int] | None, device) -> Rope:
        """RoPE tables for a chunk of latent size latents_hw with history of latent size history_hw."""
        grid = self.post_patch_grid(*latents_hw)
        return rope_tables(self.config, positions, grid, None if history_hw is None else self.post_patch_grid(*history_hw), device)
