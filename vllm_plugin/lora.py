"""vLLM-Omni's LoRA options on the core's merged adapters (`Helios.set_loras`).

    --lora-path P [P ...] / --lora-scale S   the server's default set, merged at load (scale S, 1 unset)
    request `lora` {name, path, scale}       that one adapter at `scale` (1 unset) for this request;
                                             a request without it runs with the default set

A request may name only a configured path (`helios_backends.front_door.configured_lora`): a
--lora-path value, or a path inside one that is a folder; anything else is refused with 400
naming `lora`, at the HTTP front door (vllm_plugin.http) and again in the engine's pre-process.
The engine's own LoRA manager would wrap the transformer's layers in PEFT modules, so the
pipeline declares its LoRA fused (`lora_is_fused`) and the worker leaves it alone.
"""

from __future__ import annotations

from typing import Any

from helios_backends.front_door import configured_lora

FIELD = "lora"


def startup_loras(lora_path: str | list[str] | None, lora_scale: float | list[float] | None) -> list[tuple[str, float]]:
    """(path, scale) of the server's --lora-path / --lora-scale (one scale for all, or one per path)."""
    paths = [lora_path] if isinstance(lora_path, str) else list(lora_path or [])
    scales = lora_scale if isinstance(lora_scale, list) else [1.0 if lora_scale is None else lora_scale] * len(paths)
    if len(scales) != len(paths):
        raise ValueError(f"--lora-scale: {len(scales)} scales for {len(paths)} --lora-path values; give one, or one per path")
    return [(path, float(scale)) for path, scale in zip(paths, scales)]


def request_loras(lora_request: Any, lora_scale: float, defaults: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The set a request runs with: its own configured adapter at its scale, else the server's default set."""
    if lora_request is None:
        return defaults
    path = configured_lora(lora_request.lora_path, [p for p, _ in defaults], FIELD)
    return [(path, float(lora_scale))]
