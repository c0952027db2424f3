#!/usr/bin/env python3
"""FlashInfer 0.7.4 Hopper (FA3 / sm90) single-prefill kernel vs torch SDPA.

Runs with nothing but what is carried in .whl/fi/ plus the GPU machine's
python3 + torch (cu130).  No network, no nvcc, no pip.

The FlashInfer kernel was JIT-generated and compiled ahead of time on a CPU
machine (nvcc 13.0, -gencode=arch=compute_90a,code=sm_90a) exactly as
`flashinfer.single_prefill_with_kv_cache(q, k, v, causal=False, backend="fa3")`
would build it for bf16 / head_dim 128 / no posenc / no SWA / no softcap.  The
only change to FlashInfer's own ninja file: cudart is linked statically
(-lcudart_static) instead of -lcudart -lcuda, and curand headers were added to
the include path.  The .so is a tvm-ffi module; we load it with
tvm_ffi.load_module and call its exported `run` exactly as flashinfer/prefill.py
does for backend="fa3" (non-fp8):

    run(q, k, v, tmp, o, maybe_lse, mask_mode, layout, window_left,
        maybe_scale_v, logits_soft_cap, sm_scale, scale_v_scalar)

Modes:
  --selftest   (CPU ok) stage the payload, import the carried tvm_ffi, ldd the
               .so and try tvm_ffi.load_module; no torch needed.
  (default)    full GPU benchmark.
"""
import argparse
import hashlib
import math
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
PAYLOAD = os.path.join(HERE, "fi_payload.tar.xz")
URI = (
    "single_prefill_with_kv_cache_dtype_q_bf16_dtype_kv_bf16_dtype_o_bf16_"
    "head_dim_qk_128_head_dim_vo_128_posenc_0_use_swa_False_use_logits_cap_False_"
    "f16qk_False_sm90"
)
SO_NAME = URI + ".so"

H, D = 40, 128
LENGTHS = [11040, 4560, 2940]
WARMUP, ITERS = 3, 20
MASK_NON_CAUSAL = 0  # flashinfer.utils.MaskMode.NON_CAUSAL
LAYOUT_NHD = 0  # flashinfer.utils.TensorLayout.NHD
SINGLE_KERNEL_TMP_SIZE = 32 * 1024 * 1024  # flashinfer.utils

_lines = []


def log(msg=""):
    print(msg, flush=True)


def out(msg=""):
    """A line that belongs in fi_bench.txt (also printed)."""
    _lines.append(msg)
    log(msg)


def banner(msg):
    log("")
    log("=" * 8 + " " + msg + " " + "=" * max(4, 70 - len(msg)))


def sh(cmd):
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)
        return (r.stdout + r.stderr).rstrip() + ("" if r.returncode == 0 else f"\n[exit {r.returncode}]")
    except Exception as e:  # noqa: BLE001
        return f"[{cmd!r} failed: {e!r}]"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stage(stage_dir):
    banner(f"stage payload -> {stage_dir}")
    if not os.path.exists(PAYLOAD):
        raise SystemExit(f"FATAL: payload missing: {PAYLOAD}")
    os.makedirs(stage_dir, exist_ok=True)
    t0 = time.time()
    with tarfile.open(PAYLOAD, "r:xz") as tf:
        try:
            tf.extractall(stage_dir, filter="tar")
        except TypeError:  # python < 3.12
            tf.extractall(stage_dir)
    log(f"extracted in {time.time() - t0:.1f}s; contents: {sorted(os.listdir(stage_dir))}")
    sos = []
    for sub in ("lib", "lib_dyncudart"):  # static cudart first, dynamic-cudart fallback
        so = os.path.join(stage_dir, sub, SO_NAME)
        if os.path.exists(so):
            log(f"kernel .so ({sub}): {so} ({os.path.getsize(so)} bytes, sha256 {sha256(so)})")
            sos.append(so)
    if not sos:
        raise SystemExit(f"FATAL: no {SO_NAME} in payload")
    info = os.path.join(stage_dir, "build", "BUILD_INFO.txt")
    if os.path.exists(info):
        log("--- BUILD_INFO.txt")
        with open(info) as f:
            log(f.read().rstrip())
    return sos


