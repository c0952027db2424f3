"""Sequence parallelism (Ulysses, Ring, both) and CFG parallelism, driven by the caller's groups.

Token sharding: every rank of a sequence-parallel group holds an equal slice of the history
tokens *and* an equal slice of the current chunk's tokens (each component split on its own, as
the engines had to fix for Helios), so per-token work (modulation, FFN, the current tokens'
cross-attention) is local and never duplicated. Self-attention is the only mixing step:

- Ulysses all-to-all trades the token split for a head split, attends over the whole sequence
  for heads/U, and trades back. Attention does not care about key order, so the rank-interleaved
  order [hist_0, cur_0, hist_1, cur_1, ...] it produces is exact.
- Ring passes K/V blocks around the ring group and merges the partial results by log-sum-exp.
- Ulysses x Ring: all-to-all inside each Ulysses group, then the ring across them.

Before a request is queued, `check_sp_degree` refuses a size whose tokens the ranks cannot split
evenly, from the token counts every transformer call of the request sees (`call_tokens`).

CFG parallel: the conditional and unconditional forwards run on the two ranks of a cfg group and
are exchanged with one all-gather; every rank then applies the same guidance (CFG-Zero* too).

The groups come from the caller: an engine's process groups, or `ParallelGroups.from_world` when
run directly under torchrun. The core never creates groups where an engine has them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from .config import LATENT_STRIDE, MAX_SIZE, size_multiple
from .errors import RequestError

if TYPE_CHECKING:
    from .request import Plan


@dataclass(frozen=True)
class ParallelConfig:
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_parallel: bool = False

    @property
    def sp_degree(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def world_size(self) -> int:
        return self.sp_degree * (2 if self.cfg_parallel else 1)

    def validate(self, num_heads: int | None = None, world_size: int | None = None) -> None:
        for name in ("ulysses_degree", "ring_degree"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RequestError(name, f"must be an integer >= 1, got {value!r}")
        if num_heads is not None and num_heads % self.ulysses_degree:
            raise RequestError("ulysses_degree", f"{self.ulysses_degree} must divide the {num_heads} attention heads")
        if world_size is not None and world_size != self.world_size:
            raise RequestError(
                "parallel",
                f"ulysses_degree x ring_degree x (2 if cfg_parallel) = {self.world_size} must equal the {world_size} processes",
            )


def engine_parallel_config(
    ulysses_degree: int, ring_degree: int, cfg_degree: int, num_heads: int, flags: Mapping[str, str], uses_cfg: bool
) -> ParallelConfig:
    """The core's ParallelConfig for an engine's degrees, or a start-up ValueError naming the engine's flag.

    flags: "ulysses_degree", "ring_degree", "cfg_degree" -> how the engine spells each setting.
    uses_cfg: whether the checkpoint's variant runs CFG by default (Distilled does not): a
    cfg-parallel server for a variant without CFG would fail every default request.
    """
    if cfg_degree not in (1, 2):
        raise ValueError(f"{flags['cfg_degree']}={cfg_degree}: Helios has two CFG branches; accepted: 1 or 2")
    if cfg_degree == 2 and not uses_cfg:
        raise ValueError(
            f"{flags['cfg_degree']}={cfg_degree}: Helios-Distilled runs without CFG (guidance_scale 1.0), so there is "
            "no second branch to put on another rank; accepted: 1 (use the ranks for --ulysses-degree / --ring-degree)"
        )
    config = ParallelConfig(ulysses_degree, ring_degree, cfg_degree == 2)
    try:
        config.validate(num_heads)
    except RequestError as exc:
        accepted = [d for d in range(1, num_heads + 1) if num_heads % d == 0] if exc.field == "ulysses_degree" else "an integer >= 1"
        raise ValueError(f"{flags[exc.field]}={getattr(config, exc.field)}: {exc.message}; accepted: {accepted}") from None
    return config


def indivisible_tokens(degree: int, tokens: int, what: str) -> str:
    """Why `tokens` cannot be sharded: one wording for the check before queueing and the one at run time."""
    return f"ulysses_degree x ring_degree = {degree} must divide the {tokens} {what} tokens"


@dataclass(frozen=True)
class CallTokens:
    """The tokens of the transformer calls of one pyramid stage; sequence parallelism splits each part on its own."""

    stage: int  # 0: the smallest grid, run first
    history: int  # long + mid + short views, always at the full latent grid
    current: int  # the chunk's latents at this stage's grid


def _patches(grid: tuple[int, int, int], kernel: tuple[int, int, int], padded: bool) -> int:
    """Tokens of a patch embedding whose stride is its kernel; padded: the grid is first replicate-padded to a multiple."""
    if padded:
        return math.prod(-(-n // k) for n, k in zip(grid, kernel))
    return math.prod(n // k for n, k in zip(grid, kernel))


def _call_tokens(
    height: int, width: int, chunk_frames: int, history_sizes: tuple[int, int, int], stages: int, patch_size: tuple[int, int, int]
) -> tuple[CallTokens, ...]:
    h, w = height // LATENT_STRIDE, width // LATENT_STRIDE
    long_n, mid_n, short_n = history_sizes
    # HeliosTransformer.embed_history: long and mid pooled 4x / 2x past padding, short (the first-frame
    # prefix or one extra recent frame, plus short_n) at the patch size; the sampler's short view always
    # holds short_n + 1 frames.
    history = (
        _patches((long_n, h, w), tuple(4 * k for k in patch_size), padded=True)
        + _patches((mid_n, h, w), tuple(2 * k for k in patch_size), padded=True)
        + _patches((short_n + 1, h, w), patch_size, padded=False)
    )
    # Generation.begin_chunk halves the grid (stages - 1) times; each later stage doubles it.
    low_h, low_w = h // 2 ** (stages - 1), w // 2 ** (stages - 1)
    return tuple(
        CallTokens(s, history, _patches((chunk_frames, low_h * 2**s, low_w * 2**s), patch_size, padded=False)) for s in range(stages)
    )


def call_tokens(plan: Plan, patch_size: tuple[int, int, int]) -> tuple[CallTokens, ...]:
    """The token counts every transformer call of a request sees, per pyramid stage, smallest first.

    They are the same in every chunk, step and CFG branch, so a request's sizes can be judged
    against a sequence-parallel degree before it is queued.
    """
    return _call_tokens(plan.height, plan.width, plan.chunk_frames, plan.history_sizes, plan.stages, patch_size)


def _indivisible(calls: tuple[CallTokens, ...], sp_degree: int) -> str | None:
    """The first token count sp_degree does not divide, in words, or None."""
    if calls[0].history % sp_degree:
        return indivisible_tokens(sp_degree, calls[0].history, "history")
    for call in calls:
        if call.current % sp_degree:
            where = f" of pyramid stage {call.stage + 1} of {len(calls)}" if len(calls) > 1 else ""
            return indivisible_tokens(sp_degree, call.current, "current-chunk") + where
    return None


def _nearest_fits(value: int, step: int, fits: Callable[[int], bool]) -> list[int]:
    """The accepted sizes (multiples of step up to MAX_SIZE for which fits(size)) next below and next above value."""
    sizes = range(step, MAX_SIZE + 1, step)
    below = [s for s in sizes if s < value and fits(s)]
    above = [s for s in sizes if s > value and fits(s)]
    return below[-1:] + above[:1]


def _distance(sizes: list[int], value: int) -> float:
    return min((abs(s - value) for s in sizes), default=math.inf)


def check_sp_degree(plan: Plan, patch_size: tuple[int, int, int], sp_degree: int) -> None:
    """Refuse a size whose tokens `sp_degree` (Ulysses x Ring) ranks cannot split evenly, naming height or width.

    Every rank holds an equal slice of the history tokens and of the current chunk's tokens of
    every call (see SequenceParallelOps), so each of those counts must divide by the degree. The
    error names the field whose nearest accepted value is closer and gives that value for both fields.
    """
    if isinstance(sp_degree, bool) or not isinstance(sp_degree, int) or sp_degree < 1:
        raise ValueError(f"sp_degree must be an integer >= 1, got {sp_degree!r}")
    reason = _indivisible(call_tokens(plan, patch_size), sp_degree)
    if reason is None:
        return
    step = size_multiple(patch_size, plan.stages)

    def fits(height: int, width: int) -> bool:
        calls = _call_tokens(height, width, plan.chunk_frames, plan.history_sizes, plan.stages, patch_size)
        return _indivisible(calls, sp_degree) is None

    nearest = {
        "height": (plan.height, _nearest_fits(plan.height, step, lambda h: fits(h, plan.width)), f"width {plan.width}"),
        "width": (plan.width, _nearest_fits(plan.width, step, lambda w: fits(plan.height, w)), f"height {plan.height}"),
    }
    field = min(nearest, key=lambda name: _distance(nearest[name][1], nearest[name][0]))
    order = (field, "width" if field == "height" else "height")
    offers = [f"{name} {' or '.join(map(str, nearest[name][1]))} ({nearest[name][2]})" for name in order if nearest[name][1]]
    accepted = f"nearest accepted: {', or '.join(offers)}" if offers else f"no height or width up to {MAX_SIZE} fits this degree"
    raise RequestError(
        field,
        f"{reason} at height {plan.height}, width {plan.width} (every sequence-parallel rank takes an equal share of "
        f"each call's history and current-chunk tokens); {accepted}",
    )


@dataclass
class ParallelGroups:
    """Process groups for one rank. Any of them may be None (that dimension is 1).

    The layout the core expects, whoever builds the groups: the sp group's rank is the token
    shard (rank r of the sp group holds slice r of the history and of the current tokens); each
    Ulysses group holds consecutive sp ranks (one ring index), each Ring group the sp ranks with
    the same Ulysses index, and each cfg group the ranks holding the same shard (cfg rank 0 runs
    the conditional branch). `from_world` builds exactly that as rank = cfg * SP + ring * U + ulysses.
    """

    config: ParallelConfig
    ulysses: dist.ProcessGroup | None = None
    ring: dist.ProcessGroup | None = None
    sp: dist.ProcessGroup | None = None
    cfg: dist.ProcessGroup | None = None

    @classmethod
    def from_world(cls, config: ParallelConfig) -> "ParallelGroups":
        """Groups over torch.distributed's world: rank = cfg * SP + ring * U + ulysses."""
        world = dist.get_world_size()
        config.validate(world_size=world)
        rank, u, r, sp = dist.get_rank(), config.ulysses_degree, config.ring_degree, config.sp_degree
        cfg_n = 2 if config.cfg_parallel else 1
        mine: dict[str, dist.ProcessGroup] = {}
        # Every rank creates every group, in the same order, as torch.distributed requires.
        for c in range(cfg_n):
            base = c * sp
            members = list(range(base, base + sp))
            group = dist.new_group(members)
            if rank in members:
                mine["sp"] = group
            for ring_idx in range(r):
                members = [base + ring_idx * u + i for i in range(u)]
                group = dist.new_group(members)
                if rank in members:
                    mine["ulysses"] = group
            for uly_idx in range(u):
                members = [base + ring_idx * u + uly_idx for ring_idx in range(r)]
                group = dist.new_group(members)
                if rank in members:
                    mine["ring"] = group
        for s in range(sp):
            members = [c * sp + s for c in range(cfg_n)]
            group = dist.new_group(members)
            if rank in members:
                mine["cfg"] = group
        return cls(
            config,
            ulysses=mine["ulysses"] if u > 1 else None,
            ring=mine["ring"] if r > 1 else None,
            sp=mine["sp"] if sp > 1 else None,
            cfg=mine["cfg"] if cfg_n > 1 else None,
        )

    @classmethod
    def from_engine(
        cls,
        config: ParallelConfig,
        world_size: int,
        ulysses: dist.ProcessGroup | None,
        ring: dist.ProcessGroup | None,
        sp: dist.ProcessGroup | None,
        cfg: dist.ProcessGroup | None,
    ) -> "ParallelGroups":
        """Groups an engine already created (the caller vouches for the layout above).

        world_size: the ranks taking part (sp group size x cfg group size); the degrees must
        multiply to it. Groups of dimensions whose degree is 1 are dropped.
        """
        config.validate(world_size=world_size)
        return cls(
            config,
            ulysses=ulysses if config.ulysses_degree > 1 else None,
            ring=ring if config.ring_degree > 1 else None,
            sp=sp if config.sp_degree > 1 else None,
            cfg=cfg if config.cfg_parallel else None,
        )

    @property
    def cfg_rank(self) -> int:
        return 0 if self.cfg is None else dist.get_rank(self.cfg)


