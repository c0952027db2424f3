"""The GPU benchmarks run end to end on a tiny CPU model (so they do not rot between GPU sessions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str) -> str:
    """`python COMMAND --config tiny --device cpu ...` from the repository root."""
    done = subprocess.run([sys.executable, *command, "--config", "tiny", "--device", "cpu"], capture_output=True, text=True,
                          timeout=1500, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_gpu_times_each_of_our_configurations_beside_diffusers_and_checks_the_fast_path(tmp_path):
    run("bench/bench_gpu.py", "--gamma", "0.3", "--runs", "check", "distilled-111", "--size", "64", "64", "33",
        "--ours", "mp4", "no-mp4", "fp8", "--out", str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| Distilled")]
    assert [r.split("|")[2].strip() for r in rows] == ["ours", "ours (no mp4)", "ours fp8", "diffusers"]
    assert all(r.split("|")[-2].strip().endswith("x") for r in rows[:3])
    assert "Distilled [1,1,1]: fp8 vs bf16 (ours): latents relative L2" in table
    assert "| text s (calls) |" in table
    assert all(r.split("|")[6].strip().endswith("(1)") for r in rows)  # each side encoded the prompt once
    assert "fast path vs reference path latents" in table


def test_profile_step_times_every_pyramid_stage_and_tables_the_kernels(tmp_path):
    run("-m", "bench.profile_step", "--reps", "1", "--top", "5", "--out", str(tmp_path))  # the package form of a script
    text = (tmp_path / "profile_step.md").read_text()
    assert text.count("ours graphed / diffusers") == 3 and "diffusers compiled, stage" in text
