"""LoRA adapters merged into the transformer's weights: no per-step cost, switchable without a reload.

Formats read (a .safetensors file, or a folder holding one):
- diffusers / PEFT, what `HeliosPipeline.save_lora_weights` writes and `load_lora_weights` reads:
  `transformer.blocks.0.attn1.to_q.lora_A.weight`, `...lora_B.weight` (the `transformer.` prefix
  optional), `lora_B.bias` for a bias delta, alpha and ranks from the file's `lora_adapter_metadata`
  header (PEFT's LoraConfig: lora_alpha, r, rank_pattern, alpha_pattern, use_rslora), else a
  per-module `.alpha` tensor, else alpha = rank.
- non-diffusers Wan keys (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `.alpha`,
  `.diff_b`) and musubi keys (`lora_unet_blocks_0_self_attn_q.lora_down.weight`), converted by
  diffusers' own converters so that they mean what diffusers makes of them.
- upstream Helios' training checkpoints: a folder with `pytorch_lora_weights.safetensors` (the
  diffusers format above, norm layers as whole tensors when trained) and `transformer_partial.pth`,
  whole tensors of the modules trained in full (patch_short/mid/long, history_key_scale). Whole
  tensors replace the base ones whatever the scale, as upstream's loader does; its GAN heads are
  training-only critic heads and are not read.

Merging: W = W_base + sum_i scale_i * (alpha_i / rank_i) * B_i @ A_i, computed in fp32 from the
kept base weights and cast to the weight's dtype. The base values of every tensor an adapter
touches are kept in host memory, so switching or clearing adapters restores them bit-exactly.
Weights are written in place (`copy_`): captured CUDA graphs and the layer-offload host buffers
keep pointing at the same storage, so a switch takes effect without recapture.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .config import TransformerConfig
from .errors import CheckpointError
from .transformer import FUSED_PARTS, HeliosTransformer, checkpoint_parameters

UPSTREAM_WEIGHTS = "pytorch_lora_weights.safetensors"
UPSTREAM_PARTIAL = "transformer_partial.pth"
METADATA_KEY = "lora_adapter_metadata"
# Upstream's discriminator heads, saved with the generator's trained modules; inference has none.
TRAINING_ONLY_PREFIXES = ("gan_heads.", "gan_final_head.")


@dataclass(frozen=True)
class LowRank:
    """One module's update: scaling * (up @ down) on its weight, scaling * bias on its bias."""

    down: torch.Tensor  # lora_A: (rank, in_features[, *kernel])
    up: torch.Tensor  # lora_B: (out_features, rank[, 1, 1, 1])
    bias: torch.Tensor | None
    scaling: float  # alpha / rank (alpha / sqrt(rank) with rsLoRA)

    def weight_delta(self) -> torch.Tensor:
        return (self.up.flatten(1).float() @ self.down.flatten(1).float()) * self.scaling


@dataclass(frozen=True)
class Adapter:
    """A read and validated adapter: low-rank updates by module name, whole tensors by parameter name."""

    name: str
    updates: dict[str, LowRank]
    replacements: dict[str, torch.Tensor]


def parse_lora_spec(spec: str, default: float = 1.0) -> tuple[str, float]:
    """`PATH[:SCALE]` -> (path, scale), SCALE `default` when not given; a path that itself
    contains ':' needs the scale given."""
    path, sep, scale = spec.rpartition(":")
    if not sep or "/" in scale:
        return spec, default
    try:
        value = float(scale)
    except ValueError:
        raise ValueError(f"{spec!r}: the scale after ':' must be a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{spec!r}: the scale must be finite")
    return path, value


def _read_safetensors(path: Path, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"LoRA {name}: cannot read {path}: {exc}") from None
    metadata = {}
    if METADATA_KEY in header:
        try:
            packed = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError:
            raise CheckpointError(f"LoRA {name}: {path.name}: header {METADATA_KEY} is not JSON") from None
        metadata = {k.removeprefix("transformer."): v for k, v in packed.items() if k.startswith("transformer.")}
    return tensors, metadata


