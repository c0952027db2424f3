"""SGLang's sampling params reach the core through its one request schema: its fields, its errors."""

from __future__ import annotations

import dataclasses

import pytest

from helios_backends.errors import RequestError
from helios_backends.request import REQUEST_FIELDS, GenerationRequest


def test_a_string_false_is_false_and_maybe_is_refused_with_the_cores_own_error():
    from helios_sglang.configs import HeliosCoreSamplingParams
    from helios_sglang.request_mapping import to_generation_request

    params = HeliosCoreSamplingParams(prompt="a fox", is_amplify_first_chunk="false", pyramid_steps="[1, 1, 1]")
    request = to_generation_request(params, explicit_fields=set())
    assert request.is_amplify_first_chunk is False and request.pyramid_steps == (1, 1, 1)
    with pytest.raises(RequestError) as served:
        to_generation_request(HeliosCoreSamplingParams(prompt="a fox", is_amplify_first_chunk="maybe"), explicit_fields=set())
    with pytest.raises(RequestError) as core:
        GenerationRequest.from_fields({"is_amplify_first_chunk": "maybe"})
    assert served.value.field == "is_amplify_first_chunk" and str(served.value) == str(core.value)


def test_the_sampling_params_carry_every_request_field_and_declare_the_helios_ones_as_http_fields():
    from helios_sglang.configs import HeliosCoreSamplingParams
    from helios_sglang.request_mapping import SHARED_FIELDS

    assert set(REQUEST_FIELDS) <= {f.name for f in dataclasses.fields(HeliosCoreSamplingParams)}
    assert HeliosCoreSamplingParams.video_request_extra_fields() == set(REQUEST_FIELDS) - SHARED_FIELDS - {"prompt", "seed"}
