"""A tiny random-weight Helios pipeline folder in exactly the released checkpoints' layout.

It lets every command and test run offline on a CPU: same files, same keys, same json fields as
BestWishYsh/Helios-{Base,Mid,Distilled}, with a 2-layer 32-wide transformer, an 8-wide Wan VAE,
a 2-layer UMT5 and a small Unigram tokenizer. Its videos are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import TransformerConfig, VAEConfig
from .loading import INDEX_NAME, WEIGHTS_NAME
from .transformer import HeliosTransformer
from .wan_vae import WanAutoencoder

TINY_TRANSFORMER = TransformerConfig(
    num_attention_heads=2,
    attention_head_dim=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_dim=(4, 6, 6),
)
# vae/config.json's fields (diffusers' AutoencoderKLWan arguments; the tests build diffusers' VAE from them)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_TEXT = dict(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8)

SCHEDULERS = {
    "base": {
        "_class_name": "HeliosScheduler",
        "scheduler_type": "unipc",
        "stages": 1,
        "stage_range": [0, 1],
        "use_dynamic_shifting": True,
        "time_shift_type": "exponential",
    },
    "mid": {
        "_class_name": "HeliosScheduler",
        "scheduler_type": "unipc",
        "stages": 3,
        "stage_range": [0, 1 / 3, 2 / 3, 1],
        "use_dynamic_shifting": True,
        "time_shift_type": "exponential",
    },
    "distilled": {
        "_class_name": "HeliosDMDScheduler",
        "stages": 3,
        "stage_range": [0, 1 / 3, 2 / 3, 1],
        "use_dynamic_shifting": True,
        "time_shift_type": "linear",
    },
}
COMMON_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0, "gamma": 1 / 3}


def model_index(variant: str) -> dict:
    pyramid = variant != "base"
    index = {
        "_class_name": "HeliosPyramidPipeline" if pyramid else "HeliosPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", SCHEDULERS[variant]["_class_name"]],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "HeliosTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    if pyramid:
        index.update(is_cfg_zero_star=variant == "mid", is_distilled=variant == "distilled")
    return index


def scheduler_config(variant: str) -> dict:
    return {**SCHEDULERS[variant], **COMMON_SCHEDULER}


def build_tokenizer(vocab_size: int):
    """A T5TokenizerFast over a small Unigram vocabulary of letters and common pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import T5TokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    pieces += list("0123456789.,!?'-") + ["\u2581" + p for p in pieces]
    pieces = pieces[: vocab_size - len(specials)]
    vocab = [(s, 0.0) for s in specials] + [(p, -float(len(p))) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def save_transformer(model: HeliosTransformer, directory: Path, shards: int = 2) -> None:
    """Sharded safetensors with the diffusers index json, as released checkpoints store it."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = list(state)
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        fname = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
        total += sum(state[k].numel() * state[k].element_size() for k in part)
    (directory / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = {"_class_name": "HeliosTransformer3DModel", "_diffusers_version": "0.42.1", **model.config.to_dict()}
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def save_vae(model: WanAutoencoder, directory: Path) -> None:
    """The files diffusers' AutoencoderKLWan.save_pretrained writes: one safetensors file and its config."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    config = {"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.42.1", **model.config.to_dict()}
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def make_tiny(
    folder: str | Path, variant: str = "distilled", seed: int = 0, transformer: TransformerConfig = TINY_TRANSFORMER
) -> Path:
    """Write a tiny random Helios-{variant} folder and return its path."""
    from transformers import UMT5Config, UMT5EncoderModel

    if variant not in SCHEDULERS:
        raise ValueError(f"variant must be one of {sorted(SCHEDULERS)}, got {variant!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = HeliosTransformer(transformer)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    save_transformer(model, folder / "transformer")
    save_vae(WanAutoencoder(VAEConfig.from_dict(TINY_VAE)), folder / "vae")  # PyTorch's default init, as diffusers' VAE has
    UMT5EncoderModel(UMT5Config(**TINY_TEXT)).save_pretrained(folder / "text_encoder")
    build_tokenizer(TINY_TEXT["vocab_size"]).save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(variant), indent=2))
    (folder / "model_index.json").write_text(json.dumps(model_index(variant), indent=2))
    return folder


def make_tiny_lora(path: str | Path, transformer: TransformerConfig = TINY_TRANSFORMER, seed: int = 0, rank: int = 2) -> Path:
    """Write a random LoRA for the tiny transformer (self-attention q/k/v/out), in diffusers' keys."""
    generator = torch.Generator().manual_seed(seed)
    dim = transformer.inner_dim
    state = {}
    for block in range(transformer.num_layers):
        for module in ("to_q", "to_k", "to_v", "to_out.0"):
            key = f"transformer.blocks.{block}.attn1.{module}"
            state[f"{key}.lora_A.weight"] = torch.randn(rank, dim, generator=generator) * 0.3
            state[f"{key}.lora_B.weight"] = torch.randn(dim, rank, generator=generator) * 0.3
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)
    return path
