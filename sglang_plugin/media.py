"""Conditioning images and videos carried in the request body as base64.

The server never opens a path named in a request, so I2V/V2V inputs travel as data: a base64
string (optionally a `data:<mime>;base64,` URL) of a PNG/JPEG/WebP image or an mp4/webm video.
Size limits keep one request from exhausting the server's memory.
"""

from __future__ import annotations

import base64
import binascii
import io

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from helios_backends.errors import RequestError

MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_VIDEO_BYTES = 64 * 1024 * 1024
MAX_VIDEO_FRAMES = 2048
MAX_PIXELS = 4096 * 4096


def _decode_base64(field: str, value, limit: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise RequestError(field, f"must be a base64 string (or data: URL), got {type(value).__name__}")
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise RequestError(field, "a data: URL must be base64-encoded (data:<mime>;base64,...)")
    if len(value) > limit * 4 // 3 + 4:
        raise RequestError(field, f"is larger than {limit // (1024 * 1024)} MiB")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, "is not valid base64") from None


def decode_image(value) -> Image.Image:
    """The request's `image` field as an RGB PIL image."""
    data = _decode_base64("image", value, MAX_IMAGE_BYTES)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise RequestError("image", f"has {image.width}x{image.height} pixels, more than {MAX_PIXELS}")
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise RequestError("image", f"is not a readable PNG/JPEG/WebP image ({exc})") from None


def decode_video(value) -> list[np.ndarray]:
    """The request's `video` field as a list of (H, W, 3) uint8 frames."""
    data = _decode_base64("video", value, MAX_VIDEO_BYTES)
    frames: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data)) as container:
            for frame in container.decode(video=0):
                if frame.width * frame.height > MAX_PIXELS:
                    raise RequestError("video", f"has {frame.width}x{frame.height} frames, more than {MAX_PIXELS} pixels")
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) > MAX_VIDEO_FRAMES:
                    raise RequestError("video", f"has more than {MAX_VIDEO_FRAMES} frames")
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise RequestError("video", f"is not a readable mp4/webm video ({exc})") from None
    if not frames:
        raise RequestError("video", "has no frames")
    return frames


def encode_base64(data: bytes) -> str:
    """Inverse of the decoders, for clients and tests."""
    return base64.b64encode(data).decode("ascii")
