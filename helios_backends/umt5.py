"""UMT5's encoder (Helios' text encoder, UMT5-XXL), with the parameter names of transformers'
UMT5EncoderModel.

A released `text_encoder/` folder loads into `UMT5Encoder` key for key (loading.load_text_encoder),
and the last hidden state is transformers' own: the same operations in the same dtypes, so the
prompt states Helios was trained on come out without importing transformers (whose model code
pulls in torch._dynamo and its generation stack: seconds of a fresh process's start-up).

The T5 family's encoder, as UMT5 has it:
- pre-norm residual blocks, each an attention layer then a feed-forward layer;
- RMS norm without bias or mean subtraction, its statistics in float32;
- attention scores are q.k unscaled (no 1/sqrt(d): T5 folds it into the weights) plus a learned
  bias per head and bucketed relative position; unlike T5, EVERY block has its own bias table;
- a gated GELU (tanh approximation) feed-forward layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TextEncoderConfig


def uninitialized_embedding(rows: int, dim: int) -> nn.Embedding:
    """An nn.Embedding whose table a checkpoint fills. Its default random init is skipped: on the
    meta device (where the loader builds the model) normal_ runs through torch._refs, whose
    wrapper imports torch._dynamo."""
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


class RMSNorm(nn.Module):
    """x / RMS(x) times a learned gain. The mean square is taken in float32; a half-precision
    gain brings the result back to its dtype (T5's "layer norm")."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(mean_square + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device: torch.device) -> torch.Tensor:
    """(length, length) bucket of each key position relative to each query position, both
    directions: half the buckets for keys after the query. Within a direction, distances below a
    quarter of the buckets get one bucket each; longer ones share log-spaced buckets up to
    max_distance, beyond which all fall in the last."""
    position = torch.arange(length, dtype=torch.long, device=device)
    relative = position[None, :] - position[:, None]  # key - query
    per_side = num_buckets // 2
    side = (relative > 0).to(torch.long) * per_side
    distance = relative.abs()
    exact = per_side // 2
    # log(0) is -inf at distance 0; torch.where below keeps the exact bucket there
    log_scaled = torch.log(distance.float() / exact) / math.log(max_distance / exact) * (per_side - exact)
    far = torch.clamp(exact + log_scaled.to(torch.long), max=per_side - 1)
    return side + torch.where(distance < exact, distance, far)


class SelfAttention(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.heads, self.head_dim = config.num_heads, config.d_kv
        self.num_buckets, self.max_distance = config.relative_attention_num_buckets, config.relative_attention_max_distance
        inner = config.num_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.relative_attention_bias = uninitialized_embedding(config.relative_attention_num_buckets, config.num_heads)

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor:
        """(1, heads, length, length) added to the scores."""
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance, device)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """keep: (B, L) bool, the real tokens; padding keys get the dtype's lowest score."""
        batch, length, _ = x.shape
        q, k, v = (proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2) for proj in (self.q, self.k, self.v))
        bias = self.position_bias(length, x.device)
        bias = torch.where(keep[:, None, None, :], bias, torch.finfo(k.dtype).min)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(batch, length, -1))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation, evaluated op by op in x's dtype like transformers' "gelu_new"
    (F.gelu(approximate="tanh") rounds once, so half-precision results would differ slightly)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GatedFeedForward(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = gelu_tanh(self.wi_0(x)) * self.wi_1(x)
        return self.wo(hidden.to(self.wo.weight.dtype))  # wo may be kept in float32 (UMT5Encoder.cast)


class AttentionLayer(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.SelfAttention = SelfAttention(config)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return x + self.SelfAttention(self.layer_norm(x), keep)


class FeedForwardLayer(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.DenseReluDense = GatedFeedForward(config)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


def clamp_float16(x: torch.Tensor) -> torch.Tensor:
    """float16 states pulled back inside the finite range (a little further once any overflowed),
    as T5 does after each layer; other dtypes pass through."""
    if x.dtype != torch.float16:
        return x
    largest = torch.finfo(torch.float16).max
    bound = torch.where(torch.isinf(x).any(), largest - 1000, largest)  # a tensor: no host sync
    return torch.clamp(x, min=-bound, max=bound)


class Block(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList([AttentionLayer(config), FeedForwardLayer(config)])

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = clamp_float16(self.layer[0](x, keep))
        return clamp_float16(self.layer[1](x))


class Stack(nn.Module):
    """The checkpoint's `encoder.`: the blocks and the final norm. Its `embed_tokens` is the
    model's `shared` table (one module, so one parameter under both checkpoint names)."""

    def __init__(self, config: TextEncoderConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.block = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, embeds: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = embeds
        for block in self.block:
            x = block(x, keep)
        return self.final_layer_norm(x)


class UMT5Encoder(nn.Module):
    """Token ids -> the last hidden state (B, L, d_model)."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.shared = uninitialized_embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, self.shared)

    @property
    def device(self) -> torch.device:
        return self.shared.weight.device

    def cast(self, dtype: torch.dtype) -> "UMT5Encoder":
        """All parameters to `dtype`, except that float16 keeps the feed-forward output
        projections (`wo`) in float32, as transformers loads UMT5 (its _keep_in_fp32_modules): their
        outputs, and so the residual stream after the first block, stay float32 and do not overflow."""
        self.to(dtype)
        if dtype == torch.float16:
            for block in self.encoder.block:
                block.layer[1].DenseReluDense.wo.float()
        return self

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask: (B, L); mask is nonzero at real tokens."""
        return self.encoder(self.shared(ids), mask.bool())
