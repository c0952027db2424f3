"""What a server's front door refuses before a request reaches an engine, and the ASGI plumbing to read it.

Both engines accept request fields that name server paths or URLs, or engine options the Helios
core has no counterpart for, and some act on them before any model code runs (fetching a URL,
creating a folder). Each adapter lists its engine's such fields (name -> why it is refused) and an
ASGI middleware checks every request's fields against that list, answering 400 naming the field.
The middleware buffers the body to read it and hands the same bytes on to the engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import RequestError

# Containers whose keys the engines promote to request fields (SGLang flattens all four; vLLM-Omni
# reads extra_params).
EXTRA_CONTAINERS = ("extra_body", "extra_json", "extra_params", "extra_args")
UNSET_TEXT = frozenset({"", "false", "0", "null", "none"})


def is_set(value: Any) -> bool:
    """Whether a field asks for something: absent, null, false and their form spellings do not."""
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value.strip().lower() not in UNSET_TEXT
    return True


def _container(value: Any) -> Mapping | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, Mapping) else None


def request_fields(items: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """Every (name, value) of a body's items, with the extra containers' keys promoted, as the engines read them."""
    for name, value in items:
        nested = _container(value) if name in EXTRA_CONTAINERS else None
        if nested is None:
            yield name, value
        else:
            yield from request_fields(nested.items())


def refused_field(fields: Iterable[tuple[str, Any]], refusals: Mapping[str, str]) -> RequestError | None:
    """The first set field whose name (or `name[...]` form spelling) is refused, as a RequestError naming it."""
    for name, value in fields:
        base = name.split("[", 1)[0]
        if base in refusals and is_set(value):
            return RequestError(name, refusals[base])
    return None


# -- ASGI body buffering ---------------------------------------------------------------------------


async def read_body(receive, limit: int) -> tuple[list[dict], bool]:
    """The request's body messages, stopping early past `limit` bytes; (messages, complete)."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, False
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, True
        if size > limit:
            return messages, False


async def end_of_body() -> dict:
    """What a receive yields once a complete body has been read."""
    return {"type": "http.request", "body": b"", "more_body": False}


def replay(messages: list[dict], receive):
    """A receive that yields the buffered messages first, then the rest of the stream."""
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed


async def run_until_disconnect(app, scope, messages: list[dict], receive, send) -> None:
    """Run `app` on a complete buffered body, cancelling it when the client disconnects first.

    An engine route that awaits its job without listening to the connection runs on after the
    client has gone; cancelling the route's task is what an engine treats as the client going
    away (vLLM-Omni then aborts the job). An error of the app itself propagates as it would.
    """
    disconnected = asyncio.Event()
    pending = list(messages)

    async def app_receive() -> dict:
        if pending:
            return pending.pop(0)
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    answered = asyncio.ensure_future(app(scope, app_receive, send))
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({answered, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not answered.done():
            answered.cancel()
        try:
            await answered
        except asyncio.CancelledError:
            if not disconnected.is_set():
                raise


def rewritten_response(send, rewrite):
    """A send that holds a whole response and sends `rewrite(status, body) -> (status, body)` instead.

    For the small JSON answers of job routes (the body is held in memory); content-length is set
    to the new body's.
    """
    held: list[dict] = []

    async def sending(message: dict) -> None:
        held.append(message)
        if message["type"] != "http.response.body" or message.get("more_body", False):
            return
        start = held[0]
        status, body = rewrite(start["status"], b"".join(m.get("body", b"") for m in held[1:]))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        held.clear()
        await send({**start, "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return sending


async def body_items(scope, messages: list[dict], max_part_size: int) -> list[tuple[str, Any]] | None:
    """A complete body's (name, value) items: a JSON object's, or a form's (uploads as UploadFile).

    None when the body is neither (the route answers it with its own error). The uploads are closed
    on return (their type is what a check looks at); the engine parses the replayed bytes itself.
    """
    from starlette.requests import Request

    content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1").lower()
    request = Request(scope, replay(messages, end_of_body))
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        try:
            form = await request.form(max_part_size=max_part_size)
        except Exception:  # a malformed form: the route answers it
            return None
        try:
            return list(form.multi_items())
        finally:
            await form.close()
    try:
        body = json.loads(b"".join(m.get("body", b"") for m in messages) or b"null")
    except ValueError:
        return None
    return list(body.items()) if isinstance(body, dict) else None


def configured_lora(path: str, configured: Sequence[str], field: str) -> str:
    """The LoRA path a request names, when the operator configured it; else RequestError naming `field`.

    Configured means one of the server's start-up LoRA paths (its --lora-path values), or a file or
    folder inside one of those that is a folder (symlinks resolved, so none leads out). A request
    never makes the server open any other path. A configured path comes back as the operator spelt
    it, so a request naming the start-up adapter asks for the very set the server loaded.
    """
    if not configured:
        raise RequestError(field, "this server was started without --lora-path, so it loads no adapter a request names")
    target = Path(path).resolve()
    for root in configured:
        if target == Path(root).resolve():
            return root
        if Path(root).is_dir() and target.is_relative_to(Path(root).resolve()):
            return str(target)
    accepted = ", ".join(configured)
    raise RequestError(field, f"{path!r} is not an adapter this server was configured with (accepted: {accepted}, or a path inside a folder among them)")