def _adapter_files(path: Path, name: str) -> tuple[Path, Path | None]:
    """(the safetensors file, upstream's transformer_partial.pth or None)."""
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise CheckpointError(f"LoRA {name}: no such file or folder")
    partial = path / UPSTREAM_PARTIAL
    if (path / UPSTREAM_WEIGHTS).is_file():
        return path / UPSTREAM_WEIGHTS, partial if partial.is_file() else None
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        raise CheckpointError(f"LoRA {name}: the folder needs {UPSTREAM_WEIGHTS} or exactly one .safetensors file, found {len(files)}")
    return files[0], partial if partial.is_file() else None


def _to_diffusers_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Non-diffusers and musubi Wan keys through diffusers' converters; `transformer.` prefix dropped."""
    if any(k.startswith("diffusion_model.") for k in tensors):
        from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

        tensors = _convert_non_diffusers_wan_lora_to_diffusers(tensors)
    elif any(k.startswith("lora_unet_") for k in tensors):
        from diffusers.loaders.lora_conversion_utils import _convert_musubi_wan_lora_to_diffusers

        tensors = _convert_musubi_wan_lora_to_diffusers(tensors)
    out = {}
    for key, value in tensors.items():
        for prefix in ("transformer.", "base_model.model."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha patterns: the first key that matches the module name's tail."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _scaling(module: str, rank: int, alpha_tensor: torch.Tensor | None, metadata: dict) -> float:
    if metadata:
        rank = _pattern_value(metadata.get("rank_pattern") or {}, module, metadata.get("r", rank))
        alpha = _pattern_value(metadata.get("alpha_pattern") or {}, module, metadata.get("lora_alpha", rank))
        return alpha / math.sqrt(rank) if metadata.get("use_rslora") else alpha / rank
    if alpha_tensor is not None:
        return float(alpha_tensor) / rank
    return 1.0


def _parameter_shapes(transformer: nn.Module) -> tuple[dict[str, torch.Size], set[str]]:
    """(checkpoint parameter name -> shape, names of the Linear/Conv3d modules a LoRA may target).

    Names are the checkpoint's: a fused to_qkv / to_kv answers for its to_q, to_k, to_v parts.
    """
    shapes = {name: tensor.shape for name, tensor in checkpoint_parameters(transformer).items()}
    modules = set()
    for name, module in transformer.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            parent, _, leaf = name.rpartition(".")
            modules.update(f"{parent}.{part}" if parent else part for part in FUSED_PARTS.get(leaf, (leaf,)))
    return shapes, modules


def read_adapter(path: str | Path, transformer: nn.Module) -> Adapter:
    """Read one adapter and check every key against the transformer: one error naming adapter and key."""
    name = str(path)
    weights, partial = _adapter_files(Path(path), name)
    tensors, metadata = _read_safetensors(weights, name)
    if metadata.get("use_dora"):
        raise CheckpointError(f"LoRA {name}: DoRA adapters (use_dora) are not supported")
    tensors = _to_diffusers_keys(tensors)
    if partial is not None:
        try:
            extra = torch.load(partial, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt pickle raises anything
            raise CheckpointError(f"LoRA {name}: cannot read {partial}: {exc}") from None
        for key, value in extra.items():
            if not key.startswith(TRAINING_ONLY_PREFIXES):
                tensors[key] = value

    shapes, modules = _parameter_shapes(transformer)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    replacements = {}
    for key, value in tensors.items():
        match = re.fullmatch(r"(.+)\.(lora_A\.weight|lora_B\.weight|lora_B\.bias|alpha)", key)
        if match is not None:
            groups.setdefault(match.group(1), {})[match.group(2)] = value
            continue
        if key not in shapes:
            raise CheckpointError(f"LoRA {name}: {key}: not a LoRA key (lora_A/lora_B/alpha) nor a tensor of the transformer")
        if value.shape != shapes[key]:
            raise CheckpointError(f"LoRA {name}: {key}: shape {list(value.shape)}, the transformer's is {list(shapes[key])}")
        replacements[key] = value

    updates = {}
    for module, parts in groups.items():
        if module not in modules:
            raise CheckpointError(f"LoRA {name}: {module}.lora_A.weight: targets no Linear/Conv3d of the transformer")
        for part in ("lora_A.weight", "lora_B.weight"):
            if part not in parts:
                raise CheckpointError(f"LoRA {name}: {module}.{part}: missing (its pair is present)")
        down, up, bias = parts["lora_A.weight"], parts["lora_B.weight"], parts.get("lora_B.bias")
        weight_shape = shapes[f"{module}.weight"]
        bias_len = shapes[f"{module}.bias"][0] if f"{module}.bias" in shapes else None
        rank = down.shape[0]
        kernel = tuple(weight_shape[2:])
        if tuple(down.shape) != (rank, weight_shape[1], *kernel):
            raise CheckpointError(f"LoRA {name}: {module}.lora_A.weight: shape {list(down.shape)}, needs [rank, {weight_shape[1]}{''.join(f', {k}' for k in kernel)}]")
        if tuple(up.shape) != (weight_shape[0], rank, *(1,) * len(kernel)):
            raise CheckpointError(f"LoRA {name}: {module}.lora_B.weight: shape {list(up.shape)}, needs [{weight_shape[0]}, {rank}{', 1' * len(kernel)}] (rank {rank} from lora_A)")
        if bias is not None and (bias_len is None or tuple(bias.shape) != (bias_len,)):
            raise CheckpointError(f"LoRA {name}: {module}.lora_B.bias: shape {list(bias.shape)}, the module's bias is {bias_len}")
        scaling = _scaling(module, rank, parts.get("alpha"), metadata)
        updates[module] = LowRank(down.float(), up.float(), None if bias is None else bias.float(), scaling)
    if not updates and not replacements:
        raise CheckpointError(f"LoRA {name}: no LoRA tensors in {weights.name}")
    return Adapter(name, updates, replacements)


def check_adapter(path: str | Path, config: TransformerConfig) -> None:
    """Read and check one adapter against a transformer config, no weights needed: a server checks
    a request's adapter this way before queueing it. CheckpointError names adapter and key."""
    with torch.device("meta"):
        transformer = HeliosTransformer(config)
    read_adapter(path, transformer)


class LoraSet:
    """The adapters merged into one transformer; `apply` switches them, restoring untouched weights."""

    def __init__(self, transformer: nn.Module):
        self.transformer = transformer
        self.active: tuple[tuple[str, float], ...] = ()
        self._base: dict[str, torch.Tensor] = {}  # unfused parameter name -> its base value, on the host
        self._adapters: dict[str, Adapter] = {}  # read adapters by path, so a switch back reads no file

    def apply(self, adapters: Sequence[tuple[str | Path, float]]) -> None:
        """Merge exactly these (path, scale) adapters; an empty list restores the base weights.

        Every adapter is read and checked before any weight changes, so a bad one leaves the
        merged set as it was.
        """
        wanted = [(str(path), float(scale)) for path, scale in adapters]
        if tuple(wanted) == self.active:  # servers ask for their set before every request
            return
        loaded = {path: self._adapters.get(path) or read_adapter(path, self.transformer) for path, _ in wanted}
        targets: dict[str, torch.Tensor | None] = {}  # parameter -> replacement (or None: base)
        for path, _ in wanted:
            for key, value in loaded[path].replacements.items():
                if targets.get(key) is not None:
                    raise CheckpointError(f"LoRA {path}: {key}: another adapter of this set replaces it too")
                targets[key] = value
            for module, update in loaded[path].updates.items():
                targets.setdefault(f"{module}.weight", None)
                if update.bias is not None:
                    targets.setdefault(f"{module}.bias", None)
        self._adapters.update(loaded)
        held = checkpoint_parameters(self.transformer)
        with torch.no_grad():
            for param in sorted(set(self._base) - set(targets)):
                held[param].copy_(self._base.pop(param))
            for param, replacement in targets.items():
                tensor = held[param]
                if param not in self._base:
                    self._base[param] = tensor.detach().to("cpu", copy=True)
                value = (self._base[param] if replacement is None else replacement).to(tensor.device, torch.float32, copy=True)
                module, _, attr = param.rpartition(".")
                for path, scale in wanted:
                    update = loaded[path].updates.get(module)
                    if update is None:
                        continue
                    if attr == "weight":
                        value += scale * update.weight_delta().view(value.shape).to(value.device)
                    elif update.bias is not None:
                        value += (scale * update.scaling) * update.bias.to(value.device)
                tensor.copy_(value.to(tensor.dtype))
        self.active = tuple(wanted)
