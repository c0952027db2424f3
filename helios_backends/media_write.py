"""Writing media: H.264 mp4 files written chunk by chunk.

`Mp4Writer` encodes on a background thread, so the CPU-side encoding of chunk k-1 overlaps the
denoising and VAE decode of chunk k, and writes to a temporary name that becomes the output only
when the file is complete: a failed run never leaves a broken mp4 behind. x264 runs tuned for
streaming (veryfast, zerolatency: no lookahead), so each chunk is encoded as it arrives and the
file is complete right after the last chunk, rather than after a lookahead backlog.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import av
import numpy as np
import torch


class Mp4Writer:
    def __init__(self, path: str | Path, width: int, height: int, fps: int, crf: int = 18):
        if width % 2 or height % 2:
            raise ValueError(f"H.264 needs even frame sizes, got {width}x{height}")
        self.path = Path(path)
        self._partial = self.path.with_name(f".{self.path.name}.partial")
        self._container = av.open(str(self._partial), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._encode_loop, daemon=True)
        self._thread.start()
        self.frames_written = 0

    def _encode_loop(self):
        while (frames := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                for frame in frames:
                    packet = self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
                    self._container.mux(packet)
            except BaseException as exc:  # surfaced to the caller on the next write or close
                self._error = exc

    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        """Queue (T, H, W, 3) uint8 frames for encoding."""
        if self._error is not None:
            raise self._error
        array = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != (self._stream.height, self._stream.width, 3):
            raise ValueError(f"frames must be (T, {self._stream.height}, {self._stream.width}, 3) uint8, got {array.shape} {array.dtype}")
        self._queue.put(np.ascontiguousarray(array))
        self.frames_written += len(array)

    def close(self, discard: bool = False) -> None:
        self._queue.put(None)
        self._thread.join()
        try:
            if not discard and self._error is None:
                self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
        if discard or self._error is not None:
            self._partial.unlink(missing_ok=True)
            if self._error is not None and not discard:
                raise self._error
            return
        os.replace(self._partial, self.path)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(discard=exc_type is not None)

