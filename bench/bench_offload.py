"""Low-VRAM modes on one GPU, ours beside diffusers' group offloading: random 14B weights,
Distilled [1,1,1], 384x640, each configuration in its own process so its peak memory is its own.

    python bench/bench_offload.py --out bench/results              # every configuration, then the table
    python bench/bench_offload.py --config ours:layer:2 --out DIR   # one configuration (what the driver runs)

With --folder (e.g. from bench/random_checkpoint.py), folder:none|model|layer:S[:R] load the core
through `Helios.from_pretrained(offload=..., offload_slots=S, offload_resident=R)` and encode a
text prompt, as `helios generate` does; their rows also give the allocator's peak within the
text encoding, the transformer calls and the decodes (which phase sets the process's figure).
Configurations: ours none (resident weights, CUDA graphs), ours layer with 2 and 4 slots (blocks
streamed from pinned host memory, prefetch on a side stream), diffusers' group offloading at
block level and at leaf level, both with streams (its low-VRAM setting; eager: compilation does
not combine with its hooks). Prompt embeddings are random tensors (no text encoder on either
side), so `--offload model` would time the same as none here and is not a row. Each process
warms up on a 33-frame request, then times the requested frames.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helios_harness.launch import Launched  # noqa: E402
from bench.bench_gpu import diffusers_scheduler, pipeline_config, random_weights, scheduler_config, share_weights  # noqa: E402
from bench.timing import RunProbe  # noqa: E402

from helios_backends.config import TransformerConfig  # noqa: E402
from helios_backends.offload import LayerOffload  # noqa: E402
from helios_backends.ops import default_ops  # noqa: E402
from helios_backends.pipeline import Helios  # noqa: E402
from helios_backends.request import GenerationRequest  # noqa: E402
from helios_backends.vae import WanVAE  # noqa: E402

CONFIGS = ("ours:none", "ours:layer:2", "ours:layer:4", "diffusers:block_level", "diffusers:leaf_level")
# With --folder: the core loaded by Helios.from_pretrained(offload=...), text encoder included;
# folder:layer:SLOTS:RESIDENT keeps RESIDENT blocks on the device (the 12 / 16 GB profiles).
FOLDER_CONFIGS = ("folder:none", "folder:model", "folder:layer:2", "folder:layer:2:8", "folder:layer:2:16")


def configuration(text: str) -> str:
    """A --config(s) value: one of CONFIGS, or folder:none|model, or folder:layer:SLOTS[:RESIDENT]."""
    parts = text.split(":")
    if text in CONFIGS or text in ("folder:none", "folder:model"):
        return text
    if parts[:2] == ["folder", "layer"] and 3 <= len(parts) <= 4 and all(p.isdigit() for p in parts[2:]):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: one of {', '.join(CONFIGS)}, folder:none, folder:model, folder:layer:SLOTS[:RESIDENT]")
HEIGHT, WIDTH = 384, 640


def build(device):
    """diffusers' 14B transformer with random weights on the GPU, and a bf16 Wan VAE."""
    from diffusers import AutoencoderKLWan, HeliosTransformer3DModel

    with torch.device("meta"):
        ref = HeliosTransformer3DModel()
    random_weights(ref, device, torch.bfloat16)
    with torch.device(device):
        ref.rope = type(ref.rope)(rope_dim=ref.config.rope_dim, theta=ref.config.rope_theta)
    vae = AutoencoderKLWan().to(device, torch.bfloat16).eval().requires_grad_(False)
    return ref.eval(), vae


