"""The shared front-door checks: which request fields count as set, and which refused one is named."""

from __future__ import annotations

import json

from helios_backends.front_door import is_set, refused_field, request_fields

REFUSALS = {"output_path": "never written", "reference_url": "never fetched"}


def test_absent_null_false_and_their_form_spellings_ask_for_nothing():
    assert not any(is_set(v) for v in (None, False, "", "false", "False", "0", "null", "none"))
    assert all(is_set(v) for v in (True, "/tmp/x", "true", 1, {"image_url": "x"}, ["a"]))


def test_extra_containers_are_promoted_as_the_engines_read_them_json_text_included():
    items = [("prompt", "a fox"), ("extra_body", {"extra_params": json.dumps({"output_path": "/tmp/x"})}), ("extra_json", "not json")]
    assert list(request_fields(items)) == [("prompt", "a fox"), ("output_path", "/tmp/x"), ("extra_json", "not json")]


def test_the_first_set_refused_field_is_named_with_its_form_spelling():
    error = refused_field([("output_path", ""), ("reference_url[0]", "http://x"), ("output_path", "/tmp")], REFUSALS)
    assert error.field == "reference_url[0]" and str(error) == "reference_url[0]: never fetched"
    assert refused_field([("prompt", "a fox"), ("output_path", None)], REFUSALS) is None
