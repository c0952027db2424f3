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

# The operands as the transformer hands them over: q and k fresh (B, L, H, D) tensors from the fused
# q/k norm + RoPE, v a column slice of the fused QKV projection's output (row stride 3 x 5120).
qkv = torch.randn(1, L, 3 * 40 * 128, device="cuda", dtype=torch.bfloat16)
v_slice = qkv.chunk(3, dim=-1)[2].unflatten(2, (40, -1))
with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
    t = cuda_time(lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v_slice.transpose(1, 2)))
    print(f"cudnn only, v a slice of the fused QKV output: {t * 1e3:.2f} ms", flush=True)
    t = cuda_time(lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v_slice.contiguous().transpose(1, 2)))
    print(f"cudnn only, that v copied contiguous first (copy included): {t * 1e3:.2f} ms", flush=True)
    # Cross-attention: the current chunk's 8640 full-resolution tokens onto 512 text tokens.
    qc = q[:, :8640]
    kc, vc = (torch.randn(1, 512, 40, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    t = cuda_time(lambda: F.scaled_dot_product_attention(qc.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2)))
    print(f"cudnn only, cross-attention 8640 x 512: {t * 1e3:.2f} ms ({4 * 8640 * 512 * 128 * 40 / t / 1e12:.0f} TFLOP/s)", flush=True)
    # Sustained: 40 layers' worth of attention between the layer's GEMMs (QKV, out, FFN up and down at
    # full resolution), as the model runs them; the attention share of that time, by difference.
    x = torch.randn(L, 5120, device="cuda", dtype=torch.bfloat16)
    w_qkv, w_out = (torch.randn(n, 5120, device="cuda", dtype=torch.bfloat16) for n in (15360, 5120))
    w_up, w_down = torch.randn(13824, 5120, device="cuda", dtype=torch.bfloat16), torch.randn(5120, 13824, device="cuda", dtype=torch.bfloat16)

    def layer_gemms():
        F.linear(x, w_qkv), F.linear(x, w_out), F.linear(F.linear(x, w_up), w_down)

    def layer():
        layer_gemms()
        F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v_slice.transpose(1, 2))

    gemms = cuda_time(lambda: [layer_gemms() for _ in range(40)], reps=3)
    whole = cuda_time(lambda: [layer() for _ in range(40)], reps=3)
    flops = 2 * L * 5120 * (15360 + 5120 + 2 * 13824) * 40
    print(f"40 layers at full resolution: GEMMs {gemms * 1e3:.1f} ms ({flops / gemms / 1e12:.0f} TFLOP/s), "
          f"GEMMs + self-attention {whole * 1e3:.1f} ms, attention by difference {(whole - gemms) * 1e3:.1f} ms", flush=True)
