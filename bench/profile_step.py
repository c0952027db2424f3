"""Where one transformer call spends its time, per pyramid stage, ours against diffusers.

The stage inputs are recorded from a real 33-frame Distilled request of each implementation
(same random 14B weights as bench_gpu.py), then each stage's call is timed alone on an idle GPU:
ours replaying its CUDA graph and eager on the fused ops, diffusers compiled
(compile_repeated_blocks). A torch.profiler table of the full-resolution stage groups the kernels
into GEMM / attention / Triton / other, and sustained cuBLAS rates for the block's GEMM shapes
give the floor.

    python bench/profile_step.py --out $OUT
    python bench/profile_step.py --config tiny --device cpu --out /tmp/p   # smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_gpu import RUNS, Bench  # noqa: E402
from bench.timing import sync, wall_time  # noqa: E402


class Recorder:
    """Stands in for diffusers' transformer.forward (delegating attributes) and keeps its first call of
    each input shape (ours reports its calls through the bench's probe instead)."""

    def __init__(self, fn, key_of):
        self.fn, self.key_of, self.calls = fn, key_of, {}

    def __call__(self, *args, **kwargs):
        self.calls.setdefault(self.key_of(args, kwargs), (args, kwargs))
        return self.fn(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.fn, name)


def category(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul")):
        return "gemm"
    if any(s in n for s in ("flash", "fmha", "attention", "cudnn", "sdpa")):
        return "attention"
    if "triton" in n or n.startswith("_"):
        return "triton"
    return "other"


def kernel_table(fn, device, top: int) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    rows, totals = [], {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", 0) if device.type == "cuda" else e.self_cpu_time_total
        if device.type == "cuda" and e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if t <= 0:
            continue
        rows.append((t, e.count, e.key))
        totals[category(e.key)] = totals.get(category(e.key), 0) + t
    rows.sort(reverse=True)
    lines = [f"  {cat}: {t / 1e3:.2f} ms" for cat, t in sorted(totals.items(), key=lambda kv: -kv[1])]
    lines += [f"  {t / 1e3:8.2f} ms  x{count:<5d} {key[:110]}" for t, count, key in rows[:top]]
    return lines


def gemm_rates(device, dtype, reps: int) -> list[str]:
    lines = []
    for m in (11040, 4560, 2940):
        for n, k, what in ((15360, 5120, "qkv"), (5120, 5120, "out/q"), (13824, 5120, "ffn up"), (5120, 13824, "ffn down")):
            a = torch.randn(m, k, device=device, dtype=dtype)
            w = torch.randn(n, k, device=device, dtype=dtype)
            bias = torch.zeros(n, device=device, dtype=dtype)
            t = wall_time(lambda: torch.nn.functional.linear(a, w, bias), device, reps)
            lines.append(f"  M={m} N={n} K={k} ({what}): {t * 1e3:.3f} ms, {2 * m * n * k / t / 1e12:.0f} TFLOP/s")
            if what == "ffn up":
                gelu = torch.nn.functional.gelu
                t = wall_time(lambda: gelu(torch.nn.functional.linear(a, w, bias), approximate="tanh"), device, reps)
                lines.append(f"  M={m} N={n} K={k} (ffn up, then GELU): {t * 1e3:.3f} ms")
                t = wall_time(lambda: torch._addmm_activation(bias, a, w.t(), use_gelu=True), device, reps)
                lines.append(f"  M={m} N={n} K={k} (ffn up, GELU in the cuBLASLt epilogue): {t * 1e3:.3f} ms")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["14b", "tiny"], default="14b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    args.gamma, args.vae_frames_per_call = 0.3333, 1
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bench = Bench(args)
    run = RUNS["distilled-111"]
    if args.config == "tiny":
        run.height, run.width = 64, 64
    lines = [f"GPU: {bench.gpu}; torch {torch.__version__}; config {args.config}; {run.height}x{run.width}"]

    ours = bench.our_pipeline("distilled")
    denoiser = ours.denoiser
    bench.probe.calls = our_calls = {}
    with torch.no_grad():
        bench.run_ours(run, frames=33, write_mp4=False)
    bench.probe.calls = None

    pipe = bench.their_pipeline("distilled")
    recorder = Recorder(pipe.transformer.forward, lambda a, kw: tuple(kw["hidden_states"].shape))
    pipe.transformer.forward = recorder
    bench.run_theirs(run, frames=33)  # its timer wraps the recorder and removes both afterwards
    their_calls = recorder.calls

    stages = sorted(our_calls, key=lambda s: s[-1] * s[-2])
    lines.append("\nper-call seconds by stage (latents shape), idle GPU, mean of reps:")
    with torch.no_grad():
        for shape in stages:
            a = our_calls[shape]
            graphed = wall_time(lambda: denoiser(*a), device, args.reps)
            eager = wall_time(lambda: bench.fast(*a), device, args.reps)
            ta, tkw = their_calls[shape]
            theirs = wall_time(lambda: pipe.transformer(*ta, **tkw), device, args.reps)
            lines.append(f"  {shape}: ours graphed {graphed:.4f}, ours eager {eager:.4f}, diffusers compiled {theirs:.4f} "
                         f"(ours graphed / diffusers {graphed / theirs:.3f})")
            print(lines[-1], flush=True)
            # The same call on random-normal text states instead of the encoder's (zeros past the
            # prompt's tokens): do the values change the speed of either side?
            states = tkw["encoder_hidden_states"]
            noise = torch.randn(states.shape, device=states.device, generator=torch.Generator(states.device).manual_seed(0)).to(states.dtype)
            noise_context = denoiser.encode_text(noise)
            graphed_noise = wall_time(lambda: denoiser(a[0], a[1], noise_context, *a[3:]), device, args.reps)
            theirs_noise = wall_time(lambda: pipe.transformer(*ta, **{**tkw, "encoder_hidden_states": noise}), device, args.reps)
            lines.append(f"  {shape}, random-normal text states: ours graphed {graphed_noise:.4f}, diffusers compiled {theirs_noise:.4f}")
            print(lines[-1], flush=True)
        full = stages[-1]
        a = our_calls[full]
        lines.append(f"\nours eager, stage {full}, kernels by device time:")
        lines += kernel_table(lambda: bench.fast(*a), device, args.top)
        ta, tkw = their_calls[full]
        lines.append(f"\ndiffusers compiled, stage {full}, kernels by device time:")
        lines += kernel_table(lambda: pipe.transformer(*ta, **tkw), device, args.top)
    if device.type == "cuda":
        lines.append("\nsustained bf16 GEMM (F.linear with bias), the block's shapes:")
        lines += gemm_rates(device, torch.bfloat16, 20)
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_step.md").write_text(text)


if __name__ == "__main__":
    main()
