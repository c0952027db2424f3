"""Fixtures for the vLLM-Omni plugin suite: tiny Helios folders and real `vllm serve --omni` servers.

Every server is a subprocess bound to 127.0.0.1 on a free port, reached over HTTP only; a module
starts one and shares it. A server that does not come up fails the test with its log's tail.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from helios_backends.pipeline import Helios  # noqa: E402
from helios_backends.request import GenerationRequest  # noqa: E402
from helios_backends.tiny import make_tiny  # noqa: E402

HEIGHT, WIDTH = 64, 128
FAST = {"pyramid_steps": [1, 1, 1]}  # one step per pyramid stage keeps a chunk under a second
STARTUP_TIMEOUT_S = 240
VLLM = Path(sys.executable).with_name("vllm")


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("helios-tiny")
    return {v: make_tiny(root / v, v) for v in ("base", "distilled")}


@pytest.fixture(scope="session")
def core(tiny_folders) -> dict[str, Helios]:
    """The core loaded directly in the test process: the reference every engine output must equal."""
    return {v: Helios.from_pretrained(folder) for v, folder in tiny_folders.items()}


def core_frames(helios: Helios, **fields) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of the core's own run of one request."""
    request = GenerationRequest(**fields)
    return torch.cat([chunk.frames for chunk in helios.stream(request)], dim=1)[0].numpy()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Server:
    """`vllm serve FOLDER --omni` as a subprocess in its own process group, logging to a file."""

    def __init__(self, folder: Path, log: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [str(VLLM), "serve", str(folder), "--omni", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--dtype", "float32", "--enforce-eager", *extra]
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.client.get("/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise RuntimeError(f"vllm serve not healthy after {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()


def start_server(folder: Path, tmp_path_factory, name: str, *extra: str) -> Server:
    if not VLLM.exists() and shutil.which("vllm") is None:
        raise RuntimeError(f"no vllm executable next to {sys.executable}: run the suite in the vllm env (scripts/test vllm)")
    server = Server(folder, tmp_path_factory.mktemp(name) / "server.log", *extra)
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server
