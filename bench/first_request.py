"""A process's first request against its second: where the first one's extra time goes.

One fresh process loads a folder, then runs the same request twice, timing each and its allocator
peak. Triton's own hooks (`triton.knobs.runtime.jit_cache_hook` before a kernel compiles,
`jit_post_compile_hook` after) count and time every kernel compiled on the way, per kernel, so
the first request's extra time can be split into compilation and the rest (graph capture, cuDNN's
algorithm search, allocator growth). Run it with an empty Triton cache to see a fresh machine:

    TRITON_CACHE_DIR=$(mktemp -d) python bench/first_request.py --model /tmp/helios-random-distilled \\
        --height 384 --width 640 --num-frames 240 --pyramid-steps 1 1 1 --out DIR

Writes DIR/first_request.json and prints one line per request and per compiled kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.bench_gpu import MAX_TOKENS, NEGATIVE, PROMPT  # noqa: E402


class CompileLog:
    """Each Triton compile's kernel name and seconds, from Triton's before/after hooks."""

    def __init__(self):
        self.started: dict[int, float] = {}  # by the compile's key, which both hooks receive
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def install(self) -> None:
        import triton

        triton.knobs.runtime.jit_cache_hook = self.before
        triton.knobs.runtime.jit_post_compile_hook = self.after

    def before(self, *, key, **_) -> None:
        self.started[id(key)] = time.perf_counter()
        return None  # a true value would tell Triton to skip the compile

    def after(self, *, key, fn, **_) -> None:
        self.seconds[fn.name].append(time.perf_counter() - self.started.pop(id(key)))

    def take(self) -> dict[str, list[float]]:
        out, self.seconds = dict(self.seconds), defaultdict(list)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--num-frames", type=int, default=240)
    parser.add_argument("--pyramid-steps", type=int, nargs=3, default=[1, 1, 1])
    parser.add_argument("--vae-dtype", default="bfloat16")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    log = CompileLog()
    log.install()
    from helios_backends.pipeline import Helios
    from helios_backends.request import GenerationRequest

    t0 = time.perf_counter()
    helios = Helios.from_pretrained(args.model, device="cuda", dtype="bfloat16", vae_dtype=args.vae_dtype)
    torch.cuda.synchronize()
    loaded = time.perf_counter() - t0
    result = {"load_s": loaded, "load_compiles": log.take(), "requests": []}
    print(f"load {loaded:.2f} s", flush=True)
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, max_sequence_length=MAX_TOKENS,
                                height=args.height, width=args.width, num_frames=args.num_frames,
                                pyramid_steps=args.pyramid_steps, seed=0)
    for index in range(2):
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        first_chunk = None
        for _ in helios.stream(request):
            if first_chunk is None:
                torch.cuda.synchronize()
                first_chunk = time.perf_counter() - start
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        compiles = log.take()
        row = {"wall_s": wall, "first_chunk_s": first_chunk, "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
               "compiles": {name: len(s) for name, s in compiles.items()},
               "compile_s": {name: round(sum(s), 3) for name, s in compiles.items()}}
        result["requests"].append(row)
        total = sum(row["compile_s"].values())
        print(f"request {index + 1}: {wall:.2f} s (first chunk {first_chunk:.2f} s), peak {row['peak_allocated_gib']:.2f} GiB, "
              f"{sum(row['compiles'].values())} Triton compiles in {total:.2f} s", flush=True)
        for name in sorted(compiles, key=lambda n: -row["compile_s"][n]):
            print(f"  {name}: {row['compiles'][name]} x, {row['compile_s'][name]:.2f} s", flush=True)
    (args.out / "first_request.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
