"""Reading media: conditioning images and videos into frames, and frames into the model's tensors.

A server never opens a path named in a request, so I2V/V2V inputs arrive as data: raw bytes, a
base64 string or a `data:<mime>;base64,` URL of a PNG/JPEG/WebP image or an mp4/webm video
(`image_field` / `video_field`, which every front end's request goes through). The limits keep
one request from exhausting a server's memory; each is a parameter of the decoders. Errors are
`RequestError`s naming the `image` or `video` field. Only the CLI and tools read files by path
(`read_image`, `read_video`).
"""

from __future__ import annotations

import base64
import binascii
import io

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import RequestError

# As large as a video: a PNG at the largest accepted size (MAX_PIXELS) can pass 16 MiB.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
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
    import av  # where used: PyAV's import is a cost every process importing the core would pay

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


def image_field(value: Any) -> Any:
    """A request's `image` as any front end receives it: file bytes (raw, base64 or a data: URL)
    are decoded here; a PIL image or an (H, W, 3) array is kept for `image_to_tensor` to check."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return decode_image(value)
    if isinstance(value, (list, tuple)):
        raise RequestError("image", f"Helios takes one image, got a list of {len(value)}")
    return value


def video_field(value: Any) -> Any:
    """A request's `video`: file bytes are decoded here; frames (a list or a (T, H, W, 3) array) are
    kept for `video_to_tensor` to check. A list of strings is refused: paths are never opened."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return decode_video(value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, (str, bytes)) for v in value):
        raise RequestError("video", "give frames or one base64 video file; file paths are never opened")
    if getattr(value, "ndim", 4) == 5:
        raise RequestError("video", "Helios takes one video, got a batch")
    return value


def image_to_tensor(image: Any, height: int, width: int, name: str = "image") -> torch.Tensor:
    """A PIL image, (H, W, 3) uint8 array or tensor -> (1, 3, H, W) in [-1, 1], resized with Lanczos."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise RequestError(name, f"an array image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise RequestError(name, f"must be an image (PIL, or an (H, W, 3) uint8 array), got {type(image).__name__}")
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    array = np.asarray(image).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def video_to_tensor(video: Any, height: int, width: int) -> torch.Tensor:
    """A sequence of frames (PIL or uint8 (T, H, W, 3)) -> (1, 3, T, H, W) in [-1, 1]."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    if isinstance(video, np.ndarray):
        if video.ndim != 4:
            raise RequestError("video", f"an array video must be (T, H, W, 3) uint8, got shape {video.shape}")
        video = list(video)
    if not isinstance(video, (list, tuple)) or not video:
        raise RequestError("video", "must be a non-empty sequence of frames")
    frames = [image_to_tensor(f, height, width, "video") for f in video]
    return torch.stack(frames, dim=2)


def read_image(path: str | Path) -> Image.Image:
    """An image file as RGB (the CLI's --image; a server never reads a path)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def read_video(path: str | Path, max_frames: int | None = None) -> list[np.ndarray]:
    """The frames of a video file as (H, W, 3) uint8 arrays (the CLI's --video; a server never reads a path)."""
    import av

    try:
        with av.open(str(path)) as container:
            frames = []
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise ValueError(f"cannot read video {path}: {exc}") from None
    if not frames:
        raise ValueError(f"cannot read video {path}: it has no frames")
    return frames


def decode_mp4(path: str | Path) -> np.ndarray:
    """All frames of an mp4 as (T, H, W, 3) uint8 (for tests and comparisons)."""
    return np.stack(read_video(path))
