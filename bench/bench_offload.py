"""Low-VRAM mode on one GPU: our layer offload with random 14B weights, Distilled [1,1,1].

    python bench/bench_offload.py --slots 2 --frames 240

Builds the 14B transformer's random weights on the GPU, moves its blocks into pinned host
memory (LayerOffload), frees the device copies, then times a request and reads the peak memory.
Compare with the resident-weights figure in bench/RESULTS.md (same settings).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gpu import Run, pipeline_config, random_weights, scheduler_config  # noqa: E402

from helios_backends.config import TransformerConfig  # noqa: E402
from helios_backends.offload import LayerOffload  # noqa: E402
from helios_backends.ops import default_ops  # noqa: E402
from helios_backends.pipeline import Helios  # noqa: E402
from helios_backends.request import GenerationRequest  # noqa: E402
from helios_backends.transformer import HeliosTransformer  # noqa: E402
from helios_backends.vae import WanVAE  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    from diffusers import AutoencoderKLWan

    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    t = time.perf_counter()
    with torch.device("meta"):
        model = HeliosTransformer(TransformerConfig(), default_ops(device))
    random_weights(model, device, torch.bfloat16)
    model.fuse_projections()
    layers = LayerOffload(model.blocks, device, args.slots)
    torch.cuda.empty_cache()
    build = time.perf_counter() - t
    vae = AutoencoderKLWan().to(device, torch.bfloat16).eval().requires_grad_(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    helios = Helios(model.eval(), pipeline_config("distilled"), scheduler_config("distilled", 1 / 3, out), None, WanVAE(vae))
    helios.offload, helios.layers = "layer", layers
    print(f"built and offloaded in {build:.1f}s; resident after build {torch.cuda.memory_allocated() / 2**30:.2f} GiB", flush=True)
    g = torch.Generator(device=device).manual_seed(1)
    prompt = torch.randn(1, 512, 4096, device=device, generator=g, dtype=torch.bfloat16)
    run = Run("Distilled [1,1,1]", "distilled", args.frames, (1, 1, 1), 1.0)
    for label, frames in (("warm-up", 33), ("timed", run.frames)):
        req = GenerationRequest(prompt="(embeddings given)", height=384, width=640, num_frames=frames, pyramid_steps=(1, 1, 1), seed=0)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        n = sum(c.frames.shape[1] for c in helios.stream(helios.start(req, prompt_embeds=prompt)))
        wall = time.perf_counter() - start
        line = (f"{label}: layer offload, {args.slots} slots, {n} frames in {wall:.2f}s = {n / wall:.2f} FPS; "
                f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; resident after {torch.cuda.memory_allocated() / 2**30:.2f} GiB")
        print(line, flush=True)
    (out / "offload.md").write_text(line + "\n")


if __name__ == "__main__":
    main()
