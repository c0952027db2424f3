"""The one place where SGLang's parallel settings meet the Helios core.

SGLang's Ulysses / Ring sequence parallelism (--sp-degree, --ulysses-degree, --ring-degree) and
CFG parallelism (--enable-cfg-parallel, --cfg-parallel-size 2) run the core's own sequence and
CFG parallelism on SGLang's process groups; anything the core has no counterpart for is refused
at start-up, naming the flag, instead of silently running a replicated model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helios_backends.config import TransformerConfig, uses_cfg_by_default
from helios_backends.loading import read_configs
from helios_backends.parallel import ParallelConfig, ParallelGroups, engine_parallel_config

FLAGS = {"ulysses_degree": "--ulysses-degree", "ring_degree": "--ring-degree", "cfg_degree": "--cfg-parallel-size"}


def _flag_note(server_args: Any, name: str) -> str:
    """Whether a degree came from the user or from SGLang's automatic layout for --num-gpus."""
    if not server_args.is_arg_explicitly_set(name):
        return f" (chosen by SGLang for --num-gpus {server_args.num_gpus})"
    return ""


def _cfg_flag(server_args: Any) -> str:
    if server_args.is_arg_explicitly_set("cfg_parallel_degree"):
        return "--cfg-parallel-size"
    if server_args.is_arg_explicitly_set("enable_cfg_parallel"):
        return "--enable-cfg-parallel, i.e. --cfg-parallel-size"
    return f"--cfg-parallel-size{_flag_note(server_args, 'cfg_parallel_degree')}"


def _sp_degrees(server_args: Any) -> tuple[int, int]:
    """(Ulysses, Ring) of resolved ServerArgs, SGLang's automatic layout included."""
    return server_args.ulysses_degree or 1, server_args.ring_degree or 1


def served_sp_degree(server_args: Any) -> int:
    """Ulysses x Ring: the number of shards the workers split every transformer call's tokens into."""
    ulysses, ring = _sp_degrees(server_args)
    return ulysses * ring


def core_parallel_config(server_args: Any, folder: str | Path | None) -> ParallelConfig:
    """The core's ParallelConfig for SGLang's resolved ServerArgs, or a ValueError naming the flag.

    Runs after SGLang has filled in its automatic layout, so degrees it derived from --num-gpus
    are checked too (and said to be SGLang's). SGLang's own K/V-gather exchange, which it picks by
    itself for sp_degree 2, lays its ranks out on the Ulysses groups, so it runs as the core's
    Ulysses (same result: attention is exact either way); asked for explicitly it is refused.

    folder: the checkpoint folder (its head count and variant), or None for a hub name not yet
    downloaded: then the released checkpoints' 40 heads are assumed and the worker checks again.
    """
    if folder is None:
        num_heads, uses_cfg = TransformerConfig().num_attention_heads, True
    else:
        configs = read_configs(folder)
        num_heads, uses_cfg = configs.transformer.num_attention_heads, uses_cfg_by_default(configs.pipeline.variant)
    if (server_args.tp_size or 1) > 1:
        raise ValueError(
            f"--tp-size={server_args.tp_size}{_flag_note(server_args, 'tp_size')}: the Helios core has no tensor "
            "parallelism; accepted: 1 (use --ulysses-degree / --ring-degree / --cfg-parallel-size, or --dp-size for replicas)"
        )
    if server_args.is_arg_explicitly_set("kv_gather_degree") and (server_args.kv_gather_degree or 1) > 1:
        raise ValueError(
            f"--kv-gather-degree={server_args.kv_gather_degree}: the Helios core exchanges tokens by Ulysses all-to-all "
            "or Ring; accepted: 1 (use --ulysses-degree N instead)"
        )
    ulysses, ring = _sp_degrees(server_args)
    sp = server_args.sp_degree or 1
    if server_args.is_arg_explicitly_set("sp_degree") and sp != ulysses * ring:
        raise ValueError(
            f"--sp-degree={sp}{_flag_note(server_args, 'sp_degree')}: must equal --ulysses-degree x --ring-degree = "
            f"{ulysses} x {ring}; accepted: {ulysses * ring}"
        )
    cfg_degree = server_args.cfg_parallel_degree if server_args.enable_cfg_parallel else 1
    flags = {**FLAGS, "cfg_degree": _cfg_flag(server_args)}
    if not server_args.is_arg_explicitly_set("ulysses_degree"):
        flags["ulysses_degree"] = f"--ulysses-degree{_flag_note(server_args, 'ulysses_degree')}"
    config = engine_parallel_config(ulysses, ring, cfg_degree or 1, num_heads, flags, uses_cfg)
    replicas = server_args.dp_size or 1
    if config.world_size * replicas != server_args.num_gpus:
        raise ValueError(
            f"--num-gpus={server_args.num_gpus}: must equal --dp-size x --ulysses-degree x --ring-degree x "
            f"--cfg-parallel-size = {replicas} x {ulysses} x {ring} x {cfg_degree}; accepted: {config.world_size * replicas}"
        )
    return config


def check_parallel_settings(server_args: Any) -> None:
    """Start-up check: SGLang calls the pipeline config's validate_server_args after its own adjustments."""
    folder = Path(server_args.model_path)
    core_parallel_config(server_args, folder if folder.is_dir() else None)


def worker_parallel_groups(server_args: Any, folder: str | Path) -> ParallelGroups | None:
    """This worker's ParallelGroups from SGLang's own process groups (None when nothing is parallel).

    SGLang builds its groups with RankGenerator order "tp-sp-pp-cfg-dp": with tp = pp = 1 a
    replica's rank is cfg * SP + sp_rank, so each cfg group pairs the ranks holding the same token
    shard, and inside each sp group (set_seq_parallel_pg_by_sp_groups, use_ulysses_low) the
    Ulysses groups are runs of U consecutive sp ranks and the Ring groups take every U-th: the
    layout ParallelGroups documents, so the groups are handed on as they are.
    """
    config = core_parallel_config(server_args, folder)
    if config.world_size == 1:
        return None
    from sglang.multimodal_gen.runtime.distributed.parallel_state import get_cfg_group, get_sp_group

    sp, cfg = get_sp_group(), get_cfg_group()
    return ParallelGroups.from_engine(
        config, sp.world_size * cfg.world_size, ulysses=sp.ulysses_group, ring=sp.ring_group, sp=sp.device_group, cfg=cfg.device_group
    )
