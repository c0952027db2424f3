"""Fixtures for the SGLang-Diffusion plugin suite: tiny Helios folders, real `sglang` processes.

Every process runs SGLang's CPU platform in fp32 without Inductor or warm-up (engines.md's CPU
recipe); the core's own output in this process is the oracle the served videos must equal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ENGINE_ENV = {
    "SGLANG_EXTERNAL_MODEL_PACKAGE": "helios_sglang",
    "SGLANG_DIFFUSION_PLATFORM_OVERRIDE": "cpu",
    "TORCHDYNAMO_DISABLE": "1",
    "HF_HUB_OFFLINE": "1",
}
for _key, _value in ENGINE_ENV.items():
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helios_harness.launch import Http, Launched, free_port, wait_ready  # noqa: E402
from tests.shared_server import SharedServer  # noqa: E402
from helios_backends.pipeline import Helios  # noqa: E402
from helios_backends.tiny import make_tiny  # noqa: E402
from helios_backends.media_read import decode_mp4  # noqa: E402

HEIGHT, WIDTH = 64, 128
SGLANG = str(Path(sys.executable).with_name("sglang"))
START_TIMEOUT_S = 420
JOB_TIMEOUT_S = 300


def engine_env(platform: str = "cpu") -> dict[str, str]:
    """The engine processes' environment; platform "cuda" lets SGLang pick its GPU platform."""
    env = {**os.environ, **ENGINE_ENV}
    if platform == "cuda":
        del env["SGLANG_DIFFUSION_PLATFORM_OVERRIDE"]
    return env


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    """variant -> a tiny folder under a name that says nothing about the variant."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {v: make_tiny(root / f"ckpt-{i}", v) for i, v in enumerate(("base", "mid", "distilled"))}


@pytest.fixture(scope="session")
def fp32_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "fp32.json"
    path.write_text(json.dumps({"dit_precision": "fp32", "vae_precision": "fp32"}))
    return path


def core_frames(folder: Path, request) -> np.ndarray:
    """(T, H, W, 3) uint8: the core's own frames for `request`, batch element 0."""
    helios = Helios.from_pretrained(folder)
    return torch.cat([chunk.frames for chunk in helios.stream(request)], dim=1)[0].numpy()


def as_served(frames: np.ndarray, path: Path, fps: int = 24) -> np.ndarray:
    """Frames after SGLang's own mp4 writer (default quality) and decoding, as the server stores them."""
    from sglang.multimodal_gen.configs.sample.sampling_params import DataType
    from sglang.multimodal_gen.runtime.entrypoints.utils import post_process_sample

    post_process_sample(frames, DataType.VIDEO, fps, True, str(path), output_compression=50)
    return decode_mp4(path)


@dataclass
class Server:
    """A `sglang serve` that answers /health, and its job API over HTTP only."""

    process: Launched
    http: Http
    workdir: Path

    def post_video(self, body: dict) -> tuple[int, dict]:
        status, payload = self.http.request("POST", "/v1/videos", json_body=body)
        return status, json.loads(payload)

    def wait_job(self, job_id: str) -> dict:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            status, payload = self.http.request("GET", f"/v1/videos/{job_id}")
            assert status == 200, payload
            job = json.loads(payload)
            if job["status"] in ("completed", "failed"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} unfinished after {JOB_TIMEOUT_S} s:\n{self.process.log_tail()}")

    def video_frames(self, job_id: str) -> np.ndarray:
        status, payload = self.http.request("GET", f"/v1/videos/{job_id}/content")
        assert status == 200, payload[:500]
        path = self.workdir / f"{job_id}.mp4"
        path.write_bytes(payload)
        return decode_mp4(path)

    def generate(self, body: dict) -> np.ndarray:
        """POST, poll to completion, fetch the content: the served frames."""
        status, job = self.post_video(body)
        assert status == 200, job
        done = self.wait_job(job["id"])
        assert done["status"] == "completed", done
        return self.video_frames(job["id"])

    def stop(self) -> None:
        self.process.stop(grace=60)


def start_server(folder: Path, config: Path, workdir: Path, *extra: str, platform: str = "cpu") -> Server:
    """--sleep-on-idle: SGLang's scheduler otherwise polls for requests in a hot loop, a whole core
    of CI's two taken from the test computing its oracle while the server waits."""
    port = free_port()
    command = [
        SGLANG, "serve", "--model-path", str(folder), "--pipeline-config-path", str(config),
        "--host", "127.0.0.1", "--port", str(port), "--warmup-mode", "off", "--sleep-on-idle",
        "--output-path", str(workdir / "outputs"), "--input-save-path", str(workdir / "uploads"), *extra,
    ]
    process = Launched(command, workdir / "server.log", env=engine_env(platform), cwd=workdir, sample_memory=False)
    http = Http(f"http://127.0.0.1:{port}", timeout=120)
    wait_ready(process, http, timeout=START_TIMEOUT_S)
    return Server(process, http, workdir)


@pytest.fixture(scope="session")
def shared_server(fp32_config, tmp_path_factory) -> SharedServer[Server]:
    """`shared_server.get(folder, *flags)`: a CPU `sglang serve` of `folder` in fp32, shared with
    the previous module if it asked for the same (tests/shared_server.py)."""
    servers = SharedServer(lambda folder, *flags: start_server(folder, fp32_config, tmp_path_factory.mktemp("serve"), *flags))
    yield servers
    servers.close()


def run_generate(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([SGLANG, "generate", *args], cwd=cwd, env=engine_env(), capture_output=True, text=True, timeout=timeout)


def copy_folder(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target
