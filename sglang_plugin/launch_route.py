"""`python -m sglang.launch_server --model-path <Helios folder>` serves Helios, as `sglang serve` does.

`sglang.launch_server` is SGLang's LLM entry point: it loads the `sglang.srt.plugins` entry points,
then parses its arguments with `prepare_server_args` and starts the LLM server, which does not know
a diffusers folder ("Unrecognized model"). `register` (that entry point) asks SGLang's hook
registry to wrap `prepare_server_args`: for a folder whose model_index.json names a Helios
pipeline, the same arguments go to `sglang serve`'s dispatcher, which picks the diffusion server
(and with it this plugin); every other model goes on to the LLM server untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

from .registration import PIPELINE_CLASS_NAMES

TARGET = "sglang.srt.server_args.prepare_server_args"


def model_path(argv: list[str]) -> str | None:
    """--model-path / --model from argv (either spelling, `--flag value` or `--flag=value`)."""
    for i, arg in enumerate(argv):
        for flag in ("--model-path", "--model"):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def is_helios_folder(path: str | None) -> bool:
    try:
        index = json.loads((Path(path) / "model_index.json").read_text())
    except (TypeError, OSError, ValueError):
        return False
    return str(index.get("_class_name", "")).lower() in PIPELINE_CLASS_NAMES


def route_helios_folder(prepare_server_args, argv: list[str]):
    """AROUND hook on prepare_server_args: a Helios folder is served by `sglang serve`, then the process exits."""
    if not is_helios_folder(model_path(list(argv))):
        return prepare_server_args(argv)
    from sglang.cli.serve import serve

    serve(None, list(argv))
    raise SystemExit(0)


def register() -> None:
    """The `sglang.srt.plugins` entry point (run in every SGLang process; registers one hook)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(TARGET, route_helios_folder, HookType.AROUND)
