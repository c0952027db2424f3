"""Side-by-side benchmark: our core against diffusers' Helios pipelines, same weights, same process.

Random weights are built once (the 14B config by default; random weights cost the same FLOPs and
bytes as the released checkpoint), shared by both implementations, and every run uses identical
settings and seeds. Diffusers runs in its strongest setting (compile_repeated_blocks(fullgraph)
and a bf16 VAE); ours runs its fast path (fused Triton kernels, fused QKV, cached text K/V and
RoPE, CUDA graphs of the transformer, the chunk-wise VAE decoder) and streams chunks into an mp4.

    python -m pip install --no-deps --no-build-isolation -e .   # once: the package, incl. helios_triton_kernels
    python bench/bench_gpu.py --out bench/results   # every run: check, Distilled [1,1,1] / [2,2,2], Mid, Base, 1452 frames (about 8 min on an H200)
    python bench/bench_gpu.py --config tiny --device cpu --runs check distilled-111   # smoke test

Prompts are text, encoded on each side by the same UMT5 encoder with random weights: the
released UMT5-XXL architecture for the 14B config (its FLOPs and bytes), over a small tokenizer
(tokenizing costs the same; only the token ids differ from the real vocabulary's).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helios_backends.config import PipelineConfig, SchedulerConfig, TextEncoderConfig, TransformerConfig  # noqa: E402
from helios_backends.fp8 import quantize_blocks  # noqa: E402
from helios_backends.ops import TorchOps, default_ops  # noqa: E402
from helios_backends.pipeline import Helios  # noqa: E402
from helios_backends.request import GenerationRequest  # noqa: E402
from helios_backends.text import TextEncoder  # noqa: E402
from helios_backends.tokenizer import TransformersTokenizer  # noqa: E402
from helios_backends.tiny import COMMON_SCHEDULER, SCHEDULERS, TINY_TEXT, TINY_TRANSFORMER, TINY_VAE, build_tokenizer  # noqa: E402
from helios_backends.transformer import FP32_MODULES, HeliosTransformer  # noqa: E402
from helios_backends.umt5 import UMT5Encoder  # noqa: E402
from helios_backends.vae import WanVAE  # noqa: E402

from bench.timing import PeakMeter, RunProbe, Timer, sync  # noqa: E402


@dataclass
class Run:
    name: str
    variant: str
    frames: int
    steps: tuple[int, ...]
    guidance: float
    height: int = 384
    width: int = 640


# google/umt5-xxl, Helios' text encoder (the encoder half).
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
                relative_attention_max_distance=128, feed_forward_proj="gated-gelu")
PROMPT = "A red fox trots through fresh snow at dawn, its breath steaming, the camera tracking low beside it."
NEGATIVE = "blurry, low quality, static, distorted"
MAX_TOKENS = 512

RUNS = {
    "distilled-111": Run("Distilled [1,1,1]", "distilled", 240, (1, 1, 1), 1.0),
    "distilled-222": Run("Distilled [2,2,2]", "distilled", 240, (2, 2, 2), 1.0),
    "distilled-1452": Run("Distilled [1,1,1], 1452 frames", "distilled", 1452, (1, 1, 1), 1.0),
    "mid": Run("Mid [5,5,5], CFG-Zero* 5.0", "mid", 99, (5, 5, 5), 5.0),
    "base": Run("Base 10 steps, CFG 5.0", "base", 99, (10,), 5.0),
}


def random_weights(model: torch.nn.Module, device, dtype) -> None:
    """Replace every parameter with random values of the released model's scale and dtype."""
    g = torch.Generator(device=device).manual_seed(0)
    for name, p in list(model.named_parameters()):
        keep_fp32 = any(part in name.split(".") for part in FP32_MODULES)
        dt = torch.float32 if keep_fp32 else dtype
        if name.endswith("bias"):
            value = torch.zeros(p.shape, device=device, dtype=dt)
        elif "norm" in name and p.ndim == 1:
            value = torch.ones(p.shape, device=device, dtype=dt)
        elif "scale_shift_table" in name:
            value = torch.randn(p.shape, device=device, generator=g, dtype=torch.float32).div_(p.shape[-1] ** 0.5).to(dt)
        elif name.endswith("history_key_scale"):
            value = torch.zeros(p.shape, device=device, dtype=dt)
        else:
            fan_in = math.prod(p.shape[1:])
            value = torch.randn(p.shape, device=device, generator=g, dtype=dt).mul_(fan_in**-0.5)
        module_name, _, attr = name.rpartition(".")
        model.get_submodule(module_name)._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)


