"""Where a fresh `helios generate` process spends its wall time, thread by thread.

Runs the CLI in this process (`helios_backends.cli.main`, the console script's function) with a
sampler thread that reads every thread's Python stack every few milliseconds
(`sys._current_frames`). Each sample is labelled by its outermost helios_backends frames (the phase),
its innermost one and its innermost frame overall, so the report shows, per thread, the phases in
time order (imports, each load, the warm-up compile, the chunks, the mp4) and where each phase's
time goes. The time
before `main` (interpreter start) comes from the process's start time in /proc.

    python bench/profile_process.py --out DIR -- generate --model /tmp/h14 --device cuda --output /tmp/v.mp4
    python bench/profile_process.py --out DIR -- generate --prompt fox --height 64 --width 64 --num-frames 33 --output /tmp/v.mp4
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

OURS = f"{os.sep}helios_backends{os.sep}"


def seconds_since_process_start() -> float | None:
    """Now minus this process's start, from /proc (Linux); None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def label(frame, depth: int) -> tuple[str, str, str]:
    """(the outermost `depth` helios_backends frames below the CLI's, the innermost one, the
    innermost frame) of a stack, each as module.function: the phase, the function in it, and where
    that function is."""
    def name(f):
        return f"{Path(f.f_code.co_filename).stem}.{f.f_code.co_name}"

    ours, f = [], frame
    while f is not None:
        if OURS in f.f_code.co_filename and Path(f.f_code.co_filename).stem != "cli":
            ours.append(name(f))
        f = f.f_back
    leaf = name(frame)
    if "importlib" in frame.f_code.co_filename or "<frozen" in frame.f_code.co_filename:
        leaf = "(import)"
    return " > ".join(reversed(ours[-depth:])) or "cli", ours[0] if ours else "cli", leaf


class Sampler(threading.Thread):
    def __init__(self, interval: float, depth: int):
        super().__init__(name="sampler", daemon=True)
        self.interval, self.depth, self.samples, self.done = interval, depth, [], threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        me = threading.get_ident()
        while not self.done.is_set():
            t = time.perf_counter() - self.t0
            names = {th.ident: th.name for th in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    self.samples.append((t, names.get(ident, str(ident)), *label(frame, self.depth)))
            time.sleep(self.interval)


def timeline(samples, interval: float, min_s: float) -> list[str]:
    """Per thread, runs of one phase at least min_s long, with the functions they spent it in."""
    lines, threads = [], []
    for _, thread, *_ in samples:
        if thread not in threads:
            threads.append(thread)
    for thread in threads:
        mine = [s for s in samples if s[1] == thread]
        lines.append(f"\nthread {thread} ({mine[0][0]:.2f}-{mine[-1][0]:.2f} s):")
        runs = []
        for t, _, phase, ours, leaf in mine:
            where = f"{ours} > {leaf}" if ours != leaf else ours
            if runs and runs[-1][2] == phase:
                runs[-1][1] = t
                runs[-1][3][where] += 1
            else:
                runs.append([t, t, phase, Counter({where: 1})])
        for start, end, phase, places in runs:
            if end - start + interval >= min_s:
                top = ", ".join(f"{where} {n * interval:.2f}" for where, n in places.most_common(4))
                lines.append(f"  {start:7.2f}-{end:7.2f} s  {end - start + interval:6.2f} s  {phase}\n      [{top}]")
    return lines


def totals(samples, interval: float, top: int) -> list[str]:
    counts = Counter((thread, ours, leaf) for _, thread, _, ours, leaf in samples)
    return [f"  {n * interval:7.2f} s  {thread}: {ours} > {leaf}" for (thread, ours, leaf), n in counts.most_common(top)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], usage="%(prog)s [--out DIR] -- CLI ARGS")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--min-s", type=float, default=0.15, help="shortest run of one phase shown in the timeline")
    parser.add_argument("--depth", type=int, default=2, help="helios_backends frames below the CLI's, from the outermost, that name a phase")
    parser.add_argument("cli", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cli_args = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    before_main = seconds_since_process_start()
    sampler = Sampler(args.interval, args.depth)
    sampler.start()
    from helios_backends.cli import main as cli_main

    rc = cli_main(cli_args)
    wall = time.perf_counter() - sampler.t0
    sampler.done.set()
    sampler.join()
    lines = [f"command: helios {' '.join(cli_args)}",
             f"process start -> sampler start: {before_main:.2f} s" if before_main is not None else "process start: unknown",
             f"cli main (imports included): {wall:.2f} s, rc {rc}; sample interval {args.interval * 1e3:.0f} ms",
             "\ntimeline (phase: outermost helios_backends frames; [innermost ours > innermost frame, seconds]):"]
    lines += timeline(sampler.samples, args.interval, args.min_s)
    lines += ["\ntotals by (thread, innermost ours, innermost):"] + totals(sampler.samples, args.interval, 40)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile_process.md").write_text(text)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
