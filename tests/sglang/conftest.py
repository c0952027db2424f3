"""Fixtures for the SGLang-Diffusion plugin suite: tiny Helios folders, real `sglang` processes.

Every process runs SGLang's CPU platform in fp32 without Inductor or warm-up (engines.md's CPU
recipe); the core's own output in this process is the oracle the served videos must equal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ENGINE_ENV = {
    "SGLANG_EXTERNAL_MODEL_PACKAGE": "sglang_plugin",
    "SGLANG_DIFFUSION_PLATFORM_OVERRIDE": "cpu",
    "TORCHDYNAMO_DISABLE": "1",
    "HF_HUB_OFFLINE": "1",
}
for _key, _value in ENGINE_ENV.items():
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helios_backends.pipeline import Helios  # noqa: E402
from helios_backends.tiny import make_tiny  # noqa: E402
from helios_backends.video import decode_mp4  # noqa: E402

HEIGHT, WIDTH = 64, 128
SGLANG = str(Path(sys.executable).with_name("sglang"))
START_TIMEOUT_S = 420
JOB_TIMEOUT_S = 300


def engine_env() -> dict[str, str]:
    return {**os.environ, **ENGINE_ENV}


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`sglang serve` as a subprocess in its own process group, spoken to over HTTP only."""

    def __init__(self, folder: Path, config: Path, workdir: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.workdir = workdir
        command = [
            SGLANG, "serve", "--model-path", str(folder), "--pipeline-config-path", str(config),
            "--host", "127.0.0.1", "--port", str(self.port), "--warmup-mode", "off",
            "--output-path", str(workdir / "outputs"), *extra,
        ]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            command, cwd=workdir, env=engine_env(), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sglang serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(2)
        raise RuntimeError(f"sglang serve not healthy after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def post_video(self, body: dict) -> tuple[int, dict]:
        status, payload = self.request("POST", "/v1/videos", body)
        return status, json.loads(payload)

    def wait_job(self, job_id: str) -> dict:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            status, payload = self.request("GET", f"/v1/videos/{job_id}")
            assert status == 200, payload
            job = json.loads(payload)
            if job["status"] in ("completed", "failed"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} unfinished after {JOB_TIMEOUT_S} s:\n{self.log_tail()}")

    def video_frames(self, job_id: str) -> np.ndarray:
        status, payload = self.request("GET", f"/v1/videos/{job_id}/content")
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
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def start_server(folder: Path, config: Path, workdir: Path, *extra: str) -> Server:
    server = Server(folder, config, workdir, *extra)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def run_generate(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([SGLANG, "generate", *args], cwd=cwd, env=engine_env(), capture_output=True, text=True, timeout=timeout)


def copy_folder(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target
