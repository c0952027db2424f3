"""Write a random-weight Helios folder at the released 14B transformer size, for timing backends.

    python bench/random_checkpoint.py /tmp/helios-14b-random --variant distilled

Same layout and json as the released checkpoints; the transformer and the Wan VAE have their
released configs (random weights cost the same FLOPs and bytes); the text encoder is a 2-layer
UMT5 with the real 4096-wide output over the tiny tokenizer, so prompts cost almost nothing on
every backend alike, or with `--text-encoder released` UMT5-XXL's released config (24 layers,
11 GB in bf16), for what memory and load time a user really meets (the low-VRAM rows). Weights
are drawn on the GPU when there is one (minutes less than on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_gpu import random_weights  # noqa: E402

from helios_backends.config import TransformerConfig  # noqa: E402
from helios_backends.tiny import TINY_TEXT, build_tokenizer, model_index, save_transformer, scheduler_config  # noqa: E402
from helios_backends.transformer import HeliosTransformer  # noqa: E402


# UMT5-XXL's encoder as the released Helios (and Wan) checkpoints ship it
RELEASED_TEXT = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def write(folder: Path, variant: str, config: TransformerConfig, device: torch.device, text_encoder: str = "small") -> Path:
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        model = HeliosTransformer(config)
    random_weights(model, device, torch.bfloat16)
    model.to("cpu")
    save_transformer(model, folder / "transformer", shards=8)
    del model
    torch.manual_seed(0)
    AutoencoderKLWan().save_pretrained(folder / "vae")
    if text_encoder == "released":
        with torch.device("meta"):
            encoder = UMT5EncoderModel(UMT5Config(**RELEASED_TEXT))
        random_weights(encoder, device, torch.bfloat16)
        encoder.encoder.embed_tokens.weight = encoder.shared.weight  # the stack's lookup is the shared table
        encoder.to("cpu").save_pretrained(folder / "text_encoder")
        del encoder
    else:
        text = {**TINY_TEXT, "d_model": config.text_dim, "d_kv": 64, "num_heads": config.text_dim // 64, "d_ff": 2 * config.text_dim}
        UMT5EncoderModel(UMT5Config(**text)).save_pretrained(folder / "text_encoder")
    build_tokenizer(TINY_TEXT["vocab_size"]).save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(variant), indent=2))
    (folder / "model_index.json").write_text(json.dumps(model_index(variant), indent=2))
    return folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--variant", choices=["base", "mid", "distilled"], default="distilled")
    parser.add_argument("--text-encoder", choices=["small", "released"], default="small",
                        help="a 2-layer UMT5 (default) or UMT5-XXL's released size")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t = time.perf_counter()
    write(Path(args.folder), args.variant, TransformerConfig(), device, args.text_encoder)
    print(f"wrote {args.folder} ({args.variant}, 14B transformer) in {time.perf_counter() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
