"""Conditioning images and videos carried in a request body, decoded in memory within size limits.

A server never opens a path named in a request, so I2V/V2V inputs arrive as data: raw bytes, a
base64 string or a `data:<mime>;base64,` URL of a PNG/JPEG/WebP image or an mp4/webm video. The
limits keep one request from exhausting a server's memory; each is a parameter, so an engine can
keep its own. Errors are `RequestError`s naming the `image` or `video` field.
"""

from __future__ import annotations

import base64
import binascii
import io

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import RequestError

MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_VIDEO_BYTES = 64 * 1024 * 1024
MAX_VIDEO_FRAMES = 2048
MAX_PIXELS = 4096 * 4096
# 2048 frames of 1280x720: about 5.7 GB of decoded RGB, the most a request may expand to.
MAX_VIDEO_TOTAL_PIXELS = 2048 * 1280 * 720


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def _media_bytes(field: str, value: str | bytes, max_bytes: int) -> bytes:
    """The file bytes of raw bytes, base64 or a base64 data URL, refused past max_bytes before decoding."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str) and value:
        if value.startswith("data:"):
            head, sep, value = value.partition(",")
            if not sep or not head.endswith(";base64"):
                raise RequestError(field, "a data: URL must be base64-encoded (data:<mime>;base64,...)")
        if len(value) > (max_bytes + 2) // 3 * 4:
            raise RequestError(field, f"is larger than {_mib(max_bytes)}")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(field, "must be base64-encoded file bytes (a file path is never opened)") from None
    else:
        raise RequestError(field, f"must be file bytes, a base64 string or a data: URL, got {type(value).__name__}")
    if len(data) > max_bytes:
        raise RequestError(field, f"is larger than {_mib(max_bytes)}")
    return data


def decode_image(value: str | bytes, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB PIL image; its size is checked from the header, before the pixels are decoded."""
    data = _media_bytes("image", value, max_bytes)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise RequestError("image", f"has {image.width}x{image.height} pixels, more than {max_pixels}")
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise RequestError("image", f"is not a readable PNG/JPEG/WebP image ({exc})") from None


def decode_video(
    value: str | bytes,
    max_bytes: int = MAX_VIDEO_BYTES,
    max_frames: int = MAX_VIDEO_FRAMES,
    max_pixels: int = MAX_PIXELS,
    max_total_pixels: int = MAX_VIDEO_TOTAL_PIXELS,
) -> list[np.ndarray]:
    """Every frame as (H, W, 3) uint8; refused at the first frame past a frame, pixel or total limit.

    A small compressed file can expand enormously; the total cap bounds the decoded memory.
    """
    data = _media_bytes("video", value, max_bytes)
    frames: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data)) as container:
            for frame in container.decode(video=0):
                if frame.width * frame.height > max_pixels:
                    raise RequestError("video", f"has {frame.width}x{frame.height} frames, more than {max_pixels} pixels")
                if len(frames) == max_frames:
                    raise RequestError("video", f"has more than {max_frames} frames")
                total += frame.width * frame.height
                if total > max_total_pixels:
                    raise RequestError("video", f"decodes to more than {max_total_pixels} pixels in all (frames x size)")
                frames.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise RequestError("video", f"is not a readable mp4/webm video ({exc})") from None
    if not frames:
        raise RequestError("video", "has no frames")
    return frames
