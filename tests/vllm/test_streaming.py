"""`--diffusion-streaming-output`: the engine runs the core step by step and streams each chunk."""

from __future__ import annotations

import asyncio
import tempfile

import numpy as np
import pytest

from helios_backends.media_read import decode_mp4
from helios_harness.realtime import realtime_session

from .conftest import FAST, HEIGHT, WIDTH, start_server


@pytest.fixture(scope="module")
def server(tiny_folders, tmp_path_factory):
    server = start_server(tiny_folders["distilled"], tmp_path_factory, "serve-streaming", "--diffusion-streaming-output")
    yield server
    server.stop()


def test_streaming_sends_each_chunk_as_the_core_finishes_it(server):
    url = server.url.replace("http://", "ws://") + "/v1/realtime/video"
    start = {"prompt": "a fox", "width": WIDTH, "height": HEIGHT, "num_frames": 99, "seed": 4, "extra_params": FAST}
    chunks, data, (_, done) = asyncio.run(realtime_session(url, start, timeout=120))
    assert done["type"] == "session.done" and not done["stopped"], done
    # 99 frames -> three chunks of 33, the last trimmed to the video's 97 (4k+1) frames.
    assert [event["generation_chunk_index"] for _, event in chunks] == [0, 1, 2]
    assert [event["num_frames"] for _, event in chunks] == [33, 33, 31]
    arrivals = [t for t, _ in chunks]
    assert arrivals[0] < arrivals[1] < arrivals[2]
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        frames = decode_mp4(f.name)
    assert frames.shape == (97, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8


def test_streaming_server_refuses_a_bad_request_naming_the_field(server):
    url = server.url.replace("http://", "ws://") + "/v1/realtime/video"
    start = {"prompt": "a fox", "width": 96, "height": HEIGHT, "num_frames": 33, "extra_params": FAST}
    chunks, _, (_, done) = asyncio.run(realtime_session(url, start, timeout=120))
    assert chunks == [] and done["type"] == "error" and "width" in done["message"], done
    good = {"prompt": "a fox", "width": WIDTH, "height": HEIGHT, "num_frames": 33, "seed": 1, "extra_params": FAST}
    chunks, _, (_, done) = asyncio.run(realtime_session(url, good, timeout=120))
    assert done["type"] == "session.done" and len(chunks) == 1
