"""Loading a diffusers-layout Helios folder.

The transformer, the VAE and the text encoder are built on the meta device, their parameters are
then given their places (the device; or, under layer offload, the transformer's pinned host
buffers and device-resident blocks) and each checkpoint tensor is copied into its place, cast on
the way, on several threads, with no host copy of the whole weights: a GPU's tensors are read
from the file in slices into each thread's small pinned buffer and copied from there (the DMA
engine reads pinned memory directly, and no page of the file is mapped into the process), host
tensors straight from the memory-mapped file.

`plan_for_folder` validates a request against a folder's json files alone, for engines that
check requests where no weights are loaded (an HTTP front end, a queue) or before loading them.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open

from .config import PipelineConfig, SchedulerConfig, TextEncoderConfig, TransformerConfig, VAEConfig
from .backends import device_backend, device_type_of
from .errors import CheckpointError
from .ops import default_ops
from .request import GenerationRequest, Plan, plan
from .transformer import FP32_MODULES, HeliosTransformer, checkpoint_parameters
from .umt5 import UMT5Encoder
from .wan_vae import WanAutoencoder

SUPPORTED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
CONFIG_FILES = ("model_index.json", "scheduler/scheduler_config.json", "transformer/config.json")
TEXT_WEIGHTS_NAME = "model.safetensors"  # transformers' names, in text_encoder/
TEXT_INDEX_NAME = "model.safetensors.index.json"
TOKEN_TABLE_NAMES = ("shared.weight", "encoder.embed_tokens.weight")
SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
STAGING_BYTES = 32 << 20  # each loading thread's pinned buffer, for a GPU's tensors


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in SUPPORTED_DTYPES.values():
            raise CheckpointError(f"unsupported dtype {dtype} (accepted: {list(SUPPORTED_DTYPES)})")
        return dtype
    if dtype not in SUPPORTED_DTYPES:
        raise CheckpointError(f"unsupported dtype {dtype!r} (accepted: {list(SUPPORTED_DTYPES)})")
    return SUPPORTED_DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device that exists on this machine, indexed ("cuda" is the current one), or a clear error."""
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
        # Indexed: the current device (an engine's rank sets it) is per thread, and
        # from_pretrained loads the text encoder and the VAE on a second thread.
        return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
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


def weight_files(directory: Path, weights_name: str = WEIGHTS_NAME, index_name: str = INDEX_NAME) -> dict[str, Path]:
    """tensor name -> safetensors file, from the shard index or the single weights file (diffusers'
    file names by default; transformers' for the text encoder)."""
    index = directory / index_name
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
    single = directory / weights_name
    if not single.is_file():
        raise CheckpointError(f"{directory}: no {weights_name} or {index_name}")
    with safe_open(single, framework="pt") as f:
        return {name: single for name in f.keys()}


def _target_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if any(part in name.split(".") for part in FP32_MODULES) else dtype


