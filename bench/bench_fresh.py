"""One video from a fresh process, as a user makes it: `helios generate` beside a plain diffusers
script (bench/diffusers_generate.py) on the same folder and request.

Each row is a new Python process timed from spawn to exit, so interpreter start, imports, weight
loading, compilation, graph capture, the denoising and the mp4 all count, as they do for a user.
The folder is read once first so every row finds it page-cached. Device memory is what
nvidia-smi reports for the process over its whole life (sampled once a second), host memory its
peak PSS.

    python bench/bench_fresh.py --model /tmp/helios-random-distilled --device cuda --height 384 --width 640 \\
        --num-frames 240 --pyramid-steps 1 1 1 --rows helios helios-layer diffusers --out DIR
    python bench/bench_fresh.py --device cpu --num-frames 33 --out DIR    # the built-in tiny model

Rows: helios (the CLI's defaults for the device), helios-layer (`--offload layer`), helios-fp8
(`--quantization fp8`), diffusers. Writes DIR/fresh.md and DIR/fresh.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helios_harness.launch import Launched  # noqa: E402

OURS = {"helios": [], "helios-layer": ["--offload", "layer"], "helios-fp8": ["--quantization", "fp8"]}
ROWS = (*OURS, "diffusers")


@dataclass
class Row:
    name: str
    command: str
    status: str = "ok"
    wall_s: float = 0.0
    frames: int = 0
    fps: float = 0.0
    peak_gpu_mib: int = 0
    gpu_kind: str = "n/a"
    peak_host_mib: int = 0
    reason: str = ""


def read_once(folder: Path) -> None:
    """Page-cache the folder, as the second of a user's runs finds it."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def command(row: str, args, output: Path) -> list[str]:
    size = []
    for flag, value in (("--height", args.height), ("--width", args.width), ("--num-frames", args.num_frames)):
        if value is not None:
            size += [flag, str(value)]
    steps = ["--pyramid-steps", *map(str, args.pyramid_steps)] if args.pyramid_steps else []
    request = ["--prompt", args.prompt, "--seed", str(args.seed), *size, *steps]
    if row == "diffusers":
        return [sys.executable, str(REPO / "bench" / "diffusers_generate.py"), "--model", str(args.model), "--device", args.device,
                *request, "--output", str(output)]
    cli = "import sys; from helios_backends.cli import main; sys.exit(main())"  # `helios generate`, as installed
    return [sys.executable, "-c", cli, "generate", "--model", str(args.model), "--device", args.device, *request, *OURS[row],
            "--output", str(output)]


def run_row(name: str, args, out: Path) -> Row:
    from helios_backends.media_read import decode_mp4

    video = out / f"{name}.mp4"
    video.unlink(missing_ok=True)
    argv = command(name, args, video)
    row = Row(name, " ".join(a if " " not in a else repr(a) for a in argv))
    process = Launched(argv, out / f"{name}.log", cwd=out, gpu=args.device.startswith("cuda"))
    try:
        code = process.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        code = None
        row.reason = f"no exit within {args.timeout:g} s"
    row.wall_s = time.time() - process.started
    process.stop()  # stops the memory sampler too (and a process that outlived the timeout)
    memory = process.memory
    row.peak_gpu_mib, row.gpu_kind, row.peak_host_mib = memory.peak_gpu >> 20, memory.gpu_kind, memory.peak_host >> 20
    if code != 0 or not video.is_file():
        tail = process.log_tail().strip().splitlines()[-1:] or [""]
        row.status, row.reason = "failed", row.reason or f"exit {code}: {tail[0][-300:]}"
        return row
    row.frames = int(decode_mp4(video).shape[0])
    row.fps = row.frames / row.wall_s
    return row


def table(rows: list[Row], header: list[str]) -> str:
    base = next((r for r in rows if r.name == "diffusers" and r.status == "ok"), None)
    lines = [*header, "", "| row | status | wall s (spawn -> exit) | frames | FPS | / diffusers wall | peak device MiB (nvidia-smi) | peak host MiB (PSS) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r.wall_s / base.wall_s:.2f}x" if base is not None and r.status == "ok" else "-"
        device = f"{r.peak_gpu_mib}" if r.gpu_kind != "n/a" else "-"
        status = r.status if r.status == "ok" else f"**{r.status}**: {r.reason}"
        lines.append(f"| {r.name} | {status} | {r.wall_s:.1f} | {r.frames} | {r.fps:.2f} | {ratio} | {device} | {r.peak_host_mib} |")
    lines += ["", "Commands (run in the output folder):", ""] + [f"- {r.name}: `{r.command}`" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a Helios folder (default: the built-in tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompt", default="A red fox trots through fresh snow at dawn, the camera tracking low beside it.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--pyramid-steps", type=int, nargs="+")
    parser.add_argument("--rows", nargs="+", default=["helios", "diffusers"], choices=ROWS)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per row")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "fresh"))
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from helios_backends.cli import default_model_dir

        args.model = default_model_dir()
    args.model = Path(args.model).resolve()
    read_once(args.model)
    rows = []
    for name in args.rows:
        rows.append(run_row(name, args, out))
        print(f"{name}: {rows[-1].status} {rows[-1].wall_s:.1f} s {rows[-1].reason}", flush=True)
    header = ["# One video from a fresh process", "",
              f"Model `{args.model}` on {args.device}; host {platform.node()} ({os.cpu_count()} CPUs); {time.strftime('%Y-%m-%d %H:%M')}.",
              f"Command: `python bench/bench_fresh.py {' '.join(sys.argv[1:] if argv is None else argv)}`"]
    text = table(rows, header)
    (out / "fresh.md").write_text(text)
    (out / "fresh.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print(text)
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
