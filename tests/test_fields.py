"""One request schema: `GenerationRequest.from_fields` reads field values as any front end receives them."""

from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
import pytest

from helios_backends.errors import RequestError
from helios_backends.fields import form_fields
from helios_backends.request import REQUEST_FIELDS, GenerationRequest, PromptSegment

from .conftest import HEIGHT, WIDTH, random_image


def refused(field: str, message: str, **fields):
    with pytest.raises(RequestError, match=message) as info:
        GenerationRequest.from_fields(fields)
    assert info.value.field == field
    assert "\n" not in str(info.value)


def test_the_string_false_is_false_and_every_boolean_spelling_is_read_alike():
    for false in (False, "false", "False", "0", 0):
        assert GenerationRequest.from_fields({"is_amplify_first_chunk": false}).is_amplify_first_chunk is False
    for true in (True, "true", "TRUE", "1", 1):
        assert GenerationRequest.from_fields({"is_amplify_first_chunk": true}).is_amplify_first_chunk is True


def test_a_boolean_field_refuses_anything_else_naming_the_field_and_the_accepted_values():
    refused("is_amplify_first_chunk", r'must be true or false \(or "1"/"0"\), got \'maybe\'', is_amplify_first_chunk="maybe")
    refused("keep_first_frame", "must be true or false", keep_first_frame=2)
    refused("keep_first_frame", "got None", keep_first_frame=None)  # only fields whose annotation allows None take it


def test_a_json_list_a_json_encoded_list_and_repeated_key_brackets_give_the_same_tuple():
    form = form_fields([("prompt", "a fox"), ("pyramid_steps[]", "2"), ("pyramid_steps[]", "3"), ("pyramid_steps[]", "4")])
    assert form == {"prompt": "a fox", "pyramid_steps": ["2", "3", "4"]}
    for value in ([2, 3, 4], "[2, 3, 4]", form["pyramid_steps"]):
        assert GenerationRequest.from_fields({"pyramid_steps": value}).pyramid_steps == (2, 3, 4)
    assert GenerationRequest.from_fields({"image_noise_sigma": ["0.2", "0.3"]}).image_noise_sigma == (0.2, 0.3)
    refused("history_sizes", r"must be a list of 3 integers, got \[16, 2\]", history_sizes=[16, 2])
    refused("pyramid_steps", "must be a list of integers, got 'abc'", pyramid_steps="abc")


def test_a_form_key_sent_both_plain_and_with_brackets_is_refused():
    with pytest.raises(RequestError, match=r"sent both as pyramid_steps and as pyramid_steps\[\]") as info:
        form_fields([("pyramid_steps", "[2, 2, 2]"), ("pyramid_steps[]", "2")])
    assert info.value.field == "pyramid_steps"


def test_an_unknown_key_is_refused_by_name_with_the_closest_accepted_one():
    refused("pyramid_step", "is not a Helios request option; did you mean pyramid_steps\\? accepted: .*zero_steps", pyramid_step=[1])


def test_an_integer_field_refuses_a_fraction_and_a_boolean():
    refused("zero_steps", "must be an integer, got 2.5", zero_steps=2.5)
    refused("zero_steps", "must be an integer, got True", zero_steps=True)
    refused("zero_steps", "must be an integer, got '2.5'", zero_steps="2.5")
    assert GenerationRequest.from_fields({"zero_steps": "2", "interpolation_steps": 4.0}).zero_steps == 2


def test_numbers_choices_and_strings_are_type_checked():
    assert GenerationRequest.from_fields({"guidance_scale": "4.5", "timeout_s": 3}).guidance_scale == 4.5
    refused("guidance_scale", "must be a finite number, got 'nan'", guidance_scale="nan")
    refused("task", "must be one of t2v, i2v, v2v, got 'x2v'", task="x2v")
    refused("prompt", "must be a string or a list of strings, got 5", prompt=5)
    assert GenerationRequest.from_fields({"prompt": ["a", "b"], "seed": None}).prompt == ["a", "b"]


def test_a_prompt_schedule_is_parsed_from_json_or_a_json_encoded_string():
    expected = [PromptSegment(0, "a"), PromptSegment(2, "b")]
    for value in ([[0, "a"], [2, "b"]], '[{"start_chunk": 0, "prompt": "a"}, {"start_chunk": 2, "prompt": "b"}]', expected):
        assert GenerationRequest.from_fields({"prompt_schedule": value}).prompt_schedule == expected
    refused("prompt_schedule", "must be a non-empty list", prompt_schedule="0,a")


def test_media_is_decoded_from_base64_and_frames_are_kept():
    image = random_image()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = GenerationRequest.from_fields({"image": base64.b64encode(buffer.getvalue()).decode()}).image
    assert decoded.size == (WIDTH, HEIGHT) and np.array_equal(np.asarray(decoded), np.asarray(image))
    assert GenerationRequest.from_fields({"image": image}).image is image
    refused("image", "base64-encoded file bytes", image="/etc/hostname")
    refused("image", "one image, got a list", image=[image, image])
    refused("video", "file paths are never opened", video=["/tmp/a.mp4"])


def test_every_dataclass_field_is_a_request_field():
    assert REQUEST_FIELDS == tuple(f.name for f in dataclasses.fields(GenerationRequest))
    assert GenerationRequest.from_fields({}) == GenerationRequest()
