"""Fused Triton kernels for the transformer's non-matmul work.

Each kernel matches a `helios_backends.ops.TorchOps` method (its reference) and computes in fp32
whatever the storage dtype. Rows are tokens of a (B, L, D) tensor; a program takes `BLOCK_M`
rows and the whole feature dim. Modulation tensors are (B, R, D) fp32 with R = 1 or 2 rows: with
R = 2 token l of a batch uses row (l >= split), the history / current-chunk split of Helios.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Counts that change with a request's sizes (token rows, sequence length, the history split,
# positions) only bound masks and index arithmetic, never an address's alignment: unspecialized,
# one compiled variant per dtype and width serves every size, so the loading thread's run on tiny
# inputs compiles what a request needs (helios_backends.warmup). Strides stay specialized: their
# divisibility lets loads vectorize.
ROW_COUNTS = ["n_rows", "L", "split"]


@triton.jit(do_not_specialize=ROW_COUNTS)
def _modulated_layernorm(
    x_ptr, shift_ptr, scale_ptr, out_ptr,
    n_rows, L, D, split, R, eps,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    diff = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / D + eps)
    b = rows // L
    r = tl.where(R == 2, ((rows % L) >= split).to(tl.int32), 0)
    mod = (b * R + r)[:, None] * D + cols[None, :]
    shift = tl.load(shift_ptr + mod, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + mod, mask=mask, other=0.0)
    y = diff * rstd[:, None] * (1.0 + scale) + shift
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=ROW_COUNTS)
def _gated_residual(
    x_ptr, y_ptr, gate_ptr, out_ptr,
    n_rows, L, D, split, R,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < n_rows)[:, None] & (cols < D)[None, :]
    offs = rows[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = rows // L
    r = tl.where(R == 2, ((rows % L) >= split).to(tl.int32), 0)
    gate = tl.load(gate_ptr + (b * R + r)[:, None] * D + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + offs, (x + y * gate).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n_rows", "L"])
def _rmsnorm_rope(
    x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr,
    n_rows, L, D, x_row_stride, half_head, eps,
    HAS_ROPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """RMSNorm over all heads of a q or k row, then RoPE on each head's interleaved pairs.

    Pair p of the row is (x[2p], x[2p+1]); its angle is that of pair p % (head_dim/2) of the
    token's position (cos/sin tables are (L, head_dim/2), shared by the batch and the heads).
    Input rows are `x_row_stride` apart, so q and k are read in place from the fused QKV output.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.arange(0, BLOCK_P)
    mask = (rows < n_rows)[:, None] & (pairs < D // 2)[None, :]
    even_in = rows[:, None].to(tl.int64) * x_row_stride + 2 * pairs[None, :]
    even = rows[:, None].to(tl.int64) * D + 2 * pairs[None, :]
    xe = tl.load(x_ptr + even_in, mask=mask, other=0.0).to(tl.float32)
    xo = tl.load(x_ptr + even_in + 1, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt((tl.sum(xe * xe, axis=1) + tl.sum(xo * xo, axis=1)) / D + eps)
    pcols = 2 * pairs
    we = tl.load(w_ptr + pcols, mask=pairs < D // 2, other=0.0).to(tl.float32)
    wo = tl.load(w_ptr + pcols + 1, mask=pairs < D // 2, other=0.0).to(tl.float32)
    xe = xe * rstd[:, None] * we[None, :]
    xo = xo * rstd[:, None] * wo[None, :]
    if HAS_ROPE:
        angle = (rows % L)[:, None] * half_head + (pairs % half_head)[None, :]
        c = tl.load(cos_ptr + angle, mask=mask, other=1.0)
        s = tl.load(sin_ptr + angle, mask=mask, other=0.0)
        ye = xe * c - xo * s
        yo = xe * s + xo * c
    else:
        ye = xe
        yo = xo
    tl.store(out_ptr + even, ye.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + even + 1, yo.to(out_ptr.dtype.element_ty), mask=mask)


def block_rows(width: int) -> int:
    """Rows per program so a tile holds about 4096 elements (at least one row)."""
    return max(1, 4096 // triton.next_power_of_2(width))


@triton.jit(do_not_specialize=["N"])
def _channel_rmsnorm_silu(
    x_ptr, gamma_ptr, bias_ptr, pre_bias_ptr, out_ptr,
    C, N, x_sb, x_sc, x_sn, o_sb, o_sc, o_sn, scale, eps,
    HAS_BIAS: tl.constexpr, HAS_PRE_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The Wan VAE's norm + SiLU on (B, C, N) activations (N = frames x height x width): per
    position, x (+ pre_bias[c], the previous conv's bias) / max(||x over C||, eps) * scale *
    gamma[c] (+ bias[c]), then SiLU, in fp32. A program takes BLOCK_N consecutive positions of one
    batch item and all channels. Strides (batch, channel, position) of x and of out are free: a
    channel-first or channels-last activation, out possibly a slice of a larger buffer."""
    b = tl.program_id(1)
    pos = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    chans = tl.arange(0, BLOCK_C)
    cmask = chans < C
    mask = cmask[:, None] & (pos < N)[None, :]
    c64, p64 = chans[:, None].to(tl.int64), pos[None, :].to(tl.int64)
    x = tl.load(x_ptr + b.to(tl.int64) * x_sb + c64 * x_sc + p64 * x_sn, mask=mask, other=0.0).to(tl.float32)
    if HAS_PRE_BIAS:
        x = tl.where(mask, x + tl.load(pre_bias_ptr + chans, mask=cmask, other=0.0).to(tl.float32)[:, None], 0.0)
    norm = tl.sqrt(tl.sum(x * x, axis=0))
    y = x / tl.maximum(norm, eps)[None, :]
    gamma = tl.load(gamma_ptr + chans, mask=cmask, other=0.0).to(tl.float32)
    y = y * scale * gamma[:, None]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + chans, mask=cmask, other=0.0).to(tl.float32)[:, None]
    y = y / (1.0 + tl.exp(-y))
    tl.store(out_ptr + b.to(tl.int64) * o_sb + c64 * o_sc + p64 * o_sn, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["numel"])
def _bias_residual(x_ptr, bias_ptr, res_ptr, numel, C, channel_stride, BLOCK: tl.constexpr):
    """x += bias[c] + res in place, x and res of one dense layout; element i's channel is
    (i // channel_stride) % C (channel_stride 1 channels-last, N channel-first)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < numel
    c = (i // channel_stride) % C
    x = tl.load(x_ptr + i, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(res_ptr + i, mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(x_ptr + i, (x + bias + r).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _quantize_rows_e4m3(x_ptr, q_ptr, scale_ptr, K, x_row_stride, GELU: tl.constexpr, BLOCK_K: tl.constexpr):
    """One row (token) of x, optionally through tanh-GELU, to e4m3 values and one fp32 scale that
    maps the row's largest magnitude to 448 (fp8.quantize_rows, in one read of x)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    mask = cols < K
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = 0.5 * x * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0))
    amax = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12)
    scale = amax / 448.0
    q = tl.clamp(x / scale, -448.0, 448.0)
    tl.store(q_ptr + row * K + cols, q.to(tl.float8e4nv, fp_downcast_rounding="rtne"), mask=mask)
    tl.store(scale_ptr + row, scale)


def num_warps(block_elements: int) -> int:
    """Warps for a program holding `block_elements` values (Triton's layer-norm tutorial rule)."""
    return min(max(block_elements // 256, 1), 8)
