"""A client session on vLLM-Omni's realtime video websocket (`--diffusion-streaming-output`)."""

from __future__ import annotations

import asyncio
import json
import time


async def realtime_session(url: str, start: dict, timeout: float = 600) -> tuple[list[tuple[float, dict]], bytes, tuple[float, dict]]:
    """One session on vLLM-Omni's realtime video websocket (bench/compare_worker.py, tests/vllm/test_streaming.py).

    Returns (arrival time.time(), metadata) per media chunk, the concatenated fMP4 bytes, and
    (arrival, message) of the session.done or error that ends it. `timeout` bounds each wait for a message.
    """
    import websockets  # the vllm env's; the core env that runs the other commands has none

    chunks, data = [], b""
    async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "session.start", **start}))
        while True:
            message = await asyncio.wait_for(ws.recv(), timeout=timeout)
            if isinstance(message, bytes):
                data += message
                continue
            event = json.loads(message)
            if event.get("type") == "video.chunk_metadata" and event.get("kind") == "media":
                chunks.append((time.time(), event))
            if event.get("type") in ("session.done", "error"):
                return chunks, data, (time.time(), event)
