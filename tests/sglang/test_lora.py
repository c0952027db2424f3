"""LoRA on `sglang serve`: --lora-path merged at load, and SGLang's LoRA routes on the core's merge.

The server is started with --lora-path FOLDER (one adapter file at its top, merged at load at
--lora-scale); /set_lora may then name FOLDER or any adapter inside it, and nothing else.
SGLang's video requests carry no LoRA, so request fields naming one are refused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest
from helios_backends.tiny import make_tiny_lora

from .conftest import HEIGHT, WIDTH, as_served

VARIANT = "distilled"  # no CFG: the cheapest request
SCALE = 0.6
SMALL = {"height": HEIGHT, "width": WIDTH, "pyramid_steps": [1, 1, 1]}
REQUEST = GenerationRequest(prompt="a red fox", num_frames=33, seed=3, height=HEIGHT, width=WIDTH, pyramid_steps=(1, 1, 1))
BODY = {"prompt": "a red fox", "num_frames": 33, "seed": 3, **SMALL}


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sglang-loras")
    missing_key = folder / "more" / "missing-key.safetensors"
    state = load_file(make_tiny_lora(missing_key, seed=5))
    save_file({k: v for k, v in state.items() if not k.endswith("blocks.0.attn1.to_q.lora_B.weight")}, missing_key)
    misshaped = folder / "more" / "misshaped.safetensors"
    state["transformer.blocks.0.attn1.to_q.lora_A.weight"] = torch.zeros(2, 3)
    save_file(state, misshaped)
    return {
        "folder": folder,
        "startup": make_tiny_lora(folder / "style.safetensors", seed=4),
        "other": make_tiny_lora(folder / "more" / "other.safetensors", seed=2),
        "missing_key": missing_key,
        "misshaped": misshaped,
        "outside": make_tiny_lora(tmp_path_factory.mktemp("not-configured") / "outside.safetensors", seed=3),
    }


@pytest.fixture(scope="module")
def server(tiny_folders, shared_server, loras):
    return shared_server.get(tiny_folders[VARIANT], "--lora-path", str(loras["folder"]), "--lora-scale", str(SCALE), "--lora-nickname", "style")


@pytest.fixture(scope="module")
def reference(tiny_folders, tmp_path_factory):
    """The core's frames for REQUEST with these (path, scale) adapters, after SGLang's mp4 writer."""
    helios = Helios.from_pretrained(tiny_folders[VARIANT])
    folder = tmp_path_factory.mktemp("sglang-lora-ref")

    def frames(loras) -> np.ndarray:
        helios.set_loras(loras)
        expected = torch.cat([chunk.frames for chunk in helios.stream(REQUEST)], dim=1)[0].numpy()
        return as_served(expected, folder / f"ref-{len(list(folder.iterdir()))}.mp4")

    return frames


def post(server, route: str, body: dict) -> tuple[int, dict]:
    status, payload = server.http.request("POST", route, json_body=body)
    return status, json.loads(payload)


def test_served_video_equals_the_core_with_the_start_up_lora_at_its_scale(server, reference, loras):
    served = server.generate(BODY)
    expected = reference([(loras["folder"], SCALE)])
    np.testing.assert_array_equal(served, expected)
    assert not np.array_equal(expected, reference([]))  # the adapter changes the video


def test_set_lora_merges_the_named_adapters_and_unmerge_restores_the_base(server, reference, loras):
    status, payload = post(server, "/v1/set_lora", {"lora_nickname": "other", "lora_path": str(loras["other"]), "strength": 0.5})
    assert status == 200, payload
    np.testing.assert_array_equal(server.generate(BODY), reference([(loras["other"], 0.5)]))

    status, payload = post(server, "/v1/unmerge_lora_weights", {})
    assert status == 200, payload
    np.testing.assert_array_equal(server.generate(BODY), reference([]))

    # Two adapters at once, one of them by the nickname it was loaded under.
    both = {"lora_nickname": ["style", "other"], "lora_path": [str(loras["startup"]), None], "strength": [SCALE, 0.5]}
    status, payload = post(server, "/v1/set_lora", both)
    assert status == 200, payload
    np.testing.assert_array_equal(server.generate(BODY), reference([(loras["startup"], SCALE), (loras["other"], 0.5)]))
    status, listed = server.http.get_json("/v1/list_loras")
    assert status == 200 and listed["active"]["transformer"][0]["nicknames"] == ["style", "other"], listed


def test_an_unconfigured_path_or_a_bad_adapter_is_a_400_naming_it_and_the_server_keeps_serving(server, reference, loras):
    status, payload = post(server, "/v1/set_lora", {"lora_nickname": "startup", "lora_path": str(loras["folder"])})
    assert status == 200, payload
    refused = {
        "outside": ({"lora_nickname": "x", "lora_path": str(loras["outside"])}, "not an adapter this server was configured with"),
        "escape": ({"lora_nickname": "x", "lora_path": f"{loras['folder']}/../x.safetensors"}, "not an adapter this server was configured with"),
        "missing_key": ({"lora_nickname": "x", "lora_path": str(loras["missing_key"])}, "blocks.0.attn1.to_q.lora_B.weight: missing"),
        "misshaped": ({"lora_nickname": "x", "lora_path": str(loras["misshaped"])}, "blocks.0.attn1.to_q.lora_A.weight: shape [2, 3]"),
    }
    for case, (body, why) in refused.items():
        status, payload = post(server, "/v1/set_lora", body)
        assert status == 400, (case, payload)
        assert payload["detail"].startswith("lora_path: ") and why in payload["detail"], (case, payload)
    for route, body, field in (("/v1/set_lora", {"lora_nickname": "x", "lora_path": str(loras["other"]), "lora_alpha": 4}, "lora_alpha"),
                               ("/v1/set_lora", {"lora_nickname": "x", "lora_path": str(loras["other"]), "merge_mode": "dynamic"}, "merge_mode"),
                               ("/v1/merge_lora_weights", {"target": "transformer_2"}, "target")):
        status, payload = post(server, route, body)
        assert status == 400 and payload["detail"].startswith(f"{field}: "), (route, payload)
    # A nickname never loaded is the worker's to refuse (the front door does not know the loaded set).
    status, payload = post(server, "/v1/set_lora", {"lora_nickname": "never-loaded"})
    assert status == 500 and "adapter 'never-loaded' is not loaded; give its lora_path" in payload["detail"], payload
    status, payload = server.post_video({**BODY, "lora_path": str(loras["other"])})
    assert status == 400 and payload["detail"].startswith("lora_path:"), payload
    np.testing.assert_array_equal(server.generate(BODY), reference([(loras["folder"], 1.0)]))  # the set before the refusals
