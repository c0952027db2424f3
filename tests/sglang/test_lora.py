"""LoRA on `sglang serve`: --lora-path / --lora-scale merged into the core's weights at load.

SGLang's video requests carry no LoRA, so the server's adapter is the one it was started with;
its runtime LoRA routes and request fields naming a LoRA are refused with 400, and the server
keeps serving.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest
from helios_backends.tiny import make_tiny_lora

from .conftest import HEIGHT, WIDTH, as_served, start_server

VARIANT = "distilled"  # no CFG: the cheapest request
SCALE = 0.6
SMALL = {"height": HEIGHT, "width": WIDTH, "pyramid_steps": [1, 1, 1]}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_tiny_lora(tmp_path_factory.mktemp("sglang-lora") / "style.safetensors", seed=4)


@pytest.fixture(scope="module")
def server(tiny_folders, fp32_config, tmp_path_factory, adapter):
    lora = ("--lora-path", str(adapter), "--lora-scale", str(SCALE), "--lora-nickname", "style")
    server = start_server(tiny_folders[VARIANT], fp32_config, tmp_path_factory.mktemp("serve-lora"), *lora)
    yield server
    server.stop()


def core_frames_with(folder, loras, request: GenerationRequest) -> np.ndarray:
    helios = Helios.from_pretrained(folder)
    helios.set_loras(loras)
    return torch.cat([chunk.frames for chunk in helios.stream(request)], dim=1)[0].numpy()


def test_served_video_equals_the_core_with_the_start_up_lora_at_its_scale(server, tiny_folders, adapter, tmp_path):
    served = server.generate({"prompt": "a red fox", "num_frames": 33, "seed": 3, **SMALL})
    request = GenerationRequest(prompt="a red fox", num_frames=33, seed=3, height=HEIGHT, width=WIDTH, pyramid_steps=(1, 1, 1))
    expected = core_frames_with(tiny_folders[VARIANT], [(adapter, SCALE)], request)
    np.testing.assert_array_equal(served, as_served(expected, tmp_path / "ref.mp4"))
    base = core_frames_with(tiny_folders[VARIANT], [], request)
    assert not np.array_equal(expected, base)  # the adapter changes the video


def test_runtime_lora_routes_and_request_lora_fields_are_refused_and_the_server_keeps_serving(server, adapter):
    for route, body in (("/set_lora", {"lora_nickname": "x", "lora_path": "/etc/hostname"}),
                        ("/merge_lora_weights", {"target": "all"}), ("/unmerge_lora_weights", {})):
        status, payload = server.http.request("POST", route, json_body=body)
        assert status == 400, payload
        assert json.loads(payload)["detail"].startswith(f"{route}:"), payload
    status, payload = server.post_video({"prompt": "a fox", "num_frames": 33, "lora_path": str(adapter), **SMALL})
    assert status == 400 and payload["detail"].startswith("lora_path:"), payload
    assert server.generate({"prompt": "still here", "num_frames": 33, **SMALL}).shape == (33, HEIGHT, WIDTH, 3)
