"""Where `--offload layer` spends its load time, step by step on one folder (page-cached first).

    python bench/probe_load.py /tmp/h14
    python bench/probe_load.py FOLDER --device cpu     # smoke test: no pinned memory without CUDA
    python bench/probe_load.py /tmp/h14 --resident     # from_pretrained's parts, weights resident
    python bench/probe_load.py /tmp/h14 --fills        # ways of filling the resident transformer

Steps: the page-cache read; the transformer placed as layer offload places it (blocks in pinned
host buffers, the rest on the GPU) and filled from the mapped files (what from_pretrained does);
the same weights read into pageable host memory (load_transformer on the CPU); allocating the
streamed blocks' pinned buffers alone, on one thread and on several.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helios_backends.loading import build_transformer, fill_weights, load_transformer  # noqa: E402
from helios_backends.offload import LayerOffload, _layout  # noqa: E402
from helios_backends.ops import default_ops  # noqa: E402


def timed(label: str, fn):
    t = time.perf_counter()
    out = fn()
    print(f"{label}: {time.perf_counter() - t:.2f} s", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--resident", action="store_true", help="time each part of a resident from_pretrained instead")
    parser.add_argument("--fills", action="store_true", help="time ways of filling a resident transformer from the files instead")
    args = parser.parse_args()
    folder, device = Path(args.folder), torch.device(args.device)
    if args.resident:
        return resident(folder, device)
    if args.fills:
        return fills(folder, device, args.threads)
    for path in sorted((folder / "transformer").glob("*.safetensors")):
        timed(f"page-cache read of {path.name}", path.read_bytes)
    model = build_transformer(folder, torch.bfloat16, default_ops(device), fuse=True)
    for name, module in model.named_children():
        if name != "blocks":
            module.to_empty(device=device)
    layers = timed("LayerOffload: pinned buffers for the streamed blocks", lambda: LayerOffload(model.blocks, device, 2))
    timed("fill_weights into them (from_pretrained(offload='layer') is these two)", lambda: fill_weights(model, folder))
    layout = _layout(model.blocks[0])
    n = len(model.blocks)
    print(f"{n} blocks of {layout.nbytes / 2**20:.0f} MiB", flush=True)
    del layers, model
    timed("load_transformer on the CPU (pageable host tensors)", lambda: load_transformer(folder, torch.bfloat16, torch.device("cpu")))
    if device.type != "cuda":
        return
    torch._C._host_emptyCache()
    pinned = timed("pinned buffers alone, one thread", lambda: [torch.empty(layout.nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(n)])
    del pinned
    torch._C._host_emptyCache()  # the caching host allocator would hand the same pages back
    with ThreadPoolExecutor(args.threads) as pool:
        timed(f"pinned buffers alone, {args.threads} threads",
              lambda: list(pool.map(lambda _: torch.empty(layout.nbytes, dtype=torch.uint8, pin_memory=True), range(n))))


def fills(folder: Path, device: torch.device, threads: int) -> None:
    """The resident transformer's fill from page-cached files, three ways, each on fresh mappings:
    copying from the memory map (each 4 KiB page faulted in by the copy: loading before the pinned
    slices), the same after populating each tensor's pages in one madvise(MADV_POPULATE_READ), and
    loading's own fill (pread slices through each thread's pinned buffer)."""
    from helios_backends.loading import _copy_tensors, _MappedWeights, weight_files
    from helios_backends.transformer import checkpoint_parameters

    for path in sorted((folder / "transformer").glob("*.safetensors")):
        path.read_bytes()
    model = build_transformer(folder, torch.bfloat16, default_ops(device), fuse=True)
    model.to_empty(device=device)
    targets = checkpoint_parameters(model)
    files = weight_files(folder / "transformer")
    gib = sum(t.numel() * t.element_size() for t in targets.values()) / 2**30

    def run(label, fill):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fill()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        print(f"{label}: {dt:.2f} s ({gib / dt:.1f} GiB/s of parameters)", flush=True)

    def pool_fill(copy):
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(copy, sorted(files)))

    for _ in range(2):
        mapped = {p: _MappedWeights(p) for p in set(files.values())}
        run(f"memory map, faulted by the copy, {threads} threads",
            lambda: pool_fill(lambda name: targets[name].copy_(mapped[files[name]].tensor(name))))
        mapped = {p: _MappedWeights(p) for p in set(files.values())}

        def populated(name):
            weights = mapped[files[name]]
            begin, end = weights.entries[name]["data_offsets"]
            first = (weights.start + begin) & ~4095
            weights.map.madvise(22, first, weights.start + end - first)  # MADV_POPULATE_READ (Linux 5.14)
            targets[name].copy_(weights.tensor(name))

        run(f"memory map, populated per tensor, {threads} threads", lambda: pool_fill(populated))
        run("loading's fill (pread slices through pinned buffers)", lambda: _copy_tensors(targets, folder / "transformer"))


def resident(folder: Path, device: torch.device) -> None:
    """from_pretrained(offload="none")'s loads one by one, in its order, bf16 transformer and text encoder."""
    from helios_backends.text import TextEncoder
    from helios_backends.vae import WanVAE

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timed("WanVAE.load (bf16)", lambda: (WanVAE.load(folder, torch.bfloat16, device), sync()))
    timed("load_transformer (bf16, fused)", lambda: (load_transformer(folder, torch.bfloat16, device), sync()))
    timed("TextEncoder.load (bf16)", lambda: (TextEncoder.load(folder, torch.bfloat16, device), sync()))


if __name__ == "__main__":
    main()
