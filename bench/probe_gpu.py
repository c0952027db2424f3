"""Micro-measurements behind the fast path's choices (one H200): attention backend for Helios'
sequence lengths, the bf16 VAE decode of one chunk, the decoder's first decode with and without
cuDNN's autotuner, and what mp4 encoding on a thread costs.

    python bench/probe_gpu.py [--only attention|vae|autotune|encode]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import cuda_time, wall_time  # noqa: E402


def attention_backends():
    for tokens in (11040, 4560, 2940):  # [history + current] at full, half, quarter resolution
        q, k, v = (torch.randn(1, 40, tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * tokens * tokens * 128 * 40
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel([backend]):
                    t = cuda_time(lambda: F.scaled_dot_product_attention(q, k, v))
                print(f"attention L={tokens} {name}: {t * 1e3:.2f} ms, {flops / t / 1e12:.0f} TFLOP/s", flush=True)
            except RuntimeError as exc:
                print(f"attention L={tokens} {name}: unavailable ({str(exc).splitlines()[0][:80]})", flush=True)


def vae_decode(vae=None, latent_shape=(1, 16, 9, 48, 80), device="cuda", dtype=torch.bfloat16, reps=3) -> dict[str, float]:
    """A video's first chunk (9 latent frames -> 33 frames at 384x640): diffusers' frame-by-frame
    decode vs WanChunkDecoder (whole chunk; its tail 1 or 2 latent frames per pass; channel-first
    and channels_last_3d). Returns seconds and max abs diffs."""
    from diffusers import AutoencoderKLWan

    from helios_backends.wan_decoder import WanChunkDecoder, to_channels_last

    torch.backends.cudnn.benchmark = True
    device = torch.device(device)
    vae = (vae or AutoencoderKLWan()).to(device, dtype).eval()
    z = torch.randn(latent_shape, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))
    frames = 4 * latent_shape[2] - 3
    size = f"{latent_shape[3] * 8}x{latent_shape[4] * 8}"
    results = {}

    def measure(name, decode):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = wall_time(decode, device, reps)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        diff = (decode().float() - ref.float()).abs().max().item()
        results[name], results[f"{name} diff"] = t, diff
        print(f"VAE decode {latent_shape[2]} latent frames -> {frames} frames {size} {str(dtype)[6:]}, {name}: {t:.3f} s, "
              f"peak allocated {peak:.1f} GiB (weights included), max abs diff vs diffusers {diff:.2e}", flush=True)

    with torch.no_grad():
        ref = vae.decode(z, return_dict=False)[0]
        measure("diffusers frame by frame", lambda: vae.decode(z, return_dict=False)[0])
        ours = WanChunkDecoder(vae)
        measure("ours chunk-wise", lambda: ours(z))
        for n in (1, 2):
            grouped = WanChunkDecoder(vae, frames_per_pass=n)
            measure(f"ours, tail {n} latent frame{'s' if n > 1 else ''} per pass", lambda: grouped(z))
            if n == 1 and device.type == "cuda":
                from profile_step import kernel_table

                print("kernels of that decode:", *kernel_table(lambda: grouped(z), device, 16), sep="\n", flush=True)
        late = WanChunkDecoder(vae, frames_per_pass=1)
        temporal = [i for i, b in enumerate(vae.decoder.up_blocks) if b.upsamplers is not None and b.upsamplers[0].mode == "upsample3d"]
        late.split, late.head_factor = temporal[-1], 2 ** len(temporal)  # the third session's split
        measure("ours, tail after the last temporal upsampling, 1 latent frame per pass", lambda: late(z))
        to_channels_last(vae)  # in place, so after the default-layout runs
        ours_channels_last = WanChunkDecoder(vae, channels_last=True)
        measure("ours chunk-wise channels_last_3d", lambda: ours_channels_last(z))
        default = WanChunkDecoder(vae, channels_last=True, frames_per_pass=1)
        measure("ours, tail 1 latent frame per pass, channels_last_3d", lambda: default(z))
        if device.type == "cuda":
            from profile_step import kernel_table

            print("kernels of that decode (the core's default on CUDA):", *kernel_table(lambda: default(z), device, 16), sep="\n", flush=True)
    return results


AUTOTUNE_VARIANTS = ("heuristic", "autotune", "autotune-bounded")


def decoder_autotune(variant: str | None = None, dtype: str | None = None, bound_gib: float = 4.0):
    """A process's first chunk decode (384x640, 9 latent frames, the core's default decoder on CUDA)
    against its later ones, per way of choosing the conv algorithms: cuDNN's heuristic, its
    autotuner (cudnn.benchmark: every candidate timed on a new shape, each holding its workspace),
    and the autotuner with the allocator capped at what the process holds plus `bound_gib` during
    that first decode (a candidate past the cap is skipped). Each variant in a fresh process, since
    cuDNN keeps its choices per process. Device used: total minus free (cudaMemGetInfo), what
    nvidia-smi shows for this one process."""
    if variant is None:
        for dt in ("float32", "bfloat16"):
            for v in AUTOTUNE_VARIANTS:
                subprocess.run([sys.executable, __file__, "--only", "autotune", "--variant", v, "--dtype", dt], check=False)
        return
    from diffusers import AutoencoderKLWan

    from helios_backends.wan_decoder import WanChunkDecoder, to_channels_last

    device = torch.device("cuda")
    vae = AutoencoderKLWan().to(device, getattr(torch, dtype)).eval().requires_grad_(False)
    to_channels_last(vae)
    decoder = WanChunkDecoder(vae, channels_last=True, frames_per_pass=1, autotune=variant != "heuristic")
    z = torch.randn(1, 16, 9, 48, 80, device=device, dtype=vae.dtype, generator=torch.Generator(device).manual_seed(0))
    total = torch.cuda.get_device_properties(device).total_memory

    def decode_measured():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        decoder(z)
        torch.cuda.synchronize()
        free, _ = torch.cuda.mem_get_info()
        return time.perf_counter() - t, torch.cuda.max_memory_allocated() / 2**30, torch.cuda.memory_reserved() / 2**30, (total - free) / 2**30

    if variant == "autotune-bounded":
        torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + bound_gib * 2**30) / total))
    first = decode_measured()
    torch.cuda.set_per_process_memory_fraction(1.0)
    later = [decode_measured() for _ in range(3)]
    steady = sum(r[0] for r in later) / len(later)
    print(f"decoder {dtype} {variant}: first decode {first[0]:.3f} s, peak allocated {first[1]:.2f} GiB, reserved after "
          f"{first[2]:.2f} GiB, device used {first[3]:.2f} GiB | later decodes {steady:.3f} s each, peak allocated "
          f"{max(r[1] for r in later):.2f} GiB, device used {later[-1][3]:.2f} GiB", flush=True)


def encode_thread_cost():
    """Matmuls issued from Python while another thread encodes H.264: does the GIL stall them?"""
    import numpy as np

    from helios_backends.media_write import Mp4Writer

    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)

    def loop():
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(2000):
            a @ a
        torch.cuda.synchronize()
        return time.perf_counter() - t

    alone = loop()
    frames = np.random.randint(0, 255, (33, 384, 640, 3), dtype=np.uint8)
    writer = Mp4Writer("/tmp/probe.mp4", 640, 384, 24)
    done = threading.Event()

    def feed():
        while not done.is_set():
            writer.write(frames)
            time.sleep(0.01)

    feeder = threading.Thread(target=feed)
    feeder.start()
    busy = loop()
    done.set()
    feeder.join()
    t = time.perf_counter()
    writer.close()
    print(f"2000 small matmuls: {alone:.3f} s alone, {busy:.3f} s while encoding on a thread; close {time.perf_counter() - t:.2f} s", flush=True)


PROBES = {"attention": attention_backends, "vae": vae_decode, "autotune": decoder_autotune, "encode": encode_thread_cost}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(PROBES), help="run one probe (default: all)")
    parser.add_argument("--variant", choices=AUTOTUNE_VARIANTS, help="autotune: one variant in this process")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="autotune: the VAE's dtype")
    args = parser.parse_args()
    if args.variant:
        decoder_autotune(args.variant, args.dtype)
    else:
        for name, probe in PROBES.items():
            if args.only in (None, name):
                probe()
