"""Request-body media: bytes, base64 and data URLs decode in memory, within limits, never from a path."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from helios_backends.errors import RequestError
from helios_backends.media_read import decode_image, decode_mp4, decode_video
from helios_backends.media_write import Mp4Writer

from .conftest import HEIGHT, WIDTH, random_image


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> tuple[bytes, np.ndarray]:
    """A 5-frame mp4's bytes and the frames a file reader decodes from it."""
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    rng = np.random.default_rng(0)
    with Mp4Writer(path, WIDTH, HEIGHT, fps=24) as writer:
        writer.write(rng.integers(0, 256, (5, HEIGHT, WIDTH, 3), dtype=np.uint8))
    return path.read_bytes(), decode_mp4(path)


def refused(field: str, message: str, decode, value, **limits):
    with pytest.raises(RequestError, match=message) as info:
        decode(value, **limits)
    assert info.value.field == field


def test_an_image_as_bytes_base64_or_data_url_decodes_to_the_same_rgb_pixels():
    image = random_image()
    data = png_bytes(image)
    for value in (data, b64(data), "data:image/png;base64," + b64(data)):
        decoded = decode_image(value)
        assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), np.asarray(image))


def test_a_path_named_in_a_request_is_never_opened(tmp_path, monkeypatch):
    path = tmp_path / "imgs" / "pngfile"
    path.parent.mkdir()
    path.write_bytes(png_bytes(random_image()))
    refused("image", "base64-encoded file bytes", decode_image, str(path))
    monkeypatch.chdir(tmp_path)
    # "imgs/pngfile" is also valid base64: it decodes as (unreadable) bytes, the file stays unread.
    refused("image", "not a readable", decode_image, "imgs/pngfile")


def test_media_past_the_byte_limit_is_refused_before_decoding():
    data = png_bytes(random_image())
    refused("image", "larger than", decode_image, data, max_bytes=len(data) - 1)
    refused("image", "larger than", decode_image, b64(data), max_bytes=len(data) - 1)
    assert decode_image(b64(data), max_bytes=len(data)).size == (WIDTH, HEIGHT)
    refused("video", "larger than", decode_video, "A" * 4096, max_bytes=1024)


def test_an_image_past_the_pixel_limit_is_refused():
    refused("image", f"has {WIDTH}x{HEIGHT} pixels, more than 100", decode_image, png_bytes(random_image()), max_pixels=100)


def test_undecodable_or_mistyped_media_is_refused_naming_the_field():
    refused("image", "not a readable PNG/JPEG/WebP image", decode_image, b"not an image")
    refused("image", "base64-encoded file bytes", decode_image, "not base64!")
    refused("image", "data: URL must be base64-encoded", decode_image, "data:image/png," + b64(b"x"))
    refused("image", "got int", decode_image, 7)
    refused("video", "not a readable mp4/webm video", decode_video, b"not a video")


def test_a_video_decodes_to_the_frames_a_file_reader_sees(mp4):
    data, frames = mp4
    for value in (data, b64(data), "data:video/mp4;base64," + b64(data)):
        assert np.array_equal(np.stack(decode_video(value)), frames)


def test_a_video_past_the_frame_or_pixel_limit_is_refused(mp4):
    data, _ = mp4
    assert len(decode_video(data, max_frames=5)) == 5
    refused("video", "more than 4 frames", decode_video, data, max_frames=4)
    refused("video", "more than 100 pixels", decode_video, data, max_pixels=100)


def test_a_video_that_decodes_past_the_total_pixel_cap_is_refused(tmp_path):
    with Mp4Writer(tmp_path / "v.mp4", 64, 64, fps=24) as w:
        w.write(np.zeros((10, 64, 64, 3), np.uint8))
    data = (tmp_path / "v.mp4").read_bytes()
    assert len(decode_video(data, max_total_pixels=10 * 64 * 64)) == 10
    with pytest.raises(RequestError, match="more than 40959 pixels in all"):
        decode_video(data, max_total_pixels=10 * 64 * 64 - 1)
