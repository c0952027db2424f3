"""On SGLang-Diffusion's NPU platform the Helios core runs on the NPU backend's ops (tested on CPU).

The engine runs in a subprocess (tests/sglang/ascend_request.py) on stand-ins: SGLang's NPU
platform, declared in SGLang's platform plugin group and chosen by its
SGLANG_DIFFUSION_PLATFORM_OVERRIDE (tests/sglang/ascend_platform.py), and torch_npu
(tests/npu_standin.py). SGLang's own GPU worker, one rank in that process, builds our pipeline
from the folder and executes one request; no server starts, because the stand-in platform keeps
tensors on the host and a served worker would need the real one's devices. What this proves: the
engine's choice of its NPU platform is what selects the NPU ops, every kernel is called, and the
frames equal the core's on CPU torch ops (SGLang's pipeline hands out frames only, so the latents'
1e-5 agreement shows as at most one uint8 level).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from helios_backends.request import GenerationRequest

from .conftest import HEIGHT, WIDTH, core_frames, engine_env

ROOT = Path(__file__).resolve().parents[2]
FIELDS = dict(prompt="a fox in snow", height=HEIGHT, width=WIDTH, num_frames=33, seed=3)


def test_a_request_on_sglangs_npu_platform_runs_the_core_on_npu_ops_with_the_cpu_frames(tiny_folders, fp32_config, tmp_path):
    folder = tiny_folders["distilled"]
    request = {**FIELDS, "pyramid_steps": [1, 1, 1]}
    run = subprocess.run(
        [sys.executable, "-m", "tests.sglang.ascend_request", str(folder), str(fp32_config), str(tmp_path), json.dumps(request)],
        cwd=ROOT, env=engine_env(), capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ran = json.loads((tmp_path / "run.json").read_text())
    assert (ran["platform"], ran["device_type"]) == ("AscendStandinPlatform", "npu")
    assert ran["pipeline"] == "helios_sglang.pipeline.HeliosCorePyramidPipeline" and ran["ops"] == "NpuOps"
    assert all(ran["calls"].get(op, 0) > 0 for op in ("npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul")), ran["calls"]
    served = np.load(tmp_path / "frames.npy")
    expected = core_frames(folder, GenerationRequest(**FIELDS, pyramid_steps=(1, 1, 1)))
    assert served.shape == expected.shape == (33, HEIGHT, WIDTH, 3)
    assert np.abs(served.astype(np.int16) - expected).max() <= 1