def share_weights(src: torch.nn.Module, config: TransformerConfig, ops) -> HeliosTransformer:
    """Our transformer on the very same parameter tensors as diffusers' (no copy)."""
    with torch.device("meta"):
        ours = HeliosTransformer(config, ops)
    params = dict(src.named_parameters())
    for name, _ in list(ours.named_parameters()):
        module_name, _, attr = name.rpartition(".")
        ours.get_submodule(module_name)._parameters[attr] = params[name]
    return ours.eval()


def scheduler_dict(variant: str, gamma: float) -> dict:
    return {**SCHEDULERS[variant], **COMMON_SCHEDULER, "gamma": gamma}


def diffusers_scheduler(variant: str, gamma: float):
    from diffusers import HeliosDMDScheduler, HeliosScheduler

    cfg = {k: v for k, v in scheduler_dict(variant, gamma).items() if not k.startswith("_")}
    return HeliosDMDScheduler(**cfg) if variant == "distilled" else HeliosScheduler(**cfg)


def pipeline_config(variant: str) -> PipelineConfig:
    if variant == "base":
        return PipelineConfig("HeliosPipeline")
    return PipelineConfig("HeliosPyramidPipeline", is_cfg_zero_star=variant == "mid", is_distilled=variant == "distilled")


def scheduler_config(variant: str, gamma: float, tmp: Path) -> SchedulerConfig:
    path = tmp / f"{variant}.json"
    path.write_text(json.dumps(scheduler_dict(variant, gamma)))
    return SchedulerConfig.from_json(path)


