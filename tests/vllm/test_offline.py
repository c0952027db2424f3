"""The offline path, `Omni(model=<tiny folder>).generate(...)`, in request mode and in step mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from helios_backends.request import GenerationRequest

from .conftest import HEIGHT, WIDTH, core_frames

SCRIPT = Path(__file__).with_name("offline_generate.py")


def offline(folder: Path, tmp_path: Path, engine_args: dict, requests: list[dict]) -> list[np.ndarray]:
    return offline_with_log(folder, tmp_path, engine_args, requests)[0]


def offline_with_log(folder: Path, tmp_path: Path, engine_args: dict, requests: list[dict]) -> tuple[list[np.ndarray], str]:
    """The outputs of each request, and the engine's log (its workers' included)."""
    out = tmp_path / "out.npz"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), str(out), json.dumps(engine_args), json.dumps(requests)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with np.load(out) as data:
        return [data[f"out{i}"] for i in range(len(requests))], proc.stdout + proc.stderr


def core_latents(helios, **fields) -> np.ndarray:
    return torch.cat([chunk.latents.float() for chunk in helios.stream(GenerationRequest(**fields), decode=False)], dim=2).numpy()


def test_offline_base_request_mode_equals_the_core_frames_and_latents(tiny_folders, core, tmp_path):
    fields = dict(prompt="a cat", height=HEIGHT, width=WIDTH, num_frames=66, seed=9, num_inference_steps=2, guidance_scale=3.0)
    sampling = {k: v for k, v in fields.items()}
    frames, latents = offline(tiny_folders["base"], tmp_path, {}, [sampling, {**sampling, "extra_args": {"output_type": "latent"}}])
    assert frames.dtype == np.uint8 and frames.shape == (1, 65, HEIGHT, WIDTH, 3)
    assert np.array_equal(frames[0], core_frames(core["base"], **fields))
    assert np.array_equal(latents, core_latents(core["base"], **fields))


def test_offline_step_mode_equals_the_core(tiny_folders, core, tmp_path):
    fields = dict(prompt="a cat", height=HEIGHT, width=WIDTH, num_frames=66, seed=9)
    sampling = {**fields, "extra_args": {"pyramid_steps": [1, 2, 1], "zero_steps": 0}}
    (frames,) = offline(tiny_folders["distilled"], tmp_path, {"step_execution": True}, [sampling])
    assert np.array_equal(frames[0], core_frames(core["distilled"], **fields, pyramid_steps=(1, 2, 1), zero_steps=0))


def test_engine_offload_flags_run_the_cores_offload_with_identical_frames(tiny_folders, core, tmp_path):
    fields = dict(prompt="a cat", height=HEIGHT, width=WIDTH, num_frames=33, seed=4)
    sampling = {**fields, "extra_args": {"pyramid_steps": [1, 1, 1]}}
    expected = core_frames(core["distilled"], **fields, pyramid_steps=(1, 1, 1))
    for flag, mode in (("enable_layerwise_offload", "layer"), ("enable_cpu_offload", "model")):
        (frames,), log = offline_with_log(tiny_folders["distilled"], tmp_path, {flag: True}, [dict(sampling)])
        assert np.array_equal(frames[0], expected), flag
        assert f"Helios core: offload={mode} " in log
        # After the request the worker's core holds no block copy on the device: the session released them.
        assert "Helios core: request released; offloaded blocks on the device: []" in log


def test_step_mode_releases_the_offloaded_blocks_after_a_request(tiny_folders, tmp_path):
    sampling = dict(prompt="a cat", height=HEIGHT, width=WIDTH, num_frames=33, seed=4, extra_args={"pyramid_steps": [1, 1, 1]})
    (frames,), log = offline_with_log(tiny_folders["distilled"], tmp_path, {"enable_layerwise_offload": True, "step_execution": True}, [sampling])
    assert frames.shape == (1, 33, HEIGHT, WIDTH, 3) and "Helios core: offload=layer " in log
    assert "Helios core: request released; offloaded blocks on the device: []" in log
