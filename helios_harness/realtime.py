"""A client session on vLLM-Omni's realtime video websocket (`--diffusion-streaming-output`)."""

from __future__ import annotations

import asyncio
import json
import time


async def realtime_session(
    url: str, start: dict, timeout: float = 600, after_chunk: dict[int, list[dict]] | None = None,
    replies: list[dict] | None = None,
) -> tuple[list[tuple[float, dict]], bytes, tuple[float, dict]]:
    """One session on vLLM-Omni's realtime video websocket (bench/compare_worker.py, tests/vllm/test_streaming.py).

    Returns (arrival time.time(), metadata) per media chunk, the concatenated fMP4 bytes, and
    (arrival, message) of the session.done or error that ends it. `timeout` bounds each wait for a message.
    after_chunk: messages (live `session.interaction`s) sent once the media chunk of that
    generation index has arrived; replies, when given, collects the other messages (interaction
    acknowledgements and errors: the session then ends only with session.done or the server
    closing the socket, ending on the last error).
    """
    import websockets  # the vllm env's; the core env that runs the other commands has none

    chunks, data = [], b""
    async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "session.start", **start}))
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), timeout=timeout)
            except websockets.ConnectionClosed:
                errors = [r for r in replies or [] if r.get("type") == "error"]
                return chunks, data, (time.time(), errors[-1] if errors else {"type": "closed"})
            if isinstance(message, bytes):
                data += message
                continue
            event = json.loads(message)
            if event.get("type") == "video.chunk_metadata" and event.get("kind") == "media":
                chunks.append((time.time(), event))
                for control in (after_chunk or {}).get(event["generation_chunk_index"], []):
                    await ws.send(json.dumps(control))
            elif replies is not None and event.get("type") != "session.done":
                replies.append(event)
            elif event.get("type") in ("session.done", "error"):
                return chunks, data, (time.time(), event)