def run_ours(ref, vae, device, mode: str, slots: int, prompt, out: Path):
    config = TransformerConfig(**{k: v for k, v in ref.config.items() if not k.startswith("_")})
    model = share_weights(ref, config, default_ops(device))
    model.fuse_projections()
    layers = LayerOffload(model.blocks, device, slots) if mode == "layer" else None
    torch.cuda.empty_cache()
    graphs = layers is None
    helios = Helios(model, pipeline_config("distilled"), scheduler_config("distilled", 1 / 3, out), None,
                    WanVAE(copy.deepcopy(vae)), cuda_graphs=graphs, offload=mode, layers=layers)  # a copy: ours stores it channels-last

    def request(n):
        req = GenerationRequest(prompt="(embeddings given)", height=HEIGHT, width=WIDTH, num_frames=n, pyramid_steps=(1, 1, 1), seed=0)
        return sum(c.frames.shape[1] for c in helios.session(req, prompt_embeds=prompt))

    return request


def run_theirs(ref, vae, device, offload_type: str, prompt):
    from diffusers import HeliosPyramidPipeline

    ref.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type=offload_type,
                             num_blocks_per_group=1 if offload_type == "block_level" else None, use_stream=True)
    torch.cuda.empty_cache()
    pipe = HeliosPyramidPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=diffusers_scheduler("distilled", 1 / 3),
                                 transformer=ref, is_distilled=True)
    pipe.set_progress_bar_config(disable=True)

    def request(n):
        with torch.no_grad():
            video = pipe(prompt_embeds=prompt, height=HEIGHT, width=WIDTH, num_frames=n, guidance_scale=1.0,
                         pyramid_num_inference_steps_list=[1, 1, 1], is_amplify_first_chunk=True, use_zero_init=True, zero_steps=1,
                         generator=torch.Generator(device=device).manual_seed(0), output_type="np").frames
        return video.shape[1]

    return request


def run_folder(folder: str, device, mode: str, slots: int, resident: int, probe: RunProbe):
    """The user's path: `Helios.from_pretrained(folder, offload=mode)` and a text prompt."""
    helios = Helios.from_pretrained(folder, device=device, dtype="bfloat16", vae_dtype="bfloat16", offload=mode, offload_slots=slots,
                                    offload_resident=resident, probe=probe)

    def request(n):
        req = GenerationRequest(prompt="a red fox running through snow", height=HEIGHT, width=WIDTH, num_frames=n,
                                pyramid_steps=(1, 1, 1), seed=0)
        return sum(c.frames.shape[1] for c in helios.stream(req))

    return request


