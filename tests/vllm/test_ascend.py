"""On an Ascend platform vLLM-Omni runs the Helios core on the NPU backend's ops (tested on CPU).

The engine runs in a subprocess (tests/vllm/ascend_request.py) on stand-ins: vllm-ascend's and
vLLM-Omni's NPU platforms registered through vLLM's own platform plugin groups
(tests/vllm/ascend_platform), and torch_npu (tests/npu_standin.py). The engine builds our
pipeline from the folder and runs one request through its `forward`, in process; no server starts,
because the stand-in platform keeps tensors on the host and a served worker would need the real
one's devices. What this proves: the engine's choice of an Ascend platform is what selects the
NPU ops, every kernel is called, and the latents equal the core's on CPU torch ops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from helios_backends.request import GenerationRequest

from ..conftest import relative_error
from .conftest import HEIGHT, WIDTH

ROOT = Path(__file__).resolve().parents[2]
FIELDS = dict(prompt="a fox in snow", height=HEIGHT, width=WIDTH, num_frames=33, seed=3)


def test_a_request_on_vllm_ascends_platform_runs_the_core_on_npu_ops_with_the_cpu_latents(tiny_folders, core, tmp_path):
    sampling = {**FIELDS, "extra_args": {"output_type": "latent", "pyramid_steps": [1, 1, 1]}}
    run = subprocess.run(
        [sys.executable, "-m", "tests.vllm.ascend_request", str(tiny_folders["distilled"]), str(tmp_path), json.dumps(sampling)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ran = json.loads((tmp_path / "run.json").read_text())
    assert (ran["platform"], ran["omni_platform"], ran["device_type"]) == ("AscendStandinPlatform", "AscendStandinOmniPlatform", "npu")
    assert ran["pipeline"] == "helios_vllm.pipeline.HeliosCorePipeline" and ran["ops"] == "NpuOps"
    assert all(ran["calls"].get(op, 0) > 0 for op in ("npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul")), ran["calls"]
    served = torch.load(tmp_path / "latents.pt")
    request = GenerationRequest(**FIELDS, pyramid_steps=(1, 1, 1))
    reference = torch.cat([chunk.latents for chunk in core["distilled"].stream(request, decode=False)], dim=2)
    assert served.shape == reference.shape
    assert relative_error(served, reference) <= 1e-5
