"""vLLM-Omni's sampling params reach the core through its one request schema: its fields, its errors."""

from __future__ import annotations

import pytest
from vllm_omni.inputs.data import OmniDiffusionSamplingParams

from helios_backends.errors import RequestError
from helios_backends.request import REQUEST_FIELDS, GenerationRequest
from helios_vllm.requests import HELIOS_EXTRA_PARAMS, SAMPLING_FIELDS, to_generation_request


def test_a_string_false_is_false_and_maybe_is_refused_with_the_cores_own_error():
    sampling = OmniDiffusionSamplingParams(extra_args={"is_amplify_first_chunk": "false", "pyramid_steps": "[1, 1, 1]"})
    request, adapter = to_generation_request("a fox", sampling)
    assert request.is_amplify_first_chunk is False and request.pyramid_steps == (1, 1, 1) and adapter == {}
    with pytest.raises(RequestError) as served:
        to_generation_request("a fox", OmniDiffusionSamplingParams(extra_args={"is_amplify_first_chunk": "maybe"}))
    with pytest.raises(RequestError) as core:
        GenerationRequest.from_fields({"is_amplify_first_chunk": "maybe"})
    assert served.value.field == "is_amplify_first_chunk" and str(served.value) == str(core.value)


def test_output_type_is_the_adapters_own_option_and_is_checked():
    _, adapter = to_generation_request("a fox", OmniDiffusionSamplingParams(extra_args={"output_type": "latent"}))
    assert adapter == {"output_type": "latent"}
    with pytest.raises(RequestError, match="output_type: must be one of frames, latent"):
        to_generation_request("a fox", OmniDiffusionSamplingParams(extra_args={"output_type": "pixels"}))


def test_extra_params_are_every_request_field_vllm_omni_does_not_carry_itself():
    assert HELIOS_EXTRA_PARAMS - {"output_type"} == set(REQUEST_FIELDS) - set(SAMPLING_FIELDS) - {"prompt", "negative_prompt"}
    with pytest.raises(RequestError, match="did you mean pyramid_steps") as info:
        to_generation_request("a fox", OmniDiffusionSamplingParams(extra_args={"pyramid_step": [1, 1, 1]}))
    assert info.value.field == "pyramid_step"


def test_the_http_check_gives_the_cores_errors_and_refuses_helios_options_outside_extra_params(tiny_folders):
    """The OpenAI SDK sends a list in a form as repeated `key[]` fields, which vLLM-Omni would drop."""
    from types import SimpleNamespace

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from helios_vllm.http import HeliosRequestCheck

    async def queued(request):
        return PlainTextResponse("queued")

    app = Starlette(routes=[Route("/v1/videos", queued, methods=["POST"])], middleware=[Middleware(HeliosRequestCheck)])
    app.state.args = SimpleNamespace(model=str(tiny_folders["distilled"]))
    client = TestClient(app)
    form = {"prompt": "a kite", "height": "64", "width": "128", "extra_params": '{"is_amplify_first_chunk": "false"}'}
    assert client.post("/v1/videos", data=form).text == "queued"
    maybe = client.post("/v1/videos", data={**form, "extra_params": '{"is_amplify_first_chunk": "maybe"}'}).json()["error"]
    assert maybe["param"] == "is_amplify_first_chunk" and 'must be true or false (or "1"/"0")' in maybe["message"]
    outside = client.post("/v1/videos", data={**form, "pyramid_steps[]": ["1", "1", "1"]}).json()["error"]
    assert outside["param"] == "pyramid_steps" and "send it in extra_params" in outside["message"]