def describe_so(so, tvm_ffi_lib=None):
    log(f"--- ldd {so}")
    env = ""
    if tvm_ffi_lib:
        env = f"LD_LIBRARY_PATH={tvm_ffi_lib}:${{LD_LIBRARY_PATH:-}} "
    log(sh(f"{env}ldd {so}"))
    log("--- NEEDED / RUNPATH")
    log(sh(f"readelf -d {so} | grep -E 'NEEDED|RPATH|RUNPATH'"))


def import_tvm_ffi(stage_dir):
    banner("import carried tvm_ffi")
    sys.path.insert(0, stage_dir)
    try:
        import tvm_ffi  # noqa: PLC0415
    except Exception:
        log("FATAL: importing the carried tvm_ffi failed:")
        traceback.print_exc()
        raise
    log(f"tvm_ffi {getattr(tvm_ffi, '__version__', '?')} from {tvm_ffi.__file__}")
    if not os.path.abspath(tvm_ffi.__file__).startswith(os.path.abspath(stage_dir)):
        log("WARNING: tvm_ffi was NOT imported from the carried copy")
    return tvm_ffi


def preload_torch_cudart():
    """For the dynamic-cudart fallback: make sure a libcudart.so.13 is in the process."""
    import ctypes  # noqa: PLC0415
    import glob  # noqa: PLC0415
    try:
        import torch  # noqa: PLC0415
        sp = os.path.dirname(os.path.dirname(torch.__file__))
    except Exception:  # noqa: BLE001
        return
    for pat in ("nvidia/cu13/lib/libcudart.so.13*", "nvidia/cuda_runtime/lib/libcudart.so.13*"):
        for cand in sorted(glob.glob(os.path.join(sp, pat))):
            try:
                ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
                log(f"preloaded {cand}")
                return
            except OSError as e:
                log(f"could not preload {cand}: {e}")


def load_kernel(tvm_ffi, sos):
    """Yield (so, run) for each candidate that loads; print everything about the ones that don't."""
    last = None
    n_ok = 0
    for i, so in enumerate(sos):
        banner(f"tvm_ffi.load_module({os.path.relpath(so, os.path.dirname(os.path.dirname(so)))})")
        if "lib_dyncudart" in so:
            preload_torch_cudart()
        try:
            mod = tvm_ffi.load_module(so)
            run = mod.run
            log(f"loaded OK: {so}\n  module {mod}; run = {run}")
            n_ok += 1
            yield so, run
            continue
        except Exception as e:  # noqa: BLE001
            last = e
            log(f"FAILED to load {so}:")
            traceback.print_exc()
            sys.stdout.flush()
            describe_so(so, os.path.join(os.path.dirname(tvm_ffi.__file__), "lib"))
            log("--- undefined dynamic symbols that are not versioned libc/libstdc++ ones")
            log(sh(f"nm -D --undefined-only {so} | grep -v -E 'GLIBC|CXXABI|GCC_' | head -40"))
            log("--- glibc of this machine: " + sh("ldd --version | head -1"))
            if i + 1 < len(sos):
                log("-> trying the next candidate")
    if n_ok == 0:
        raise RuntimeError(f"no candidate .so could be loaded; last error: {last!r}")


