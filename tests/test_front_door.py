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


def test_an_app_still_answering_when_its_client_disconnects_is_cancelled_and_one_answering_first_is_not():
    import asyncio

    from helios_backends.front_door import run_until_disconnect

    body = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def run(app_seconds: float, disconnect_after: float) -> list[str]:
        seen = []

        async def app(scope, receive, send):
            assert (await receive())["body"] == b"{}"  # the buffered body comes first
            try:
                await asyncio.sleep(app_seconds)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            await send({"type": "http.response.start", "status": 200, "headers": []})
            seen.append("answered")

        async def receive():
            await asyncio.sleep(disconnect_after)
            return {"type": "http.disconnect"}

        async def send(message):
            pass

        await run_until_disconnect(app, {"type": "http"}, body, receive, send)
        return seen

    assert asyncio.run(run(app_seconds=30, disconnect_after=0.05)) == ["cancelled"]
    assert asyncio.run(run(app_seconds=0.01, disconnect_after=30)) == ["answered"]


def test_a_rewritten_response_goes_out_whole_with_its_new_length():
    import asyncio

    from helios_backends.front_door import rewritten_response

    sent = []

    async def send(message):
        sent.append(message)

    async def respond():
        out = rewritten_response(send, lambda status, body: (200, body + b"!"))
        await out({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"2")]})
        await out({"type": "http.response.body", "body": b"a", "more_body": True})
        await out({"type": "http.response.body", "body": b"b", "more_body": False})

    asyncio.run(respond())
    assert sent[0]["status"] == 200 and sent[0]["headers"] == [(b"content-length", b"3")]
    assert sent[1] == {"type": "http.response.body", "body": b"ab!", "more_body": False}
