"""Write a random-weight Helios folder at the released 14B transformer size, for timing backends.

    python bench/random_checkpoint.py /tmp/helios-14b-random --variant distilled

Same layout and json as the released checkpoints; the transformer and the Wan VAE have their
released configs (random weights cost the same FLOPs and bytes); the text encoder is a 2-layer
UMT5 with the real 4096-wide output over the tiny tokenizer, so prompts cost almost nothing on
every backend alike. Weights are drawn on the GPU when there is one (minutes less than on CPU).
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


def write(folder: Path, variant: str, config: TransformerConfig, device: torch.device) -> Path:
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
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t = time.perf_counter()
    write(Path(args.folder), args.variant, TransformerConfig(), device)
    print(f"wrote {args.folder} ({args.variant}, 14B transformer) in {time.perf_counter() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