class Bench:
    def __init__(self, args):
        from diffusers import AutoencoderKLWan, HeliosTransformer3DModel

        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.gpu = torch.cuda.get_device_name(0) if self.device.type == "cuda" else "cpu"
        t = time.perf_counter()
        cfg = {} if args.config == "14b" else TINY_TRANSFORMER.to_dict()
        with torch.device("meta"):
            self.ref = HeliosTransformer3DModel(**cfg)
        random_weights(self.ref, self.device, self.dtype)
        with torch.device(self.device):  # its RoPE frequency buffers were made on meta too
            self.ref.rope = type(self.ref.rope)(rope_dim=self.ref.config.rope_dim, theta=self.ref.config.rope_theta)
        self.ref.eval()
        self.config = TransformerConfig(**{k: v for k, v in self.ref.config.items() if not k.startswith("_")})
        self.fast = share_weights(self.ref, self.config, default_ops(self.device))
        if self.device.type == "cuda":
            self.fast.fuse_projections()
        self.slow = share_weights(self.ref, self.config, TorchOps())
        torch.manual_seed(0)
        vae_cfg = {} if args.config == "14b" else TINY_VAE
        self.vae = AutoencoderKLWan(**vae_cfg).to(self.device, self.dtype).eval().requires_grad_(False)
        self.our_vae = copy.deepcopy(self.vae)  # the same weights; ours stores them channels-last on CUDA, diffusers' keep their layout
        self.their_text = self._their_text_encoder(args.config)
        self.text = self._our_text_encoder(*self.their_text)
        self.build_seconds = time.perf_counter() - t
        self.tmp = Path(args.out)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.cuda = self.device.type == "cuda"
        self.gamma = args.gamma
        self.ours: dict[str, Helios] = {}
        self.fp8: HeliosTransformer | None = None
        self.theirs = {}
        self.compiled = False
        self.vae_frames_per_call = args.vae_frames_per_call
        self.probe = RunProbe()  # every Helios here reports its sections to it

    def _their_text_encoder(self, config: str):
        """transformers' tokenizer and a random UMT5 encoder (UMT5-XXL for the 14B config), for diffusers' side."""
        from transformers import UMT5Config, UMT5EncoderModel

        text_dim = self.config.text_dim
        cfg = UMT5_XXL if config == "14b" else {**TINY_TEXT, "d_model": text_dim}
        torch.manual_seed(0)
        with torch.device(self.device):
            encoder = UMT5EncoderModel._from_config(UMT5Config(**cfg), torch_dtype=self.dtype)
        return build_tokenizer(cfg["vocab_size"]), encoder.eval().requires_grad_(False)

    @staticmethod
    def _our_text_encoder(tokenizer, encoder) -> TextEncoder:
        """Our UMT5 encoder over the very tensors of transformers' (assigned, not copied): both sides
        encode with the same weights and the device holds them once."""
        with torch.device("meta"):
            ours = UMT5Encoder(TextEncoderConfig.from_dict(encoder.config.to_dict()))
        ours.load_state_dict(encoder.state_dict(), assign=True)
        return TextEncoder(TransformersTokenizer(tokenizer), ours.eval().requires_grad_(False))

    # -- the two implementations ------------------------------------------------------------------

    def fp8_transformer(self) -> HeliosTransformer:
        """Ours with FP8 block linears (helios_backends.fp8), built on first use beside the bf16 one."""
        if self.fp8 is None:
            self.fp8 = share_weights(self.ref, self.config, default_ops(self.device))
            self.fp8.fuse_projections()
            quantize_blocks(self.fp8.blocks, self.fp8.ops)
        return self.fp8

    def our_pipeline(self, variant: str, fast: bool = True, fp8: bool = False) -> Helios:
        key = f"{variant}-{fast}-{fp8}"
        if key not in self.ours:
            vae = WanVAE(self.our_vae, frames_per_call=self.vae_frames_per_call or None)
            transformer = self.fp8_transformer() if fp8 else self.fast if fast else self.slow
            self.ours[key] = Helios(transformer, pipeline_config(variant), scheduler_config(variant, self.gamma, self.tmp), self.text, vae,
                                    cuda_graphs=fast and self.cuda, probe=self.probe)
        return self.ours[key]

    def their_pipeline(self, variant: str):
        from diffusers import HeliosPipeline, HeliosPyramidPipeline

        if variant not in self.theirs:
            if self.cuda and not self.compiled:
                self.ref.compile_repeated_blocks(fullgraph=True)
                self.compiled = True
            common = dict(tokenizer=self.their_text[0], text_encoder=self.their_text[1], vae=self.vae,
                          scheduler=diffusers_scheduler(variant, self.gamma), transformer=self.ref)
            if variant == "base":
                pipe = HeliosPipeline(**common)
            else:
                pipe = HeliosPyramidPipeline(**common, is_cfg_zero_star=variant == "mid", is_distilled=variant == "distilled")
            pipe.set_progress_bar_config(disable=True)
            self.theirs[variant] = pipe
        return self.theirs[variant]

    def request(self, run: Run, frames: int | None = None) -> GenerationRequest:
        steps = dict(num_inference_steps=run.steps[0]) if run.variant == "base" else dict(pyramid_steps=run.steps)
        return GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, max_sequence_length=MAX_TOKENS, height=run.height, width=run.width,
                                 num_frames=frames or run.frames, guidance_scale=run.guidance, seed=0, **steps)

    def run_ours(self, run: Run, frames: int | None = None, fast: bool = True, write_mp4: bool = True, fp8: bool = False) -> dict:
        """write_mp4: stream the chunks into an H.264 mp4 as a user's run does (else hand the frames
        out only, as diffusers' output_type="np" does); fp8: the FP8 transformer."""
        helios = self.our_pipeline(run.variant, fast, fp8)
        writer = None
        if write_mp4:
            from helios_backends.media_write import Mp4Writer

            writer = Mp4Writer(self.tmp / "ours.mp4", run.width, run.height, 24)
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # reserved = this run's (our graphs' pool stays: it is in use)
        timers, meter = self.probe.start(self.device)
        latents, first, first_frames, out_frames = [], None, None, 0
        try:
            start = time.perf_counter()
            for out in helios.stream(self.request(run, frames)):
                latents.append(out.latents)
                out_frames += out.frames.shape[1]
                if first is None:
                    first = time.perf_counter() - start
                    first_frames = out.frames[0].clone()
                if writer is not None:
                    writer.write(out.frames[0])
            if writer is not None:
                writer.close()
                writer = None
            wall = time.perf_counter() - start
        finally:
            self.probe.stop()
            if writer is not None:
                writer.close(discard=True)
        impl = "ours fp8" if fp8 else "ours" if write_mp4 else "ours (no mp4)"
        row = self._row(impl, run, wall, out_frames, timers["text"], timers["transformer"], timers["vae"], meter, first,
                        torch.cat(latents, 2).float().cpu())
        row["first_frames"] = first_frames
        return row

    def run_theirs(self, run: Run, frames: int | None = None) -> dict:
        pipe = self.their_pipeline(run.variant)
        t_text, t_model, t_vae = Timer(self.device), Timer(self.device), Timer(self.device)
        encode, forward, decode = pipe.text_encoder.forward, pipe.transformer.forward, pipe.vae.decode
        kw = dict(num_inference_steps=run.steps[0]) if run.variant == "base" else dict(
            pyramid_num_inference_steps_list=list(run.steps), is_amplify_first_chunk=run.variant == "distilled",
            use_zero_init=True, zero_steps=1)
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        meter = PeakMeter(self.cuda)
        pipe.text_encoder.forward = t_text.wrap(encode)
        pipe.transformer.forward = meter.wrap("transformer", t_model.wrap(forward))
        pipe.vae.decode = meter.wrap("vae", t_vae.wrap(decode))
        try:
            sync(self.device)
            start = time.perf_counter()
            with torch.no_grad():
                out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, max_sequence_length=MAX_TOKENS, height=run.height, width=run.width,
                           num_frames=frames or run.frames, guidance_scale=run.guidance,
                           generator=torch.Generator(device=self.device).manual_seed(0), output_type="np", **kw).frames
            sync(self.device)
            wall = time.perf_counter() - start
        finally:
            del pipe.text_encoder.forward
            del pipe.transformer.forward
            del pipe.vae.decode
        first = None if t_vae.first_end is None else t_vae.first_end - start
        return self._row("diffusers", run, wall, out.shape[1], t_text, t_model, t_vae, meter, first, None)

    def _row(self, impl, run, wall, frames, t_text, t_model, t_vae, meter: PeakMeter, first, latents) -> dict:
        return dict(impl=impl, run=run.name, frames=frames, wall=wall, fps=frames / wall, text=t_text.seconds, text_calls=t_text.calls,
                    transformer=t_model.seconds,
                    transformer_calls=t_model.calls, vae=t_vae.seconds, vae_calls=t_vae.calls, first_chunk=first,
                    peak_gib=meter.gib(), peak_transformer_gib=meter.gib("transformer"), peak_vae_gib=meter.gib("vae"),
                    peak_reserved_gib=meter.gib(reserved=True), latents=latents)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", choices=["14b", "tiny"], default="14b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", nargs="+", default=["check", "distilled-111", "distilled-222", "mid", "base", "distilled-1452"])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--gamma", type=float, default=1 / 3, help="pyramid gamma (released: 1/3; CPU fp32 Cholesky needs e.g. 0.3)")
    parser.add_argument("--vae-frames-per-call", type=int, default=1,
                        help="ours: latent frames per pass of the VAE's upsampled layers (default 1, the core's; 0: a whole chunk)")
    parser.add_argument("--ours", nargs="+", default=["mp4"], choices=["mp4", "no-mp4", "fp8"],
                        help="ours: one timed run each, streaming into an mp4, handing the frames out only, or with "
                             "FP8 block linears (into an mp4; its deviation from the bf16 'mp4' run is noted)")
    parser.add_argument("--size", type=int, nargs=3, metavar=("HEIGHT", "WIDTH", "FRAMES"), help="override every run's size (smoke tests)")
    args = parser.parse_args()
    if args.size:
        for run in RUNS.values():
            run.height, run.width, run.frames = args.size
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.device == "cuda" and args.gamma == 1 / 3:
        n = 4
        cov = torch.eye(n, device="cuda") * (1 + args.gamma) - torch.ones(n, n, device="cuda") * args.gamma + torch.eye(n, device="cuda") * 1e-8
        if torch.linalg.cholesky_ex(cov).info.item() != 0:
            print("diffusers' fp32 Cholesky fails at gamma 1/3 on this GPU: both run gamma 0.3333", flush=True)
            args.gamma = 0.3333
    bench = Bench(args)
    print(f"built random {args.config} weights on {bench.gpu} in {bench.build_seconds:.1f}s", flush=True)
    rows, notes = [], []
    for name in args.runs:
        if name == "check":
            run = RUNS["distilled-111"]
            fast = bench.run_ours(run, frames=33, write_mp4=False)
            slow = bench.run_ours(run, frames=33, fast=False, write_mp4=False)
            theirs_lat = None
            with torch.no_grad():
                pipe = bench.their_pipeline("distilled")
                theirs_lat = pipe(prompt=PROMPT, max_sequence_length=MAX_TOKENS, height=run.height, width=run.width, num_frames=33, guidance_scale=1.0,
                                  pyramid_num_inference_steps_list=[1, 1, 1], is_amplify_first_chunk=True,
                                  generator=torch.Generator(device=bench.device).manual_seed(0), output_type="latent").frames
            e1 = relative_error(fast["latents"], slow["latents"])
            e2 = relative_error(slow["latents"], theirs_lat.float().cpu())
            e3 = (fast["first_frames"].int() - slow["first_frames"].int()).abs().float().mean().item()
            notes.append(f"fast path vs reference path latents (1 chunk, Distilled [1,1,1]): relative L2 {e1:.2e}")
            notes.append(f"reference path vs diffusers latents (same chunk): relative L2 {e2:.2e}")
            notes.append(f"fast vs reference decoded frames (each path's own latents): mean |diff| {e3:.2f} of 255")
            print(*notes[-3:], sep="\n", flush=True)
            continue
        run = RUNS[name]
        warm = {}
        for impl, fn in (("ours", bench.run_ours), ("diffusers", bench.run_theirs)):
            t = time.perf_counter()
            fn(run, frames=33)  # warm-up: graph capture (ours), compilation (diffusers)
            warm[impl] = time.perf_counter() - t
        if "fp8" in args.ours:
            t = time.perf_counter()
            bench.run_ours(run, frames=33, fp8=True)
            warm["ours fp8"] = time.perf_counter() - t
        timed = [(lambda r, o=o: bench.run_ours(r, write_mp4=o != "no-mp4", fp8=o == "fp8"), "ours fp8" if o == "fp8" else "ours")
                 for o in args.ours]
        done = {}
        for fn, impl in timed + [(bench.run_theirs, "diffusers")]:
            row = fn(run)
            row["warmup"] = warm[impl]
            rows.append(row)
            done[row["impl"]] = row
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k not in ("latents", "first_frames")}, flush=True)
        if "ours fp8" in done and "ours" in done:
            a, b = done["ours fp8"], done["ours"]
            mse = (a["first_frames"].double() - b["first_frames"].double()).pow(2).mean().item()
            psnr = float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)
            notes.append(f"{run.name}: fp8 vs bf16 (ours): latents relative L2 {relative_error(a['latents'], b['latents']):.3e}, "
                         f"first chunk's frames PSNR {psnr:.1f} dB; transformer {a['transformer']:.2f} s vs {b['transformer']:.2f} s "
                         f"({b['transformer'] / a['transformer']:.2f}x); random weights, so the deviation says nothing about quality")
            print(notes[-1], flush=True)
    write_results(bench, rows, notes, args)


