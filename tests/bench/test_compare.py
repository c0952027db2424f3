"""bench/compare.py on the tiny model on CPU: every backend CI can run, run for real, agreeing with the core.

The engine backends are those whose environment CI builds (a lock in requirements/, as
scripts/test decides which suites run); they are required here, not skipped: compare.py builds
or reuses their environments through scripts/setup-env and starts real servers. gamma 0.3
because diffusers' fp32 Cholesky fails at the released 1/3 on CPU (README: known difference).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from helios_backends.tiny import make_tiny

REPO = Path(__file__).resolve().parents[2]
ENGINE_BACKENDS = {"sglang": ["sglang-plugin"], "vllm": ["vllm-plugin", "vllm-plugin-stream"]}


def expected_backends() -> list[str]:
    engines = [b for env, names in ENGINE_BACKENDS.items() if (REPO / "requirements" / f"{env}.txt").is_file() for b in names]
    return ["core", "diffusers", *engines]


def load_compare():
    spec = importlib.util.spec_from_file_location("bench_compare", REPO / "bench" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_compare_runs_every_backend_and_each_output_equals_the_core(tmp_path):
    folder = make_tiny(tmp_path / "tiny", "distilled")
    backends = expected_backends()
    out = tmp_path / "results"
    # The core env given as a folder shaped like one, as bench/engines-gpu does on a device without a registry.
    given = tmp_path / "given-core-env"
    (given / "bin").mkdir(parents=True)
    (given / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (given / "bin" / "python").chmod(0o755)
    command = [sys.executable, str(REPO / "bench" / "compare.py"), "--model", str(folder), "--gamma", "0.3",
               "--height", "64", "--width", "128", "--num-frames", "33", "--steps", "1", "1", "1", "--seed", "3",
               "--warmup", "0", "--repeats", "1", "--backends", *backends, "--env", f"core={given}", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert f"== core ({given})" in done.stdout and f"== diffusers ({given})" in done.stdout
    rows = {r["backend"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert list(rows) == backends
    for name, row in rows.items():
        assert row["status"] == "ok", f"{name}: {row['reason']}"
        assert row["frames"] == 33 and row["e2e_s"] > 0 and row["fps"] > 0 and row["startup_s"] > 0, row
        assert row["peak_host_mib"] > 100, row  # a torch process tree, measured
        assert row["equal"] == ("ref" if name == "core" else "yes"), f"{name}: {row['equal_note']}"
    assert rows["core"]["ttfc_s"] > 0
    if "vllm-plugin-stream" in rows:
        assert 0 < rows["vllm-plugin-stream"]["ttfc_s"] <= rows["vllm-plugin-stream"]["e2e_s"]
    table = (out / "compare.md").read_text()
    for name in backends:
        assert f"| {name} | ok |" in table
    with Image.open(out / "compare.png") as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 200


def test_a_backend_that_cannot_run_says_why_in_the_table_and_the_chart(tmp_path):
    compare = load_compare()
    rows = [compare.Row("core", startup_s=3.0, e2e_s=1.0, frames=33, fps=33.0, ttfc_s=0.5, peak_host_mib=700, mem_kind="PSS", equal="ref"),
            compare.Row("sglang-native", status="failed", reason=compare.explain("AttributeError: no attribute 'fused_norm_scale_shift_cpu'")),
            compare.Row("vllm-native", status="unavailable", reason="no requirements/vllm.txt in this checkout")]
    text = compare.table(rows, ["# t"])
    assert "| sglang-native | **failed** |" in text and "sgl-kernel" in text
    assert "| vllm-native | **unavailable** |" in text and "no requirements/vllm.txt" in text
    compare.chart(rows, tmp_path / "c.png", "t")
    with Image.open(tmp_path / "c.png") as image:
        assert image.format == "PNG"


def test_vae_dtype_and_layer_offload_reach_each_engine_through_its_own_flags(tmp_path):
    """--vae-dtype and --offload are what every row runs with: the core's spec, SGLang's pipeline config and
    flag, vLLM-Omni's flags; diffusers, which this bench runs resident only, is refused rather than run resident."""
    import argparse

    compare = load_compare()
    args = argparse.Namespace(device="cuda", dtype="bfloat16", vae_dtype="bfloat16", offload="layer", env={}, warmup=1,
                              repeats=1, image=None, video=None)
    bench = compare.Bench(args, tmp_path / "model", {"task": "t2v"}, {"gamma": 1 / 3}, tmp_path)
    env = tmp_path / "env"

    sglang, _ = bench.engine_command("sglang-plugin", env, 1234, tmp_path)
    assert sglang[sglang.index("--dit-layerwise-offload") + 1] == "true"
    config = json.loads(Path(sglang[sglang.index("--pipeline-config-path") + 1]).read_text())
    assert config == {"dit_precision": "bf16", "vae_precision": "bf16"}

    vllm, _ = bench.engine_command("vllm-plugin", env, 1234, tmp_path)
    assert "--enable-layerwise-offload" in vllm
    assert json.loads(vllm[vllm.index("--additional-config") + 1]) == {"helios": {"vae_dtype": "bfloat16"}}

    bench.write_spec(tmp_path / "spec.json")
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert (spec["vae_dtype"], spec["offload"]) == ("bfloat16", "layer")

    row = bench.run("diffusers")
    assert row.status == "unavailable" and "--offload" in row.reason

    args.vae_dtype, args.offload = "float32", "none"
    sglang, _ = bench.engine_command("sglang-plugin", env, 1234, tmp_path)
    vllm, _ = bench.engine_command("vllm-plugin", env, 1234, tmp_path)
    assert "--dit-layerwise-offload" not in sglang and "--enable-layerwise-offload" not in vllm and "--additional-config" not in vllm
    assert json.loads((tmp_path / "pipeline_config.json").read_text())["vae_precision"] == "fp32"