def one(config: str, frames: int, out: Path, folder: str | None = None) -> dict:
    device = torch.device("cuda")
    impl, mode, *rest = config.split(":")
    t = time.perf_counter()
    slots = int(rest[0]) if rest else 2
    resident = int(rest[1]) if len(rest) > 1 else 0
    probe = RunProbe()
    if impl == "folder":
        ref, request = None, run_folder(folder, device, mode, slots, resident, probe)
    else:
        ref, vae = build(device)
        g = torch.Generator(device=device).manual_seed(1)
        prompt = torch.randn(1, 512, 4096, device=device, generator=g, dtype=torch.bfloat16)
        request = run_ours(ref, vae, device, mode, slots, prompt, out) if impl == "ours" else run_theirs(ref, vae, device, mode, prompt)
    del ref  # ours: the blocks' device copies go with it (LayerOffload repointed ours to its slots)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    setup = time.perf_counter() - t
    resident_gib = torch.cuda.memory_allocated() / 2**30
    t = time.perf_counter()
    request(33)
    torch.cuda.synchronize()
    warmup = time.perf_counter() - t
    torch.cuda.reset_peak_memory_stats()
    _, meter = probe.start(device)
    t = time.perf_counter()
    n = request(frames)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    free, total = torch.cuda.mem_get_info()
    row = dict(config=config, frames=n, wall=wall, fps=n / wall, peak_gib=torch.cuda.max_memory_allocated() / 2**30,
               reserved_gib=torch.cuda.max_memory_reserved() / 2**30, resident_gib=resident_gib, setup_s=setup, warmup_s=warmup,
               device_used_gib=(total - free) / 2**30, **{f"{name}_peak_gib": meter.gib(name) for name in meter.within})
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], frames: int, alloc_conf: str | None = None) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "?"
    resident = {r["config"].split(":")[0]: r["fps"] for r in rows if r["config"].endswith(":none") and "fps" in r}
    kinds = sorted({r["smi_kind"] for r in rows if r.get("smi_gib")})
    lines = [f"GPU: {gpu}; torch {torch.__version__}; Distilled [1,1,1], 384x640, {frames} frames requested; one process per row; "
             f"PYTORCH_CUDA_ALLOC_CONF={alloc_conf or '(unset)'}",
             f"nvidia-smi GiB: the process's device memory over its whole life (load, warm-up, timed request), {'; '.join(kinds) or 'n/a'}. "
             "Allocated / reserved: torch's peaks over the timed request.",
             "Within text / transformer / VAE: the allocator's peak inside each kind of call (folder rows).",
             "", "| configuration | frames | wall s | FPS | vs ours resident (same kind) | nvidia-smi GiB | peak allocated GiB | "
             "peak reserved GiB | within text / transformer / VAE GiB | setup s | warm-up s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        smi = f"{r['smi_gib']:.2f}" if r.get("smi_gib") else "-"
        if "fps" not in r:
            lines.append(f"| {r['config']} | failed: {r['error']} | | | | {smi} | | | | | |")
            continue
        base = resident.get(r["config"].split(":")[0], resident.get("ours"))
        rel = f"{r['fps'] / base:.2f}x" if base else "-"
        within = " / ".join(f"{r[k]:.2f}" if k in r else "-" for k in ("text_peak_gib", "transformer_peak_gib", "vae_peak_gib"))
        lines.append(f"| {r['config']} | {r['frames']} | {r['wall']:.2f} | {r['fps']:.2f} | {rel} | {smi} | {r['peak_gib']:.2f} | "
                     f"{r['reserved_gib']:.2f} | {within} | {r['setup_s']:.1f} | {r['warmup_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=configuration, help="run one configuration in this process")
    parser.add_argument("--configs", nargs="+", type=configuration, default=list(CONFIGS),
                        help=f"default: {' '.join(CONFIGS)}; with --folder e.g. {' '.join(FOLDER_CONFIGS)}")
    parser.add_argument("--folder", help="a Helios folder for the folder:* configurations")
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--timeout", type=float, default=240, help="seconds per configuration")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--alloc-conf", help="PYTORCH_CUDA_ALLOC_CONF for every configuration, e.g. expandable_segments:True")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.config:
        one(args.config, args.frames, out, args.folder)
        return
    rows = []
    env = dict(os.environ)
    if args.alloc_conf:
        env["PYTORCH_CUDA_ALLOC_CONF"] = args.alloc_conf
    for config in args.configs:
        cmd = [sys.executable, __file__, "--config", config, "--frames", str(args.frames), "--out", str(out)]
        cmd += ["--folder", args.folder] if args.folder else []
        # The device memory a user sees: nvidia-smi, sampled through the whole process (start-up,
        # load, warm-up, the timed request and its decode), beside the allocator's own peaks.
        log = out / f"offload-{config.replace(':', '-')}.log"
        proc = Launched(cmd, log, env=env, gpu=True)
        try:
            proc.wait(timeout=args.timeout)
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
            rows.append(json.loads(lines[-1]) if lines else dict(config=config, error=(proc.log_tail(2000).strip().splitlines() or ["no output"])[-1]))
        except subprocess.TimeoutExpired:
            rows.append(dict(config=config, error=f"over {args.timeout:.0f} s"))
        finally:
            proc.stop()
        rows[-1].update(smi_gib=proc.memory.peak_gpu / 2**30 if proc.memory.peak_gpu else None, smi_kind=proc.memory.gpu_kind)
        print(rows[-1], flush=True)
    text = table(rows, args.frames, args.alloc_conf)
    print(text)
    (out / "offload.md").write_text(text)
    (out / "offload.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
