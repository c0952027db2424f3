"""A stand-in `torch_npu` for CPU tests, in the manner of vllm-ascend's CPU unit tests.

Each op has the signature the torch-npu 2.13.0 wheel registers (its codegen schema yaml, which
tests/test_npu_schemas.py reads out of the real wheel; the op docs omit some trailing arguments
and name npu_rotary_mul's input `input` where the schema says `self`), so a misspelt or missing
argument is a TypeError; it raises ValueError on any input the docs
rule out (dtype, rank, layout, head count, shape relations, value range) and then computes the
documented formula with a CPU reference in fp32, returning the documented outputs in the input
dtype. Features the project does not use (masks, pse, dropout, varlen, `rotate`) raise
NotImplementedError rather than being approximated. Calls are counted in `calls`.

What it cannot prove: that tensors live on an NPU, the kernels' own numerics (real bf16 kernels
round differently), performance, or limits the docs do not state.
"""

from __future__ import annotations

import collections
import importlib.machinery
import math
import sys
import types
from pathlib import Path

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ATTENTION_LAYOUTS = ("BSH", "SBH", "BSND", "BNSD", "TND")


def _dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in DTYPES:
        raise ValueError(f"{name}: dtype {t.dtype} not supported (float16, bfloat16, float32)")


def npu_fusion_attention(
    query,
    key,
    value,
    head_num,
    input_layout,
    pse=None,
    padding_mask=None,
    atten_mask=None,
    scale=1.0,
    keep_prob=1.0,
    pre_tockens=2147483647,
    next_tockens=2147483647,
    inner_precise=0,
    prefix=None,
    actual_seq_qlen=None,
    actual_seq_kvlen=None,
    sparse_mode=0,
    gen_mask_parallel=True,
    sync=False,
    softmax_layout="",
    sink=None,
    dropout_mask=None,
    seed=0,
    offset=0,
):
    calls["npu_fusion_attention"] += 1
    if sink is not None or dropout_mask is not None:
        raise NotImplementedError("stand-in does not model attention sinks or a given dropout mask")
    if input_layout not in ATTENTION_LAYOUTS:
        raise ValueError(f"input_layout {input_layout!r} not in {ATTENTION_LAYOUTS}")
    if input_layout == "TND" or pse is not None or padding_mask is not None or atten_mask is not None or prefix is not None:
        raise NotImplementedError("stand-in models dense attention without masks, pse or varlen only")
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
    if keep_prob != 1.0:
        raise NotImplementedError("stand-in does not model dropout")
    if not isinstance(head_num, int):
        raise ValueError(f"head_num must be an int, got {type(head_num).__name__}")
    for name, t in (("query", query), ("key", key), ("value", value)):
        _dtype(name, t)
    if not query.dtype == key.dtype == value.dtype:
        raise ValueError(f"query/key/value dtypes must match, got {query.dtype}, {key.dtype}, {value.dtype}")
    if key.shape != value.shape:
        raise ValueError(f"key and value shapes must match, got {tuple(key.shape)} and {tuple(value.shape)}")
    rank = 3 if input_layout in ("BSH", "SBH") else 4
    if not query.dim() == key.dim() == rank:
        raise ValueError(f"layout {input_layout} needs {rank}-D query/key/value, got {query.dim()}-D and {key.dim()}-D")

    def to_bnsd(t, heads_of_t):
        if input_layout == "BNSD":
            return t
        if input_layout == "BSND":
            return t.transpose(1, 2)
        if input_layout == "SBH":
            t = t.transpose(0, 1)
        if t.shape[-1] % heads_of_t:
            raise ValueError(f"hidden size {t.shape[-1]} not divisible by {heads_of_t} heads")
        return t.unflatten(-1, (heads_of_t, -1)).transpose(1, 2)

    if rank == 4:
        q, k, v = to_bnsd(query, None), to_bnsd(key, None), to_bnsd(value, None)
        if q.shape[1] != head_num:
            raise ValueError(f"head_num {head_num} != the query's N {q.shape[1]} in layout {input_layout}")
    else:
        q = to_bnsd(query, head_num)
        kv_heads = head_num * key.shape[-1] // query.shape[-1]
        k, v = to_bnsd(key, kv_heads), to_bnsd(value, kv_heads)
    (b, n, s_q, d), (b_kv, n_kv, s_kv, d_kv) = q.shape, k.shape
    if b != b_kv:
        raise ValueError(f"batch sizes differ: query {b}, key {b_kv}")
    if d != d_kv or not 1 <= d <= 768:
        raise ValueError(f"head dim must satisfy Dq == Dk in 1..768, got {d} and {d_kv}")
    if not 1 <= n <= 256 or n % n_kv:
        raise ValueError(f"N: query heads {n} must be 1..256 and a multiple of key heads {n_kv}")
    if not (1 <= s_q <= 1 << 20 and 1 <= s_kv <= 1 << 20):
        raise ValueError(f"sequence lengths must be 1..1M, got {s_q} and {s_kv}")

    kf = k.float().repeat_interleave(n // n_kv, dim=1)
    vf = v.float().repeat_interleave(n // n_kv, dim=1)
    scores = q.float() @ kf.transpose(-1, -2) * scale
    softmax_max = scores.amax(-1, keepdim=True)
    weights = (scores - softmax_max).exp()
    softmax_sum = weights.sum(-1, keepdim=True)
    out = (weights / softmax_sum) @ vf
    if input_layout == "BSND":
        out = out.transpose(1, 2)
    elif input_layout in ("BSH", "SBH"):
        out = out.transpose(1, 2).flatten(2)
        if input_layout == "SBH":
            out = out.transpose(0, 1)
    return out.to(query.dtype).contiguous(), softmax_max, softmax_sum, torch.empty(0), 0, 0, 0


def npu_rms_norm(self, gamma, epsilon=1e-06):
    calls["npu_rms_norm"] += 1
    _dtype("self", self)
    if gamma.dtype != self.dtype:
        raise ValueError(f"gamma dtype {gamma.dtype} must equal the input's {self.dtype}")
    if not 2 <= self.dim() <= 8:
        raise ValueError(f"input must be 2-8-D, got {self.dim()}-D")
    if gamma.dim() > self.dim() or tuple(gamma.shape) != tuple(self.shape[self.dim() - gamma.dim():]):
        raise ValueError(f"gamma shape {tuple(gamma.shape)} is not a trailing part of the input's {tuple(self.shape)}")
    dims = tuple(range(self.dim() - gamma.dim(), self.dim()))
    xf = self.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + epsilon)
    return (xf * rstd * gamma.float()).to(self.dtype), rstd


def _rotary_layout(x: torch.Tensor, r: torch.Tensor, rotary_mode: str) -> tuple[str, int, int]:
    """(layout, B, N) of x as told by the table shape: interleave takes 11SD/1S1D/S11D only."""
    d0, d1, d2, d = x.shape
    layouts = {"BNSD": (d0, d1, d2), "BSND": (d0, d2, d1), "SBND": (d1, d2, d0)}  # B, N, S
    allowed = {
        "BNSD": lambda b, n, s: [(1, 1, s, d), (b, 1, s, d), (b, n, s, d)],
        "BSND": lambda b, n, s: [(1, s, 1, d), (b, s, 1, d), (b, s, n, d)],
        "SBND": lambda b, n, s: [(s, 1, 1, d), (s, b, 1, d), (s, b, n, d)],
    }
    for layout, (b, n, s) in layouts.items():
        shapes = allowed[layout](b, n, s)
        if tuple(r.shape) in (shapes[:1] if rotary_mode == "interleave" else shapes):
            return layout, b, n
    raise ValueError(f"r1/r2 shape {tuple(r.shape)} fits no supported layout of input {tuple(x.shape)} in {rotary_mode} mode")


def npu_rotary_mul(self, r1, r2, rotary_mode="half", rotate=None):
    input = self  # the schema's name; the docs call it `input`
    calls["npu_rotary_mul"] += 1
    if rotate is not None:
        raise NotImplementedError("stand-in does not model the rotate matrix")
    if rotary_mode not in ("half", "interleave"):
        raise ValueError(f"rotary_mode must be 'half' or 'interleave', got {rotary_mode!r}")
    for name, t in (("input", input), ("r1", r1), ("r2", r2)):
        _dtype(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D, got {t.dim()}-D")
    # The docs list the same dtypes for all three; requiring them equal is the stand-in's choice.
    if not input.dtype == r1.dtype == r2.dtype:
        raise ValueError(f"input/r1/r2 dtypes must match, got {input.dtype}, {r1.dtype}, {r2.dtype}")
    if r1.shape != r2.shape:
        raise ValueError(f"r1 and r2 shapes differ: {tuple(r1.shape)} and {tuple(r2.shape)}")
    d = input.shape[-1]
    if d % 2 or d >= 896:
        raise ValueError(f"D must be even and < 896, got {d}")
    _, b, n = _rotary_layout(input, r1, rotary_mode)
    if rotary_mode == "interleave" and b * n >= 1000:
        raise ValueError(f"interleave mode needs B * N < 1000, got {b} * {n}")
    if rotary_mode == "half" and (b >= 1000 or n >= 1000):
        raise ValueError(f"half mode needs B, N < 1000, got {b}, {n}")
    for name, t in (("r1", r1), ("r2", r2)):
        if t.abs().max() > 1.0 + 1e-6:
            raise ValueError(f"{name} values must lie in [-1, 1]")
    x = input.float()
    if rotary_mode == "half":
        x1, x2 = x.chunk(2, dim=-1)
        x_new = torch.cat((-x2, x1), dim=-1)
    else:
        x_new = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
    return (r1.float() * x + r2.float() * x_new).to(input.dtype)


class _Config:
    """torch.npu.config: records what the process sets."""

    def __init__(self):
        self.sets: list[tuple[str, object]] = []

    def __setattr__(self, name, value):
        if name != "sets":
            self.sets.append((name, value))
        object.__setattr__(self, name, value)


calls: collections.Counter = collections.Counter()


def build(device_count: int = 1) -> types.ModuleType:
    """A fresh `torch_npu` module with a `npu` submodule seeing `device_count` NPUs."""
    module = types.ModuleType("torch_npu")
    module.__spec__ = importlib.machinery.ModuleSpec("torch_npu", None)
    module.__version__ = "2.13.0"
    module.calls = calls
    calls.clear()
    for op in (npu_fusion_attention, npu_rms_norm, npu_rotary_mul):
        setattr(module, op.__name__, op)
    npu = types.ModuleType("torch_npu.npu")
    npu.__spec__ = importlib.machinery.ModuleSpec("torch_npu.npu", None)
    npu.config = _Config()
    npu.compile_modes = []
    npu.device_count = lambda: device_count
    npu.current_device = lambda: 0  # the calling thread's device; nothing here sets it
    npu.is_available = lambda: device_count > 0

    def set_compile_mode(jit_compile=False):
        npu.compile_modes.append(jit_compile)

    npu.set_compile_mode = set_compile_mode
    module.npu = npu
    return module


def install_with_backend(device_count: int) -> types.ModuleType:
    """Install as `import torch_npu` does: name privateuse1 "npu" and register torch.npu.

    Both are irreversible for the process, so only subprocess tests call this.
    """
    module = build(device_count)
    sys.modules["torch_npu"] = module
    sys.modules["torch_npu.npu"] = module.npu
    torch.utils.rename_privateuse1_backend("npu")
    torch._register_device_module("npu", module.npu)
    return module


def register_entry_points(root: Path, groups: dict[str, dict[str, str]]) -> None:
    """Declare entry points ({group: {name: "module:attr"}}) as a test-only installed distribution
    in `root`, put on sys.path: an engine's own plugin discovery (importlib.metadata) finds them
    there as it finds vllm-ascend's or any platform package's."""
    dist = root / "helios_ascend_standin-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: helios-ascend-standin\nVersion: 0\n")
    lines = [line for group, names in groups.items() for line in (f"[{group}]", *(f"{n} = {v}" for n, v in names.items()), "")]
    (dist / "entry_points.txt").write_text("\n".join(lines))
    sys.path.insert(0, str(root))
