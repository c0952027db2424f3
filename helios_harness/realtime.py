"""Client sessions on the engines' realtime video websockets: vLLM-Omni's (`--diffusion-streaming-output`) and SGLang's."""

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


class SglangMessages:
    """SGLang's realtime messages from the websocket's binary messages, in order: msgpack maps, a
    frame batch with its frames as a (N, H, W, 3) uint8 array under "frames". A large batch comes
    as a "frame_batch_header" map followed by its raw RGB bytes in a message of their own."""

    def __init__(self):
        self._header = None

    def read(self, message: bytes) -> dict | None:
        """The next message, or None while a header waits for its bytes."""
        import msgspec.msgpack
        import numpy as np

        if self._header is not None:
            batch, payload, self._header = self._header, message, None
        else:
            batch = msgspec.msgpack.decode(message)
            if batch.get("type") == "frame_batch_header":
                self._header = batch
                return None
            if batch.get("type") != "frame_batch":
                return batch
            payload = batch["payload"]
        shape = (batch["num_frames"], batch["height"], batch["width"], batch["channels"])
        return {**batch, "type": "frame_batch", "frames": np.frombuffer(payload, np.uint8).reshape(shape)}


async def sglang_realtime_session(
    url: str, init: dict, timeout: float = 600, after_chunk: dict[int, list[dict]] | None = None,
    close_after: int | None = None, after_init: list[dict] = (),
) -> dict:
    """One session on SGLang's realtime video websocket (`/v1/realtime_video/generate`, msgpack).

    Sends `init` and `after_init` (events); after the frames of chunk k have arrived, sends `after_chunk[k]` and,
    at `close_after` = k, closes the websocket. Returns {"frames": {chunk: [(H, W, 3) uint8 ...]},
    "stats": [chunk_stats ...], "errors": [error messages ...], "closed": why it ended}.
    """
    import msgspec.msgpack
    import websockets

    frames: dict[int, list] = {}
    stats, errors = [], []
    messages = SglangMessages()
    async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
        await ws.send(msgspec.msgpack.encode({"type": "init", **init}))
        for event in after_init:
            await ws.send(msgspec.msgpack.encode(event))
        while True:
            try:
                message = messages.read(await asyncio.wait_for(ws.recv(), timeout=timeout))
            except websockets.ConnectionClosed as closed:
                return {"frames": frames, "stats": stats, "errors": errors, "closed": closed.rcvd.reason if closed.rcvd else "closed"}
            kind = None if message is None else message.get("type")
            if kind == "frame_batch":
                frames.setdefault(message["chunk_index"], []).extend(message["frames"])
            elif kind == "error":
                errors.append(message)
            elif kind == "chunk_stats":
                stats.append(message)
                k = message["chunk_index"]
                for event in (after_chunk or {}).get(k, []):
                    await ws.send(msgspec.msgpack.encode(event))
                if close_after == k:
                    await ws.close()
                    return {"frames": frames, "stats": stats, "errors": errors, "closed": "client"}
