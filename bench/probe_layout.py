"""Does cuDNN attention take our (B, L, H, D)-transposed q/k/v, and how fast is it there?"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import cuda_time  # noqa: E402

L = 11040
q, k, v = (torch.randn(1, L, 40, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
for name, backends in (("cudnn only", [SDPBackend.CUDNN_ATTENTION]), ("flash only", [SDPBackend.FLASH_ATTENTION]),
                       ("cudnn first", [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])):
    for layout, args in (("transposed", lambda: (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))),
                         ("contiguous", lambda: tuple(t.transpose(1, 2).contiguous() for t in (q, k, v)))):
        try:
            with sdpa_kernel(backends, set_priority=len(backends) > 1):
                t = cuda_time(lambda: F.scaled_dot_product_attention(*args()))
            print(f"{name}, {layout}: {t * 1e3:.2f} ms", flush=True)
        except RuntimeError as exc:
            print(f"{name}, {layout}: fails ({str(exc).splitlines()[0][:100]})", flush=True)
