"""vLLM-Omni's LoRA options on the core's merged adapters (`Helios.set_loras`).

    --lora-path P[:SCALE] [P[:SCALE] ...] / --lora-scale S
                                             the server's default set, merged at load: each adapter
                                             at its own SCALE, else S (1 unset); vLLM-Omni's CLI
                                             takes several paths with --lora-backend distill only
    request `lora` {name, path, scale}       that one adapter at `scale` (1 unset) for this request;
                                             a request without it runs with the default set

A request may name only a configured path (`helios_backends.front_door.configured_lora`): a
--lora-path value, or a path inside one that is a folder; anything else is refused with 400
naming `lora`, at the HTTP front door (vllm_plugin.http) and again in the engine's pre-process,
which also reads the adapter against the transformer's config (no weights), so a bad file is a
400 naming it before the request is queued. Errors name the adapter by the request's `name`:
vLLM-Omni blanks paths out of the messages it returns.
The engine's own LoRA manager would wrap the transformer's layers in PEFT modules, so the
pipeline declares its LoRA fused (`lora_is_fused`) and the worker leaves it alone.
"""

from __future__ import annotations

from typing import Any

from helios_backends.config import TransformerConfig
from helios_backends.errors import CheckpointError, RequestError
from helios_backends.front_door import configured_lora
from helios_backends.lora import check_adapter, parse_lora_spec

FIELD = "lora"


def startup_loras(lora_path: str | list[str] | None, lora_scale: float | None) -> list[tuple[str, float]]:
    """(path, scale) of the server's --lora-path values (`PATH[:SCALE]`, the core CLI's --lora
    spelling) at their own scale, else --lora-scale (1 unset)."""
    specs = [lora_path] if isinstance(lora_path, str) else list(lora_path or [])
    default = 1.0 if lora_scale is None else float(lora_scale)
    try:
        return [parse_lora_spec(spec, default) for spec in specs]
    except ValueError as exc:
        raise ValueError(f"--lora-path {exc}") from None


def request_loras(lora_request: Any, lora_scale: float, defaults: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The set a request runs with: its own configured adapter at its scale, else the server's default set."""
    if lora_request is None:
        return defaults
    path = configured_lora(lora_request.lora_path, [p for p, _ in defaults], FIELD)
    return [(path, float(lora_scale))]


def adapter_error(lora_request: Any, exc: CheckpointError) -> RequestError:
    """The request's `lora` refused, naming its adapter (the server's own set when it named none)."""
    name = "--lora-path" if lora_request is None else repr(lora_request.lora_name)
    return RequestError(FIELD, f"adapter {name}: {exc}")


def check_request_loras(lora_request: Any, loras: list[tuple[str, float]], config: TransformerConfig) -> None:
    """Read and check a request's own adapter before it is queued (the worker reads it again, cached)."""
    if lora_request is None:
        return
    for path, _ in loras:
        try:
            check_adapter(path, config)
        except CheckpointError as exc:
            raise adapter_error(lora_request, exc) from None