def _size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _all_gather(x: torch.Tensor, group) -> list[torch.Tensor]:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return parts


def _all_to_all(chunks: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Send chunks[j] to rank j of `group`; return what each rank sent to us, in rank order."""
    if dist.get_backend(group) != "gloo":
        send = torch.stack(chunks).contiguous()
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
        return list(recv.unbind(0))
    # gloo has no all-to-all: gather every rank's chunks and keep the ones addressed to us.
    me = dist.get_rank(group)
    return [parts[me] for parts in _all_gather(torch.stack(chunks), group)]


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention on [B, S, H, D] and the fp32 log-sum-exp of its scores, (B, H, S)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, False, scale=scale)[:2]
        return out.transpose(1, 2), lse.float()
    scores = (qt.float() @ kt.float().transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.softmax(scores, dim=-1) @ vt.float()
    return out.to(q.dtype).transpose(1, 2), lse


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group) -> torch.Tensor:
    """Local queries against every rank's K/V, the blocks passed once around the ring."""
    n, me = dist.get_world_size(group), dist.get_rank(group)
    send_to, recv_from = dist.get_global_rank(group, (me + 1) % n), dist.get_global_rank(group, (me - 1) % n)
    out = lse = None
    kv = torch.stack([k, v]).contiguous()
    for step in range(n):
        if step < n - 1:
            incoming = torch.empty_like(kv)
            ops = [dist.P2POp(dist.isend, kv, send_to, group), dist.P2POp(dist.irecv, incoming, recv_from, group)]
            requests = dist.batch_isend_irecv(ops)
        o, l = attention_with_lse(q, kv[0], kv[1])
        if out is None:
            out, lse = o.float(), l
        else:
            new = torch.logaddexp(lse, l)
            w_old = torch.exp(lse - new).transpose(1, 2).unsqueeze(-1)
            w_new = torch.exp(l - new).transpose(1, 2).unsqueeze(-1)
            out, lse = out * w_old + o.float() * w_new, new
        if step < n - 1:
            for request in requests:
                request.wait()
            kv = incoming
    return out.to(q.dtype)


class SequenceParallelOps:
    """Wraps a backend's ops: shards tokens over the SP group and makes attention global."""

    def __init__(self, base, groups: ParallelGroups):
        self.base = base
        self.groups = groups
        self.name = f"{base.name}+sp"

    def __getattr__(self, name):
        return getattr(self.base, name)

    @property
    def degree(self) -> int:
        return _size(self.groups.sp)

    def _check(self, what: str, n: int) -> None:
        """The last line of defence: `plan(..., sp_degree)` refuses such sizes before a request is queued."""
        if n % self.degree:
            raise RequestError(
                "size",
                f"{indivisible_tokens(self.degree, n, what)}; pick a height/width whose token grid divides evenly at every pyramid stage",
            )

    def shard_tokens(self, x: torch.Tensor, history_len: int) -> tuple[torch.Tensor, int]:
        """This rank's slice of the history tokens and of the current tokens."""
        self._check("history", history_len)
        self._check("current-chunk", x.shape[1] - history_len)
        me = dist.get_rank(self.groups.sp)
        hist, cur = x[:, :history_len], x[:, history_len:]
        h, c = hist.shape[1] // self.degree, cur.shape[1] // self.degree
        return torch.cat([hist[:, me * h : (me + 1) * h], cur[:, me * c : (me + 1) * c]], dim=1), h

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The current chunk's tokens from every rank, in sequence order."""
        return torch.cat(_all_gather(x, self.groups.sp), dim=1)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ulysses, ring = self.groups.ulysses, self.groups.ring
        if ulysses is not None:
            u = dist.get_world_size(ulysses)
            q, k, v = (torch.cat(_all_to_all(list(t.chunk(u, dim=2)), ulysses), dim=1) for t in (q, k, v))
        out = ring_attention(q, k, v, ring) if ring is not None else self.base.attention(q, k, v)
        if ulysses is not None:
            out = torch.cat(_all_to_all(list(out.chunk(u, dim=1)), ulysses), dim=2)
        return out


def cfg_branches(cond_or_uncond: torch.Tensor, groups: ParallelGroups) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) from the two ranks of the cfg group, each having computed its own branch."""
    cond, uncond = _all_gather(cond_or_uncond, groups.cfg)
    return cond, uncond
