"""SGLang-Diffusion's LoRA flags and routes on the core's merged adapters (`Helios.set_loras`).

    --lora-path P --lora-scale S [--lora-nickname N]   P merged at load at S; P is also what a route
                                                      may name: P itself, or an adapter inside P when
                                                      P is a folder (helios_backends.front_door.configured_lora)
    POST /v1/set_lora {lora_nickname, lora_path, strength}
                                    merge exactly these adapters (one, or lists of equal length);
                                    a nickname loaded before needs no path again
    POST /v1/unmerge_lora_weights   the base weights back; the adapters stay loaded
    POST /v1/merge_lora_weights {strength}
                                    the adapters of the last set_lora merged again, each at `strength`
    GET  /v1/list_loras             the loaded adapters and what is merged

SGLang's worker answers these routes by calling its pipeline's `LoRAPipeline` methods; the Helios
pipeline (helios_sglang.pipeline) overrides them to merge through the core's `LoraSet` instead of
wrapping layers. `requested_adapters` reads a /v1/set_lora call the same way in the HTTP front door
(a 400 naming the field before the worker is asked) and in the worker (SGLang's Python API reaches
it without HTTP). Refused, naming the field: a path the server was not configured with, a bad
adapter file, targets other than all / transformer (Helios has one transformer), merge_mode
dynamic (the core always merges), lora_alpha (the core reads alpha from the adapter file).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from helios_backends.config import TransformerConfig
from helios_backends.errors import CheckpointError, RequestError
from helios_backends.front_door import configured_lora
from helios_backends.lora import check_adapter

TARGETS = ("all", "transformer")
MERGE_MODES = ("auto", "merge")
ALWAYS_MERGED = "the Helios core merges adapters into the weights"
ALPHA_FROM_FILE = "the core takes alpha from the adapter file (PEFT metadata or .alpha tensors, else its rank)"


@dataclass(frozen=True)
class NamedAdapter:
    """One adapter of a /v1/set_lora call: SGLang's nickname for it, its configured path and its scale."""

    nickname: str
    path: str
    scale: float


def configured_paths(server_args: Any) -> list[str]:
    """The server's --lora-path (the one root a route may name adapters under), or none."""
    path = getattr(server_args, "lora_path", None)
    return [] if path is None else [path]


def _per_adapter(value: Any, count: int, field: str) -> list:
    """One value per nickname: a list of that length, or one value for all."""
    if not isinstance(value, list):
        return [value] * count
    if len(value) != count:
        raise RequestError(field, f"{len(value)} values for {count} lora_nickname values; give one, or one per nickname")
    return value


def check_target(target: str | list[str]) -> None:
    for name in target if isinstance(target, list) else [target]:
        if name not in TARGETS:
            raise RequestError("target", f"{name!r}: Helios has one transformer (accepted: {', '.join(TARGETS)})")


def check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise RequestError("strength", f"must be a finite number, got {strength!r}")
    return float(strength)


def requested_adapters(
    lora_nickname: str | list[str],
    lora_path: str | None | list[str | None],
    strength: float | list[float],
    target: str | list[str],
    merge_mode: str | None,
    lora_alpha: Any,
    configured: Sequence[str],
    loaded: Mapping[str, str] | None,
) -> list[NamedAdapter]:
    """A /v1/set_lora call as the adapters to merge, or a RequestError naming the field.

    loaded: nickname -> path of the adapters the worker read before (a nickname may then come
    without its path); None in the HTTP process, which does not know them and leaves such a
    nickname to the worker.
    """
    if lora_alpha is not None:
        raise RequestError("lora_alpha", f"{ALPHA_FROM_FILE}; leave it unset")
    if merge_mode is not None and merge_mode not in MERGE_MODES:
        raise RequestError("merge_mode", f"{merge_mode!r}: {ALWAYS_MERGED} (accepted: {', '.join(MERGE_MODES)})")
    check_target(target)
    nicknames = lora_nickname if isinstance(lora_nickname, list) else [lora_nickname]
    paths = _per_adapter(lora_path, len(nicknames), "lora_path")
    scales = [check_strength(s) for s in _per_adapter(strength, len(nicknames), "strength")]
    adapters = []
    for nickname, path, scale in zip(nicknames, paths, scales):
        if path is None:
            if loaded is None:
                continue
            if nickname not in loaded:
                raise RequestError("lora_path", f"adapter {nickname!r} is not loaded; give its lora_path")
            path = loaded[nickname]
        adapters.append(NamedAdapter(nickname, configured_lora(path, configured, "lora_path"), scale))
    return adapters


def check_adapters(adapters: Sequence[NamedAdapter], config: TransformerConfig) -> None:
    """Read every adapter against the transformer's config (no weights): a bad file is a RequestError naming it."""
    for adapter in adapters:
        try:
            check_adapter(adapter.path, config)
        except CheckpointError as exc:
            raise RequestError("lora_path", f"adapter {adapter.nickname!r}: {exc}") from None


def lora_status(adapters: Sequence[NamedAdapter], loaded: Mapping[str, str], merged: bool) -> dict:
    """`/v1/list_loras` (and SGLang's LoRA metrics) in the shape of SGLang's `LoRAPipeline.get_lora_status`."""
    active = {}
    if merged and adapters:
        nicknames = [a.nickname for a in adapters]
        strengths = [a.scale for a in adapters]
        active["transformer"] = [
            {
                "nickname": ",".join(nicknames),
                "nicknames": nicknames,
                "path": ",".join(a.path for a in adapters),
                "merged": True,
                "mode": "merged",
                "strength": strengths[0] if len(strengths) == 1 else None,
                "strengths": strengths,
            }
        ]
    return {"loaded_adapters": [{"nickname": n, "path": p} for n, p in loaded.items()], "active": active}
