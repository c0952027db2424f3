"""The one place where SGLang's parallel settings meet the Helios core.

The core's sequence- and CFG-parallel hooks (`helios_backends.parallel`) are not there yet, so
every multi-rank layout is refused at start-up, naming the flag, instead of silently running a
replicated model. When the core grows them, this function is where the degrees are handed on.
"""

from __future__ import annotations

from typing import Any


def _flag_note(server_args: Any, name: str) -> str:
    """Whether a degree came from the user or from SGLang's automatic layout for --num-gpus."""
    if not server_args.is_arg_explicitly_set(name):
        return f" (chosen by SGLang for --num-gpus {server_args.num_gpus})"
    return ""


def check_parallel_settings(server_args: Any) -> None:
    """Refuse sequence, ring, tensor and CFG parallelism with an error naming the flag.

    SGLang switches CFG parallel on by itself on machines with two or more GPUs; the Helios
    pipeline config opts out of that (ModelDeploymentConfig.auto_enable_cfg_parallel=False), so
    only an explicit --enable-cfg-parallel / --cfg-parallel-size reaches this check. With
    --num-gpus N and no other flag SGLang gives the GPUs to sequence parallel, which is refused
    here too: serve one replica per GPU with --dp-size instead, or --num-gpus 1.
    """
    if server_args.enable_cfg_parallel:
        flag = "--cfg-parallel-size" if server_args.is_arg_explicitly_set("cfg_parallel_degree") else "--enable-cfg-parallel"
        raise ValueError(
            f"{flag}: Helios CFG parallelism is not available yet (accepted: off, --cfg-parallel-size 1); "
            "its two CFG branches run on one device"
        )
    degrees = (
        ("--sp-degree", "sp_degree", server_args.sp_degree),
        ("--ulysses-degree", "ulysses_degree", server_args.ulysses_degree),
        ("--ring-degree", "ring_degree", server_args.ring_degree),
        ("--tp-size", "tp_size", server_args.tp_size),
    )
    # The flags the user gave are named before the degrees SGLang derived from them.
    for flag, name, value in sorted(degrees, key=lambda d: not server_args.is_arg_explicitly_set(d[1])):
        if (value or 1) > 1:
            raise ValueError(
                f"{flag}={value}{_flag_note(server_args, name)}: Helios runs on one device per "
                f"replica for now (accepted: {flag} 1); use --num-gpus 1, or --dp-size N for N replicas"
            )
