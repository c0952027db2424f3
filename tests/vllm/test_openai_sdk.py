"""`vllm serve --omni` as a new user meets it: the official `openai` SDK, and raw HTTP for every refused
field and endpoint (tests/openai_conformance.py is the spec both engines run)."""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest

from tests import openai_conformance as spec

MIDDLEWARE = ("--middleware", "helios_vllm.http.HeliosRequestCheck")
STEPS = {"pyramid_steps": [1, 1, 1]}


def extra(**options) -> str:
    return json.dumps({**STEPS, **options})


SMALL = {"width": spec.WIDTH, "height": spec.HEIGHT, "num_frames": 33, "extra_params": extra()}


@pytest.fixture(scope="module")
def vllm(tiny_folders, shared_server):
    return shared_server.get(tiny_folders["distilled"], *MIDDLEWARE)


@pytest.fixture(scope="module")
def served(vllm):
    yield spec.Served(
        client=openai.OpenAI(base_url=f"{vllm.url}/v1", api_key="unused", max_retries=0),
        http=vllm.client,
        small=SMALL,
        long={**SMALL, "num_frames": 660},
        failing={**SMALL, "num_frames": 660, "extra_params": extra(timeout_s=0.5)},
        failure_names="timeout_s",
        image_body={"extra_params": extra(image=base64.b64encode(spec.png(5)).decode())},
        long_chunks=20,
    )


@pytest.mark.parametrize("case", spec.sdk_cases())
def test_the_openai_sdk_flow(served, case):
    case(served)


def form(**fields):
    data = {"prompt": "a fox", **{k: str(v) for k, v in SMALL.items()}, **fields}
    return lambda http: http.post("/v1/videos", data=data)


REFUSED = {
    "image_reference": (form(image_reference=json.dumps({"image_url": "http://127.0.0.1:9/x.png"})), "image_reference"),
    "video_reference": (form(video_reference=json.dumps({"video_url": "http://127.0.0.1:9/x.mp4"})), "video_reference"),
    "input_reference_image_url": (form(**{"input_reference[image_url]": "http://127.0.0.1:9/x.png"}), "input_reference[image_url]"),
    "lora": (form(lora=json.dumps({"name": "x", "path": "/tmp/lora"})), "lora"),
    "frame_interpolation_model_path": (form(frame_interpolation_model_path="/etc"), "frame_interpolation_model_path"),
    "guidance_scale_2": (form(guidance_scale_2="2.0"), "guidance_scale_2"),
    "unknown_field": (form(pyramid_step="[1, 1, 1]"), "pyramid_step"),
    "sync_route_too": (lambda http: http.post("/v1/videos/sync", data={"prompt": "a fox", "image_reference": '{"image_url": "http://127.0.0.1:9/x.png"}'}), "image_reference"),
}


@pytest.mark.parametrize(("send", "field_name"), REFUSED.values(), ids=REFUSED.keys())
def test_a_field_naming_a_url_or_missing_option_or_nothing_is_refused_400_naming_it(served, send, field_name):
    spec.refused_with_400_naming_the_field(served, send, field_name)


def test_a_refused_url_is_never_fetched(served):
    recorder = spec.RecordingServer()
    try:
        reference = json.dumps({"image_url": recorder.url("a.png")})
        assert form(image_reference=reference)(served.http).status_code == 400
    finally:
        recorder.close()
    assert recorder.hits == []


def test_sleep_and_wakeup_are_refused_and_the_server_keeps_serving(served):
    for route in ("/v1/omni/sleep", "/v1/omni/wakeup"):
        response = served.http.post(route, json={"stage_ids": [0]})
        assert response.status_code == 400 and route in response.text and "sleep" in response.text, response.text
    video = served.client.videos.create_and_poll(prompt="awake", extra_body=SMALL, poll_interval_ms=spec.POLL_MS)
    assert video.status == "completed", video


def test_start_up_refuses_engine_options_the_core_lacks_naming_the_flag(tiny_folders):
    from vllm_omni.diffusion.data import OmniDiffusionConfig

    from helios_vllm.front_door import check_engine_options

    # --lora-path is served since LoRA support (tests/vllm/test_lora.py), no longer refused here.
    for settings, flag in (({"quantization": "int8"}, "--quantization int8"), ({"cache_backend": "tea_cache"}, "--cache-backend"),
                           ({"enable_sleep_mode": True}, "--enable-sleep-mode"), ({"vae_use_slicing": True}, "--vae-use-slicing"),
                           ({"vae_use_tiling": True}, "--vae-use-tiling"), ({"vae_fast_path": "off"}, "--vae-fast-path"),
                           ({"diffusion_attention_backend": "FLASH_ATTN"}, "--diffusion-attention-backend"),
                           ({"diffusion_attention_config": {"per_role": {"cross": {"backend": "SDPA"}}}}, "--diffusion-attention-config"),
                           ({"fa_deterministic": True}, "--fa-deterministic")):
        with pytest.raises(ValueError, match=flag):
            check_engine_options(OmniDiffusionConfig.from_kwargs(model=str(tiny_folders["distilled"]), **settings))


def test_quantization_fp8_is_the_cores_fp8_and_no_flag_is_none(tiny_folders):
    """`vllm serve --quantization fp8` loads the core with quantization="fp8" (refused there without FP8 hardware)."""
    from vllm_omni.diffusion.data import OmniDiffusionConfig

    from helios_vllm.front_door import core_quantization

    folder = str(tiny_folders["distilled"])
    assert core_quantization(OmniDiffusionConfig.from_kwargs(model=folder, quantization="fp8")) == "fp8"
    assert core_quantization(OmniDiffusionConfig.from_kwargs(model=folder)) is None
