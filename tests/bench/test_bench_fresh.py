"""bench/bench_fresh.py on the tiny model on CPU: `helios generate` and the plain diffusers script,
each a fresh process timed to exit, both writing the requested video."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_each_row_is_a_fresh_process_that_writes_the_video_and_the_table_holds_its_command_and_ratio(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_fresh.py"), "--device", "cpu", "--height", "64", "--width", "128",
                           "--num-frames", "33", "--pyramid-steps", "1", "1", "1", "--rows", "helios", "diffusers", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads((out / "fresh.json").read_text())}
    assert set(rows) == {"helios", "diffusers"}
    for name, row in rows.items():
        assert row["status"] == "ok" and row["frames"] == 33 and row["wall_s"] > 0, row
        assert (out / f"{name}.mp4").is_file()
    assert "generate --model" in rows["helios"]["command"] and "diffusers_generate.py" in rows["diffusers"]["command"]
    table = (out / "fresh.md").read_text()
    assert "| helios | ok |" in table and "| diffusers | ok |" in table and "1.00x" in table  # diffusers is the ratio's base
