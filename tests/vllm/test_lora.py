"""LoRA on `vllm serve --omni`: --lora-path / --lora-scale and the request `lora` field on the core's merge.

The server is started with two default adapters, `--lora-backend distill --lora-path
FOLDER SECOND:0.4 --lora-scale 0.7` (FOLDER holds one adapter file at its top; both are merged at
load, FOLDER at 0.7 and SECOND at its own 0.4), and so may load, per request, FOLDER, SECOND or any
adapter inside FOLDER, and nothing else.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helios_backends.pipeline import Helios
from helios_backends.tiny import make_tiny_lora

from .conftest import HEIGHT, WIDTH, core_frames
from .test_serve import MIDDLEWARE, decode, form, served_as

STARTUP_SCALE = 0.7
SECOND_SCALE = 0.4


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm-loras")
    return {
        "folder": folder,
        "startup": make_tiny_lora(folder / "startup.safetensors", seed=1),
        "other": make_tiny_lora(folder / "more" / "other.safetensors", seed=2),
        "second": make_tiny_lora(tmp_path_factory.mktemp("second") / "second.safetensors", seed=6),
        "outside": make_tiny_lora(tmp_path_factory.mktemp("not-configured") / "outside.safetensors", seed=3),
    }


@pytest.fixture(scope="module")
def server(tiny_folders, shared_server, loras):
    paths = (str(loras["folder"]), f"{loras['second']}:{SECOND_SCALE}")
    return shared_server.get(tiny_folders["distilled"], *MIDDLEWARE, "--lora-backend", "distill", "--lora-path", *paths,
                             "--lora-scale", str(STARTUP_SCALE))


@pytest.fixture(scope="module")
def own_core(tiny_folders) -> Helios:
    """A core of its own: the session-wide reference core keeps its base weights."""
    return Helios.from_pretrained(tiny_folders["distilled"])


def reference(helios: Helios, adapters, seed: int) -> np.ndarray:
    helios.set_loras(adapters)
    frames = core_frames(helios, prompt="a red fox running through snow", height=HEIGHT, width=WIDTH, num_frames=33, pyramid_steps=(1, 1, 1), seed=seed)
    return served_as(frames)


def default_set(loras) -> list:
    return [(loras["folder"], STARTUP_SCALE), (loras["second"], SECOND_SCALE)]


def sync(server, seed: int, lora: dict | None = None, route: str = "/v1/videos/sync"):
    data = form(num_frames=33, seed=seed)
    if lora is not None:
        data["lora"] = json.dumps(lora)
    return server.client.post(route, data=data)


def test_the_default_set_and_a_request_lora_each_give_the_core_frames_with_those_loras(server, own_core, loras):
    plain = sync(server, seed=4)
    assert plain.status_code == 200, plain.text
    assert np.array_equal(decode(plain.content), reference(own_core, default_set(loras), seed=4))
    assert not np.array_equal(decode(plain.content), reference(own_core, default_set(loras)[:1], seed=4))  # both count
    asked = sync(server, seed=4, lora={"name": "other", "path": str(loras["other"]), "scale": 0.5})
    assert asked.status_code == 200, asked.text
    assert np.array_equal(decode(asked.content), reference(own_core, [(loras["other"], 0.5)], seed=4))
    assert not np.array_equal(decode(asked.content), decode(plain.content))


def test_an_unconfigured_lora_path_is_refused_naming_lora_and_nothing_is_queued(server, loras):
    before = server.client.get("/v1/videos").json()["data"]
    for path, route in ((loras["outside"], "/v1/videos"), (loras["folder"] / ".." / "not-configured", "/v1/videos/sync")):
        response = sync(server, seed=1, lora={"name": "x", "path": str(path)}, route=route)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "lora"
        assert "not an adapter this server was configured with" in response.text
    assert server.client.get("/v1/videos").json()["data"] == before


def test_a_bad_adapter_fails_its_request_naming_it_and_the_server_keeps_serving(server, own_core, loras):
    bad = loras["folder"] / "more" / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    before = server.client.get("/v1/videos").json()["data"]
    response = sync(server, seed=5, lora={"name": "bad", "path": str(bad)}, route="/v1/videos")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("Helios request: lora: adapter 'bad': LoRA "), response.text
    assert server.client.get("/v1/videos").json()["data"] == before  # refused before it was queued
    after = sync(server, seed=5)
    assert after.status_code == 200, after.text
    assert np.array_equal(decode(after.content), reference(own_core, default_set(loras), seed=5))