def write_results(bench, rows, notes, args):
    lines = [
        f"GPU: {bench.gpu}; torch {torch.__version__}; config {args.config}; runs {' '.join(args.runs)}",
        "",
        "| run | impl | frames | wall s | FPS | text s (calls) | transformer s (calls) | VAE s (calls) | first chunk s | warm-up s "
        "| peak allocated GiB (in transformer / VAE) | peak reserved GiB | ours/diffusers FPS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_run = {}
    for r in rows:
        by_run.setdefault(r["run"], {})[r["impl"]] = r
    for run, impls in by_run.items():
        theirs = impls.get("diffusers")
        for impl, r in sorted(impls.items(), key=lambda kv: kv[0] == "diffusers"):
            ratio = r["fps"] / theirs["fps"] if theirs is not None and impl != "diffusers" else None
            first = "-" if r["first_chunk"] is None else f"{r['first_chunk']:.2f}"
            lines.append(
                f"| {run} | {impl} | {r['frames']} | {r['wall']:.2f} | {r['fps']:.2f} | {r['text']:.3f} ({r['text_calls']}) "
                f"| {r['transformer']:.2f} ({r['transformer_calls']}) "
                f"| {r['vae']:.2f} ({r['vae_calls']}) | {first} | {r['warmup']:.1f} "
                f"| {r['peak_gib']:.2f} ({r['peak_transformer_gib']:.2f} / {r['peak_vae_gib']:.2f}) | {r['peak_reserved_gib']:.2f} | "
                f"{'' if ratio is None else f'{ratio:.2f}x'} |"
            )
    lines += [""] + [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    print(text)
    (Path(args.out) / "results.md").write_text(text)
    keep = lambda r: {k: v for k, v in r.items() if k not in ("latents", "first_frames")}  # noqa: E731
    (Path(args.out) / "results.json").write_text(json.dumps([keep(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
