"""Loading a diffusers-layout Helios folder.

The transformer's safetensors (one file, or shards with their index json) are memory-mapped and
each tensor is cast and placed on the target device as it is read, into a model built on the
meta device: at no time do two full copies of the weights exist.

`plan_for_folder` validates a request against a folder's json files alone, for engines that
check requests where no weights are loaded (an HTTP front end, a queue) or before loading them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open

from .config import PipelineConfig, SchedulerConfig, TransformerConfig
from .backends import device_backend, device_type_of
from .errors import CheckpointError
from .ops import default_ops
from .request import GenerationRequest, Plan, plan
from .transformer import FP32_MODULES, HeliosTransformer

SUPPORTED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
CONFIG_FILES = ("model_index.json", "scheduler/scheduler_config.json", "transformer/config.json")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in SUPPORTED_DTYPES.values():
            raise CheckpointError(f"unsupported dtype {dtype} (accepted: {list(SUPPORTED_DTYPES)})")
        return dtype
    if dtype not in SUPPORTED_DTYPES:
        raise CheckpointError(f"unsupported dtype {dtype!r} (accepted: {list(SUPPORTED_DTYPES)})")
    return SUPPORTED_DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device that exists on this machine, or a clear error."""
    kind = device_type_of(device)
    backend = device_backend(kind) if kind not in ("cpu", "cuda") else None
    if backend is not None and backend.device is not None:
        return backend.device(str(device))
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CheckpointError(f"unknown device {device!r} (accepted: cpu, cuda[:N], npu[:N])") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CheckpointError(f"device {device!r}: no CUDA GPU is available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CheckpointError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise CheckpointError(f"unsupported device {device!r} (accepted: cpu, cuda[:N], npu[:N])")


def check_folder(folder: Path) -> PipelineConfig:
    """The pipeline config of a Helios folder, after checking that every component is present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}")
    config = PipelineConfig.from_json(folder / "model_index.json")
    for name in COMPONENTS:
        if not (folder / name).is_dir():
            raise CheckpointError(f"{folder}: missing component folder {name}/")
    return config


def weight_files(directory: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, from the shard index or the single weights file."""
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
        files = {name: directory / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise CheckpointError(f"{index} names a missing shard: {shard.name}")
        return files
    single = directory / WEIGHTS_NAME
    if not single.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME}")
    with safe_open(single, framework="pt") as f:
        return {name: single for name in f.keys()}


def _target_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if any(part in name.split(".") for part in FP32_MODULES) else dtype


def load_transformer(folder: Path, dtype: torch.dtype, device: torch.device, ops=None) -> HeliosTransformer:
    directory = Path(folder) / "transformer"
    config = TransformerConfig.from_json(directory / "config.json")
    with torch.device("meta"):
        model = HeliosTransformer(config, ops or default_ops(device))
    expected = dict(model.named_parameters())
    files = weight_files(directory)

    missing = sorted(set(expected) - set(files))
    if missing:
        raise CheckpointError(f"{directory}: missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    unexpected = sorted(set(files) - set(expected))
    if unexpected:
        raise CheckpointError(f"{directory}: unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")

    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in names:
                param = expected[name]
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != tuple(param.shape):
                    raise CheckpointError(
                        f"{path.name}: tensor {name} has shape {list(tensor.shape)}, the config needs {list(param.shape)}"
                    )
                value = tensor.to(device=device, dtype=_target_dtype(name, dtype))
                module_name, _, attr = name.rpartition(".")
                module = model.get_submodule(module_name)
                module._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)
                del tensor
    if device.type == "cuda":
        model.fuse_projections()  # fewer, larger GEMMs; CPU keeps the checkpoint's own layout
    return model.eval()


def load_scheduler_config(folder: Path) -> SchedulerConfig:
    return SchedulerConfig.from_json(Path(folder) / "scheduler" / "scheduler_config.json")


@dataclass(frozen=True)
class FolderConfigs:
    """The json configs of a Helios folder: everything a request is validated against."""

    pipeline: PipelineConfig
    scheduler: SchedulerConfig
    transformer: TransformerConfig


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=8)
def _read_configs(folder: Path, stamps: tuple) -> FolderConfigs:
    pipeline, scheduler = check_folder(folder), load_scheduler_config(folder)
    return FolderConfigs(pipeline, scheduler, TransformerConfig.from_json(folder / "transformer" / "config.json"))


def read_configs(folder: str | Path) -> FolderConfigs:
    """A folder's configs, read once and kept while its json files are unchanged: engines ask per request."""
    folder = Path(folder).resolve()
    return _read_configs(folder, tuple(_stamp(folder / name) for name in CONFIG_FILES))


def plan_for_folder(folder: str | Path, request: GenerationRequest, sp_degree: int = 1) -> Plan:
    """Validate a request against a checkpoint folder without loading any weights.

    sp_degree: the serving Ulysses x Ring degree, so that sizes its ranks cannot split are
    refused before the request is queued (1: no check).
    """
    configs = read_configs(folder)
    return plan(request, configs.pipeline, configs.scheduler, configs.transformer.patch_size, sp_degree)