# ----------------------------------------------------------------------------
# GPU benchmark
# ----------------------------------------------------------------------------
def gpu_main(args, stage_dir, sos):
    banner("torch / GPU")
    import torch  # noqa: PLC0415  (import torch before tvm_ffi, as tvm_ffi itself does)
    import torch.nn.functional as F  # noqa: PLC0415
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    log(f"python {platform.python_version()}  torch {torch.__version__}  cuda {torch.version.cuda}  "
        f"cudnn {torch.backends.cudnn.version()}")
    if not torch.cuda.is_available():
        raise SystemExit("FATAL: torch.cuda.is_available() is False")
    dev = torch.device("cuda:0")
    prop = torch.cuda.get_device_properties(dev)
    log(f"device: {prop.name}  cc {prop.major}.{prop.minor}  SMs {prop.multi_processor_count}  "
        f"mem {prop.total_memory / 2**30:.0f} GiB")
    has_xapi = hasattr(torch.Tensor, "__dlpack_c_exchange_api__")
    log(f"torch.Tensor.__dlpack_c_exchange_api__ present: {has_xapi}")
    if not has_xapi:
        # tvm_ffi would otherwise try to JIT-compile torch-c-dlpack-ext (needs a
        # compiler + CUDA headers); plain __dlpack__ works without it.
        os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
        log("-> set TVM_FFI_DISABLE_TORCH_C_DLPACK=1 (plain DLPack path)")

    tvm_ffi = import_tvm_ffi(stage_dir)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tmp = torch.empty(SINGLE_KERNEL_TMP_SIZE, dtype=torch.uint8, device=dev)
    sm_scale = 1.0 / math.sqrt(D)

    def fi_call_with(run, q, k, v, o, layout):
        # == flashinfer/prefill.py run_single_prefill, backend "fa3", not fp8,
        #    scale_v=None -> (None, 1.0), logits_soft_cap 0.0, no lse
        run(q, k, v, tmp, o, None, MASK_NON_CAUSAL, layout, -1, None, 0.0, sm_scale, 1.0)

    fi_run, fi_err, fi_so = None, None, None
    try:
        for so, run in load_kernel(tvm_ffi, sos):
            banner(f"smoke test {os.path.basename(os.path.dirname(so))}/ .so at L=1000")
            try:
                L0 = 1000
                qs, ks, vs = (torch.randn(L0, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
                os_ = torch.full((L0, H, D), float("nan"), device=dev, dtype=torch.bfloat16)
                fi_call_with(run, qs, ks, vs, os_, LAYOUT_NHD)
                torch.cuda.synchronize()
                ref0 = F.scaled_dot_product_attention(*(t.float().transpose(0, 1) for t in (qs, ks, vs)))
                err = (os_.float().transpose(0, 1) - ref0).abs().max().item()
                log(f"  max abs err vs fp32 SDPA: {err:.3e}")
                if not math.isfinite(err) or err > 5e-2:
                    raise RuntimeError(f"smoke test mismatch: max abs err {err}")
                fi_run, fi_so = run, so
                log(f"  -> using {so}")
                break
            except Exception as e:  # noqa: BLE001
                fi_err = f"smoke test failed for {so}: {e!r}"
                log("  " + fi_err)
                traceback.print_exc()
                sys.stdout.flush()
    except Exception as e:  # noqa: BLE001
        fi_err = f"load failed: {e!r}"
    if fi_run is None:
        fi_err = fi_err or "no FlashInfer kernel"
        log(f"!! FlashInfer kernel unavailable ({fi_err}); SDPA rows will still be measured")
    else:
        fi_err = None

    def fi_call(q, k, v, o, layout):
        fi_call_with(fi_run, q, k, v, o, layout)

    def bench(fn):
        for _ in range(WARMUP):
            fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(ITERS):
            s = torch.cuda.Event(enable_timing=True)
            e = torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e))
        return statistics.median(ts), min(ts), max(ts)

    def ref_fp32(q4, k4, v4):
        """fp32 reference [1,H,L,D], chunked over heads."""
        o = torch.empty(q4.shape, dtype=torch.float32, device=dev)
        for h0 in range(0, H, 8):
            qs, ks, vs = (t[:, h0:h0 + 8].float() for t in (q4, k4, v4))
            s = torch.matmul(qs, ks.transpose(-1, -2)) * sm_scale
            o[:, h0:h0 + 8] = torch.matmul(torch.softmax(s, dim=-1), vs)
            del s
        return o

    rows = []  # (L, name, med_ms, min_ms, max_ms, tflops, maxabs_vs_cudnn, maxabs_vs_fp32, note)
    failures = []
    if fi_err:
        failures.append(fi_err)

    for L in LENGTHS:
        banner(f"L = {L}  (q/k/v [1,{H},{L},{D}] bf16, non-causal)")
        flops = 4.0 * L * L * D * H
        g = torch.Generator(device=dev).manual_seed(1234 + L)
        # NHD storage [L, H, D] (what FlashInfer takes) ...
        q_nhd, k_nhd, v_nhd = (torch.randn(L, H, D, device=dev, dtype=torch.bfloat16, generator=g)
                               for _ in range(3))
        # ... and the same values laid out contiguous [1, H, L, D] for SDPA
        q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0).contiguous() for t in (q_nhd, k_nhd, v_nhd))
        # strided [1,H,L,D] views over the NHD storage (the usual DiT "transpose(1,2)")
        q4s, k4s, v4s = (t.unsqueeze(0).transpose(1, 2) for t in (q_nhd, k_nhd, v_nhd))

        ref = ref_fp32(q4, k4, v4)
        torch.cuda.synchronize()
        o_cudnn = None

        def record(name, fn, get_out, note=""):
            nonlocal o_cudnn
            try:
                med, mn, mx = bench(fn)
                o = get_out().float()
                if name.startswith("(a) "):
                    o_cudnn = o
                d_cudnn = (o - o_cudnn).abs().max().item() if o_cudnn is not None else float("nan")
                d_ref = (o - ref).abs().max().item()
                finite = bool(torch.isfinite(o).all().item())
                tf = flops / (med * 1e-3) / 1e12
                if not finite:
                    note = (note + " NON-FINITE OUTPUT").strip()
                rows.append((L, name, med, mn, mx, tf, d_cudnn, d_ref, note))
                log(f"  {name:<44s} {med:8.3f} ms (min {mn:.3f} max {mx:.3f})  {tf:7.1f} TFLOP/s  "
                    f"maxabs vs cuDNN {d_cudnn:.3e}  vs fp32 {d_ref:.3e} {note}")
            except Exception as e:  # noqa: BLE001
                log(f"  {name}: FAILED")
                traceback.print_exc()
                sys.stdout.flush()
                rows.append((L, name, float("nan"), float("nan"), float("nan"), float("nan"),
                             float("nan"), float("nan"), f"FAILED: {e!r}"[:200]))
                failures.append(f"L={L} {name}: {e!r}")

        # (a) cuDNN SDPA, contiguous [1,H,L,D]
        res = {}

        def sdpa(backend, q, k, v):
            def f():
                with sdpa_kernel(backend):
                    res["o"] = F.scaled_dot_product_attention(q, k, v)
            return f

        record("(a) SDPA cuDNN   [1,H,L,D] contiguous", sdpa(SDPBackend.CUDNN_ATTENTION, q4, k4, v4),
               lambda: res["o"])
        # (b) FlashAttention(2) SDPA, contiguous [1,H,L,D]
        record("(b) SDPA FLASH   [1,H,L,D] contiguous", sdpa(SDPBackend.FLASH_ATTENTION, q4, k4, v4),
               lambda: res["o"])
        # (a') cuDNN on strided views of NHD storage (no copy)
        record("(a') SDPA cuDNN  [1,H,L,D] view of [L,H,D]", sdpa(SDPBackend.CUDNN_ATTENTION, q4s, k4s, v4s),
               lambda: res["o"])

        if fi_run is not None:
            # (c) FlashInfer sm90, NHD [L,H,D]
            o_nhd = torch.empty(L, H, D, device=dev, dtype=torch.bfloat16)
            record("(c) FlashInfer fa3/sm90  NHD [L,H,D]",
                   lambda: fi_call(q_nhd, k_nhd, v_nhd, o_nhd, LAYOUT_NHD),
                   lambda: o_nhd.transpose(0, 1).unsqueeze(0))
            # (c') FlashInfer on the very buffers SDPA (a) uses: contiguous [1,H,L,D]
            #      passed as strided [L,H,D] views (stride_n=D, stride_h=L*D) with
            #      layout NHD.  (Not layout=HND: the sm90 single-prefill binding
            #      reads kv_len = k.size(0) whatever the layout.)
            o_hld = torch.empty(1, H, L, D, device=dev, dtype=torch.bfloat16)
            record("(c') FlashInfer fa3/sm90 on [1,H,L,D] bufs",
                   lambda: fi_call(q4[0].transpose(0, 1), k4[0].transpose(0, 1), v4[0].transpose(0, 1),
                                   o_hld[0].transpose(0, 1), LAYOUT_NHD),
                   lambda: o_hld)
        else:
            for name in ("(c) FlashInfer fa3/sm90  NHD [L,H,D]", "(c') FlashInfer fa3/sm90 on [1,H,L,D] bufs"):
                rows.append((L, name) + (float("nan"),) * 6 + (fi_err,))
        del ref, o_cudnn, q_nhd, k_nhd, v_nhd, q4, k4, v4, q4s, k4s, v4s
        res.clear()
        torch.cuda.empty_cache()

    banner("RESULT")
    out(f"# FlashInfer 0.7.4 fa3/sm90 single_prefill vs torch SDPA  ({prop.name}, torch {torch.__version__}, "
        f"cudnn {torch.backends.cudnn.version()})")
    out(f"# batch 1, heads {H}, head_dim {D}, bf16, non-causal, Lq = Lk = L; FLOPs = 4*L*L*{D}*{H}; "
        f"median of {ITERS} after {WARMUP} warm-up, CUDA events")
    out(f"# maxabs: max |out - other| in float32; 'vs fp32' = fp32 math reference (tf32 off)")
    out(f"# FlashInfer module: {fi_so or 'NOT LOADED'}")
    hdr = f"{'L':>6} | {'backend':<44} | {'median ms':>9} | {'min ms':>7} | {'TFLOP/s':>7} | {'maxabs vs (a)':>13} | {'vs fp32':>9} | note"
    out(hdr)
    out("-" * len(hdr))
    for (L, name, med, mn, mx, tf, dc, dr, note) in rows:
        out(f"{L:>6} | {name:<44} | {med:9.3f} | {mn:7.3f} | {tf:7.1f} | {dc:13.3e} | {dr:9.3e} | {note or ''}")
    # speed-up summary
    out("")
    for L in LENGTHS:
        byname = {r[1][:4].strip(): r for r in rows if r[0] == L}
        a, c = byname.get("(a)"), byname.get("(c)")
        if a and c and not math.isnan(a[2]) and not math.isnan(c[2]):
            out(f"L={L}: FlashInfer fa3 (c) / cuDNN (a) time ratio = {c[2] / a[2]:.3f}  "
                f"(speed-up {a[2] / c[2]:.3f}x)")
    if failures:
        out("")
        out("FAILURES:")
        for f_ in failures:
            out("  " + f_)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        p = os.path.join(args.out, "fi_bench.txt")
        with open(p, "w") as f:
            f.write("\n".join(_lines) + "\n")
        log(f"wrote {p}")
    return 1 if failures else 0


def selftest(stage_dir, sos):
    tvm_ffi = import_tvm_ffi(stage_dir)
    for so in sos:
        describe_so(so, os.path.join(os.path.dirname(tvm_ffi.__file__), "lib"))
    try:
        n = 0
        for so, run in load_kernel(tvm_ffi, sos):
            n += 1
        log(f"SELFTEST: load_module OK for {n}/{len(sos)} candidate(s)")
        return 0 if n == len(sos) else 2
    except Exception as e:  # noqa: BLE001
        log(f"SELFTEST: load_module raised {e!r}")
        return 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", default="/tmp/fi_stage")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--selftest", action="store_true")
    args = ap.parse_args()
    log(f"bench_fi.py  python {sys.version.split()[0]} on {platform.platform()}")
    sos = stage(args.stage)
    if args.selftest:
        return selftest(args.stage, sos)
    return gpu_main(args, args.stage, sos)


if __name__ == "__main__":
    sys.exit(main())
