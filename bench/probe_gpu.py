"""Micro-measurements behind the fast path's choices (one H200): attention backend for Helios'
sequence lengths, the bf16 VAE decode of one chunk, and what mp4 encoding on a thread costs.

    python bench/probe_gpu.py
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cuda_time(fn, reps=10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1000


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


def vae_decode():
    from diffusers import AutoencoderKLWan

    torch.backends.cudnn.benchmark = True
    vae = AutoencoderKLWan().to("cuda", torch.bfloat16).eval()
    z = torch.randn(1, 16, 9, 48, 80, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        t = cuda_time(lambda: vae.decode(z, return_dict=False)[0], reps=3)
        print(f"VAE decode 9 latent frames 384x640 bf16: {t:.3f} s", flush=True)


def encode_thread_cost():
    """Matmuls issued from Python while another thread encodes H.264: does the GIL stall them?"""
    import numpy as np

    from helios_backends.video import Mp4Writer

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


if __name__ == "__main__":
    attention_backends()
    vae_decode()
    encode_thread_cost()
