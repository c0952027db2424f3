"""Where `--offload layer` spends its load time: the steps that put a Helios folder's transformer
into pinned host memory, each timed alone on the same folder (page-cached by a first read).

    python bench/probe_load.py /tmp/h14

Steps: the safetensors read into host tensors (load_transformer on the CPU), fusing the q/k/v
projections, allocating the streamed blocks' pinned buffers (one thread, then several), and the
copy of the weights into them.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helios_backends.loading import load_transformer  # noqa: E402
from helios_backends.offload import _layout, _views  # noqa: E402


def timed(label: str, fn):
    t = time.perf_counter()
    out = fn()
    print(f"{label}: {time.perf_counter() - t:.2f} s", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    for path in sorted((Path(args.folder) / "transformer").glob("*.safetensors")):
        timed(f"page-cache read of {path.name}", path.read_bytes)
    model = timed("load_transformer on the CPU (read into host tensors)", lambda: load_transformer(Path(args.folder), torch.bfloat16, torch.device("cpu")))
    timed("fuse_projections", model.fuse_projections)
    layout = _layout(model.blocks[0])
    n = len(model.blocks)
    print(f"{n} blocks of {layout.nbytes / 2**20:.0f} MiB", flush=True)
    pinned = timed("pinned buffers, one thread", lambda: [torch.empty(layout.nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(n)])
    del pinned
    torch._C._host_emptyCache()  # the caching host allocator would hand the same pages back
    with ThreadPoolExecutor(args.threads) as pool:
        pinned = timed(f"pinned buffers, {args.threads} threads",
                       lambda: list(pool.map(lambda _: torch.empty(layout.nbytes, dtype=torch.uint8, pin_memory=True), range(n))))

    def copy(i):
        for view, p in zip(_views(pinned[i], layout), model.blocks[i].parameters()):
            view.copy_(p.detach())

    timed("copy into the pinned buffers, one thread", lambda: [copy(i) for i in range(n)])
    with ThreadPoolExecutor(args.threads) as pool:
        timed(f"copy into the pinned buffers, {args.threads} threads", lambda: list(pool.map(copy, range(n))))
    plain = [torch.empty(layout.nbytes, dtype=torch.uint8) for _ in range(n)]

    def copy_plain(i):
        for view, p in zip(_views(plain[i], layout), model.blocks[i].parameters()):
            view.copy_(p.detach())

    timed("copy into pageable buffers (first touch), one thread", lambda: [copy_plain(i) for i in range(n)])


if __name__ == "__main__":
    main()