class _MappedWeights:
    """One safetensors file mapped into memory: each tensor is a view of the page cache, so
    copying it to its place is the only copy (safetensors' own reader makes a host copy first)."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115 - close() closes it, after the threads' reads
        self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_COPY)  # private: reads share the page cache
        try:
            size = int.from_bytes(self.map[:8], "little")
            header = json.loads(self.map[8 : 8 + size])
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: not a safetensors file") from None
        self.start = 8 + size
        self.entries = {name: entry for name, entry in header.items() if name != "__metadata__"}

    def shape(self, name: str) -> list[int]:
        if name not in self.entries:
            raise CheckpointError(f"{self.path.name}: no tensor {name}, which the index places in it")
        return self.entries[name]["shape"]

    def dtype(self, name: str) -> torch.dtype:
        dtype = SAFETENSORS_DTYPES.get(self.entries[name]["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.path.name}: tensor {name} has dtype {self.entries[name]['dtype']} (accepted: {list(SAFETENSORS_DTYPES)})")
        return dtype

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor as a view of the mapped file."""
        entry, dtype = self.entries[name], self.dtype(name)
        begin, end = entry["data_offsets"]
        if begin == end:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(self.map, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=self.start + begin).view(entry["shape"])

    def slices(self, name: str, buffer: torch.Tensor):
        """(first element, the next elements read into `buffer`) for each slice of the flattened
        tensor that fits the uint8 host buffer: read with pread, so nothing is mapped. Each slice
        must be used before the next is read into the same buffer."""
        dtype = self.dtype(name)
        begin, end = self.entries[name]["data_offsets"]
        step = buffer.numel() // dtype.itemsize
        view = memoryview(buffer.numpy())
        for first in range(0, (end - begin) // dtype.itemsize, step):
            nbytes = min(step * dtype.itemsize, end - begin - first * dtype.itemsize)
            offset, done = self.start + begin + first * dtype.itemsize, 0
            while done < nbytes:
                read = os.preadv(self.file.fileno(), [view[done:nbytes]], offset + done)
                if read == 0:
                    raise CheckpointError(f"{self.path.name}: tensor {name} ends past the end of the file")
                done += read
            yield first, buffer[:nbytes].view(dtype)

    def close(self) -> None:
        """Close the file the slices read (the map goes with the last view of it)."""
        self.file.close()


def build_transformer(folder: Path, dtype: torch.dtype, ops, fuse: bool) -> HeliosTransformer:
    """The folder's transformer on the meta device, each parameter in the dtype it will load in
    (FP32_MODULES stay float32), q/k/v fused when `fuse`. Give its parameters places (to_empty,
    LayerOffload), then fill_weights."""
    return build_model(TransformerConfig.from_json(Path(folder) / "transformer" / "config.json"), dtype, ops, fuse)


def build_model(config: TransformerConfig, dtype: torch.dtype, ops, fuse: bool) -> HeliosTransformer:
    """`build_transformer` from a config."""
    with torch.device("meta"):
        model = HeliosTransformer(config, ops)
        for name, param in list(model.named_parameters()):
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            module._parameters[attr] = torch.nn.Parameter(torch.empty(param.shape, dtype=_target_dtype(name, dtype)), requires_grad=False)
        if fuse:
            model.fuse_projections()
    return model.eval()


def fill_weights(model: HeliosTransformer, folder: Path) -> None:
    """Copy each of the folder's transformer tensors into the model's parameter of that name,
    wherever it lives, casting on the way; names and shapes are checked before anything is read."""
    _copy_tensors(checkpoint_parameters(model), Path(folder) / "transformer")


def _copy_tensors(targets: dict[str, torch.Tensor], directory: Path, files: dict[str, Path] | None = None) -> None:
    """Each tensor of the checkpoint in `directory` (or of `files`, name -> safetensors file) into
    the target of its name; the names must match exactly and the shapes agree."""
    files = weight_files(directory) if files is None else files
    missing = sorted(set(targets) - set(files))
    if missing:
        raise CheckpointError(f"{directory}: missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    unexpected = sorted(set(files) - set(targets))
    if unexpected:
        raise CheckpointError(f"{directory}: unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    mapped = {path: _MappedWeights(path) for path in sorted(set(files.values()))}
    for name, path in files.items():
        shape = mapped[path].shape(name)
        if tuple(shape) != tuple(targets[name].shape):
            raise CheckpointError(f"{path.name}: tensor {name} has shape {list(shape)}, the config needs {list(targets[name].shape)}")

    staging = threading.local()

    def copy(name: str) -> None:
        target, weights = targets[name], mapped[files[name]]
        with torch.no_grad():  # grad mode is per thread
            if target.device.type != "cuda":
                target.copy_(weights.tensor(name))
                return
            if getattr(staging, "device", None) != target.device:
                staging.device, staging.stream = target.device, torch.cuda.Stream(target.device)
                staging.buffer = torch.empty(STAGING_BYTES, dtype=torch.uint8, pin_memory=True)
            flat = target.view(-1)
            for first, part in weights.slices(name, staging.buffer):
                with torch.cuda.stream(staging.stream):
                    flat[first : first + part.numel()].copy_(part, non_blocking=True)
                staging.stream.synchronize()  # before the buffer takes the next slice

    try:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(copy, sorted(files)))  # reads and copies release the GIL: they overlap
    finally:
        for weights in mapped.values():
            weights.close()


def load_transformer(folder: Path, dtype: torch.dtype, device: torch.device, ops=None) -> HeliosTransformer:
    """The folder's transformer on `device` (q/k/v fused on CUDA; the CPU keeps the checkpoint's layout)."""
    model = build_transformer(folder, dtype, ops or default_ops(device), fuse=device.type == "cuda")
    model.to_empty(device=device)
    fill_weights(model, folder)
    return model


def load_vae(folder: Path, dtype: torch.dtype, device: torch.device) -> WanAutoencoder:
    """The folder's Wan VAE in `dtype` on `device`, built on the meta device and filled like the transformer."""
    config = VAEConfig.from_json(Path(folder) / "vae" / "config.json")
    with torch.device("meta"):
        model = WanAutoencoder(config)
    model = model.to(dtype).to_empty(device=device).eval().requires_grad_(False)
    _copy_tensors(dict(model.named_parameters()), Path(folder) / "vae")
    return model


def load_text_encoder(folder: Path, dtype: torch.dtype, device: torch.device) -> UMT5Encoder:
    """The folder's UMT5 encoder in `dtype` (see UMT5Encoder.cast) on `device`, built on the meta
    device and filled like the transformer. The token table may be stored as `shared.weight`,
    `encoder.embed_tokens.weight` or both (transformers writes both when the config does not tie
    them): it is one table here, read once."""
    directory = Path(folder) / "text_encoder"
    config = TextEncoderConfig.from_json(directory / "config.json")
    with torch.device("meta"):
        model = UMT5Encoder(config)
    model = model.cast(dtype).to_empty(device=device).eval().requires_grad_(False)
    files = weight_files(directory, TEXT_WEIGHTS_NAME, TEXT_INDEX_NAME)
    tables = [name for name in TOKEN_TABLE_NAMES if name in files]
    if not tables:
        raise CheckpointError(f"{directory}: missing tensors {list(TOKEN_TABLE_NAMES)} (the token table, under either name)")
    if len(tables) == 2:
        _check_same_table(files, tables)
    targets = {name: p for name, p in model.named_parameters() if name not in TOKEN_TABLE_NAMES}
    targets[tables[0]] = model.shared.weight
    _copy_tensors(targets, directory, {name: path for name, path in files.items() if name not in tables[1:]})  # the table once
    return model


def _check_same_table(files: dict[str, Path], names: list[str]) -> None:
    """Refuse two different token tables (a checkpoint whose encoder and `shared` tables differ,
    which this single-table encoder cannot run), comparing a spread of rows rather than reading
    both whole tables (2 GB each in UMT5-XXL)."""
    first, second = (_MappedWeights(files[name]) for name in names)
    try:
        shapes = first.shape(names[0]), second.shape(names[1])
        if shapes[0] != shapes[1]:
            raise CheckpointError(f"{names[0]} has shape {shapes[0]}, {names[1]} {shapes[1]}: they must be the same token table")
        rows = torch.linspace(0, shapes[0][0] - 1, 64).long().unique()
        if not torch.equal(first.tensor(names[0])[rows], second.tensor(names[1])[rows]):
            raise CheckpointError(f"{names[0]} and {names[1]} differ: two token tables are not supported (they must be one, tied)")
    finally:
        first.close()
        second.close()


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
