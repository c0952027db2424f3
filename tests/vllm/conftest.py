"""Fixtures for the vLLM-Omni plugin suite: tiny Helios folders and real `vllm serve --omni` servers.

Every server is a subprocess bound to 127.0.0.1 on a free port, reached over HTTP only; a module
starts one, shared with the previous module when that asked for the same options
(tests/shared_server.py). A server that does not come up fails the test with its log's tail.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from helios_harness.launch import Http, Launched, free_port, wait_ready  # noqa: E402
from helios_backends.pipeline import Helios  # noqa: E402
from helios_backends.request import GenerationRequest  # noqa: E402
from helios_backends.tiny import make_tiny  # noqa: E402
from tests.shared_server import SharedServer  # noqa: E402

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


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Server:
    """A `vllm serve FOLDER --omni` that answers /health, and an httpx client for it (multipart uploads)."""

    process: Launched
    url: str
    client: httpx.Client

    def stop(self) -> None:
        self.client.close()
        self.process.stop()


def start_server(folder: Path, tmp_path_factory, name: str, *extra: str) -> Server:
    if not VLLM.exists() and shutil.which("vllm") is None:
        raise RuntimeError(f"no vllm executable next to {sys.executable}: run the suite in the vllm env (scripts/test vllm)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(VLLM), "serve", str(folder), "--omni", "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--enforce-eager", *extra]
    process = Launched(command, tmp_path_factory.mktemp(name) / "server.log", sample_memory=False)
    wait_ready(process, Http(url), timeout=STARTUP_TIMEOUT_S)
    return Server(process, url, httpx.Client(base_url=url, timeout=120))


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory) -> SharedServer[Server]:
    """`shared_server.get(folder, *flags)`: a `vllm serve FOLDER --omni` with `flags`, shared with
    the previous module if it asked for the same (tests/shared_server.py)."""
    servers = SharedServer(lambda folder, *flags: start_server(folder, tmp_path_factory, "serve", *flags))
    yield servers
    servers.close()
