"""Typed configs read from a Helios checkpoint's own json files.

A released Helios folder is a diffusers pipeline folder; every number the core needs (model
shape, scheduler kind and stage layout, the variant flags in model_index.json) comes from those
files, so a checkpoint is described by the checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import CheckpointError

PIPELINE_CLASSES = ("HeliosPipeline", "HeliosPyramidPipeline")
Variant = Literal["base", "mid", "distilled"]
LATENT_STRIDE = 8  # pixels per latent cell along height and width (the Wan VAE)
MAX_SIZE = 4096  # pixels, height and width: the largest frame a request may ask for


def size_multiple(patch_size: tuple[int, int, int], stages: int) -> int:
    """What height and width must divide by: the pyramid halves the latent grid (stages - 1) times, each level patchified."""
    return LATENT_STRIDE * patch_size[1] * 2 ** (stages - 1)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid json: {exc}") from None


def _from_dict(cls, data: dict[str, Any], source: Path, ignore: tuple[str, ...] = ()):
    """Build a dataclass from json, refusing unknown keys so a misread config never passes silently."""
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in data.items() if not k.startswith("_") and k not in ignore}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown config keys {unknown}")
    for f in dataclasses.fields(cls):
        if f.name in values and isinstance(values[f.name], list) and f.type.startswith("tuple"):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


@dataclass(frozen=True)
class TransformerConfig:
    """transformer/config.json; defaults are the 14B model's."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    added_kv_proj_dim: int | None = None
    rope_dim: tuple[int, int, int] = (44, 42, 42)
    rope_theta: float = 10000.0
    guidance_cross_attn: bool = True
    zero_history_timestep: bool = True
    has_multi_term_memory_patch: bool = True
    is_amplify_history: bool = False
    history_scale_mode: str = "per_head"

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def __post_init__(self):
        if sum(self.rope_dim) != self.attention_head_dim or any(d % 2 for d in self.rope_dim):
            raise CheckpointError(
                f"transformer config: rope_dim {list(self.rope_dim)} must be even numbers summing to "
                f"attention_head_dim {self.attention_head_dim}"
            )
        if self.qk_norm != "rms_norm_across_heads":
            raise CheckpointError(f"transformer config: qk_norm {self.qk_norm!r} is not supported")
        if self.added_kv_proj_dim is not None:
            raise CheckpointError("transformer config: added_kv_proj_dim (image cross-attention) is not a Helios feature")
        if self.history_scale_mode not in ("per_head", "scalar"):
            raise CheckpointError(f"transformer config: history_scale_mode {self.history_scale_mode!r} is not per_head or scalar")
        if not self.has_multi_term_memory_patch:
            raise CheckpointError("transformer config: has_multi_term_memory_patch false is not supported")

    @classmethod
    def from_json(cls, path: Path) -> "TransformerConfig":
        return _from_dict(cls, read_json(path), path)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class VAEConfig:
    """vae/config.json, in diffusers' AutoencoderKLWan field names (`temperal` is theirs);
    defaults are the Wan-2.1 VAE's. Only what the Helios checkpoints use is accepted: the Wan-2.2
    variants (is_residual, patch_size) and encoder attention (attn_scales) are refused."""

    base_dim: int = 96
    decoder_base_dim: int | None = None  # None: base_dim
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0  # training only
    latents_mean: tuple[float, ...] = (
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    )
    latents_std: tuple[float, ...] = (
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    )
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int = 4
    scale_factor_spatial: int = 8

    def __post_init__(self):
        if self.is_residual:
            raise CheckpointError("vae config: is_residual true (the Wan-2.2 VAE) is not supported")
        if self.patch_size is not None:
            raise CheckpointError(f"vae config: patch_size {self.patch_size} (the Wan-2.2 VAE) is not supported")
        if self.attn_scales:
            raise CheckpointError(f"vae config: attn_scales {list(self.attn_scales)} is not supported (Wan 2.1 has none)")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise CheckpointError(f"vae config: temperal_downsample needs {len(self.dim_mult) - 1} entries (one per "
                                  f"downsampling of dim_mult), got {len(self.temperal_downsample)}")
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise CheckpointError(f"vae config: {name} has {len(getattr(self, name))} entries, z_dim is {self.z_dim}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "vae config") -> "VAEConfig":
        return _from_dict(cls, data, source)

    @classmethod
    def from_json(cls, path: Path) -> "VAEConfig":
        return cls.from_dict(read_json(path), path)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class TextEncoderConfig:
    """text_encoder/config.json (transformers' UMT5Config field names); defaults are UMT5-XXL's.

    Only the fields the encoder's math reads are taken: the file also carries transformers'
    generic keys (dtype, versions, token ids, decoder sizes), which vary between its releases.
    What the encoder here does not compute (another model type or activation, a decoder) is
    refused, naming the field; a checkpoint holding a decoder's tensors too is refused by the
    loader's strict key match (`architectures` is not read: UMT5EncoderModel reads whole UMT5
    checkpoints)."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "text_encoder config") -> "TextEncoderConfig":
        required = {"model_type": "umt5", "feed_forward_proj": "gated-gelu", "is_decoder": False}
        for name, accepted in required.items():
            if data.get(name, accepted) != accepted:
                raise CheckpointError(f"{source}: {name} {data[name]!r} is not supported (accepted: {accepted!r})")
        if data.get("dense_act_fn", "gelu_new") != "gelu_new":  # transformers derives it from feed_forward_proj
            raise CheckpointError(f"{source}: dense_act_fn {data['dense_act_fn']!r} is not supported (accepted: 'gelu_new')")
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    @classmethod
    def from_json(cls, path: Path) -> "TextEncoderConfig":
        return cls.from_dict(read_json(path), path)


SchedulerKind = Literal["unipc", "euler", "dmd"]


@dataclass(frozen=True)
class SchedulerConfig:
    """scheduler/scheduler_config.json of HeliosScheduler or HeliosDMDScheduler."""

    kind: SchedulerKind = "unipc"
    num_train_timesteps: int = 1000
    shift: float = 1.0
    stages: int = 3
    stage_range: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)
    gamma: float = 1 / 3
    use_dynamic_shifting: bool = False
    time_shift_type: Literal["exponential", "linear"] = "exponential"
    solver_order: int = 2
    solver_type: Literal["bh1", "bh2"] = "bh2"
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15

    def __post_init__(self):
        if self.kind not in ("unipc", "euler", "dmd"):
            raise CheckpointError(f"scheduler config: scheduler_type {self.kind!r} is not unipc, euler or dmd")
        if len(self.stage_range) < self.stages + 1:
            raise CheckpointError(
                f"scheduler config: stage_range has {len(self.stage_range)} entries, stages={self.stages} needs {self.stages + 1}"
            )
        if self.time_shift_type not in ("exponential", "linear"):
            raise CheckpointError(f"scheduler config: time_shift_type {self.time_shift_type!r} is not exponential or linear")
        if self.use_dynamic_shifting and self.shift != 1.0:
            raise CheckpointError("scheduler config: use_dynamic_shifting needs shift 1.0")

    @classmethod
    def from_json(cls, path: Path) -> "SchedulerConfig":
        data = read_json(path)
        class_name = data.get("_class_name", "HeliosScheduler")
        if class_name == "HeliosDMDScheduler":
            kind = "dmd"
        elif class_name == "HeliosScheduler":
            kind = data.get("scheduler_type", "unipc")
        else:
            raise CheckpointError(f"{path}: unknown scheduler class {class_name!r} (HeliosScheduler or HeliosDMDScheduler)")
        unsupported = {
            "prediction_type": ("flow_prediction",),
            "predict_x0": (True,),
            "thresholding": (False,),
            "use_flow_sigmas": (True,),
            "solver_p": (None,),
        }
        for key, accepted in unsupported.items():
            if key in data and data[key] not in accepted:
                raise CheckpointError(f"{path}: {key}={data[key]!r} is not supported (accepted: {list(accepted)})")
        return _from_dict(cls, {**data, "kind": kind}, path, ignore=(*unsupported, "scheduler_type"))


@dataclass(frozen=True)
class SamplingDefaults:
    """Upstream's recommended settings for one variant; a request's unset fields take these."""

    height: int = 384
    width: int = 640
    num_frames: int = 99
    fps: int = 24
    num_inference_steps: int = 50
    pyramid_steps: tuple[int, ...] | None = None
    guidance_scale: float = 5.0
    use_zero_init: bool = False
    zero_steps: int = 1
    is_amplify_first_chunk: bool = False
    max_sequence_length: int = 512
    negative_prompt: str = ""


NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)

# Upstream's scripts/inference/*.sh: Base 50 steps CFG 5; Mid pyramid [20,20,20] with CFG-Zero*
# and zero-init; Distilled DMD [2,2,2], no CFG, amplified first chunk, 240 frames.
VARIANT_DEFAULTS: dict[str, SamplingDefaults] = {
    "base": SamplingDefaults(num_inference_steps=50, guidance_scale=5.0, negative_prompt=NEGATIVE_PROMPT),
    "mid": SamplingDefaults(
        pyramid_steps=(20, 20, 20), guidance_scale=5.0, use_zero_init=True, zero_steps=1, negative_prompt=NEGATIVE_PROMPT
    ),
    "distilled": SamplingDefaults(
        num_frames=240, pyramid_steps=(2, 2, 2), guidance_scale=1.0, is_amplify_first_chunk=True, negative_prompt=NEGATIVE_PROMPT
    ),
}


def uses_cfg_by_default(variant: str) -> bool:
    """Whether a variant's recommended settings run classifier-free guidance (Distilled's do not)."""
    return VARIANT_DEFAULTS[variant].guidance_scale > 1.0


@dataclass(frozen=True)
class PipelineConfig:
    """model_index.json: the pipeline class and the variant flags."""

    class_name: str
    components: dict[str, tuple[str, str]] = field(default_factory=dict)
    is_cfg_zero_star: bool = False
    is_distilled: bool = False

    @property
    def is_pyramid(self) -> bool:
        return self.class_name == "HeliosPyramidPipeline"

    @property
    def variant(self) -> Variant:
        if not self.is_pyramid:
            return "base"
        return "distilled" if self.is_distilled else "mid"

    @classmethod
    def from_json(cls, path: Path) -> "PipelineConfig":
        data = read_json(path)
        class_name = data.get("_class_name")
        if class_name not in PIPELINE_CLASSES:
            raise CheckpointError(f"{path}: unknown pipeline class {class_name!r} (accepted: {list(PIPELINE_CLASSES)})")
        components = {
            k: tuple(v) for k, v in data.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2
        }
        return cls(
            class_name=class_name,
            components=components,
            is_cfg_zero_star=bool(data.get("is_cfg_zero_star", False)),
            is_distilled=bool(data.get("is_distilled", False)),
        )
