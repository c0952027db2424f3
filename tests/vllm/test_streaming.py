"""`--diffusion-streaming-output`: the engine runs the core step by step and streams each chunk."""

from __future__ import annotations

import asyncio
import os
import tempfile

import numpy as np
import pytest

from helios_backends.media_read import decode_mp4
from helios_harness.realtime import realtime_session

from .conftest import FAST, HEIGHT, WIDTH, start_server


@pytest.fixture(scope="module")
def server(tiny_folders, shared_server):
    return shared_server.get(tiny_folders["distilled"], "--diffusion-streaming-output")


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


def _frames(data: bytes) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        return decode_mp4(f.name)


def test_a_live_prompt_change_makes_the_video_of_the_schedule_starting_at_its_chunk(server):
    """session.interaction after chunk 0: the engine reports the chunk it started at, and the video
    equals the one of a prompt schedule starting there, blended over transition_chunks as
    interpolation_steps (an unchanged video differs from that chunk on)."""
    url = server.url.replace("http://", "ws://") + "/v1/realtime/video"
    start = {"prompt": "a fox", "width": WIDTH, "height": HEIGHT, "num_frames": 132, "seed": 4, "extra_params": FAST}
    change = {"type": "session.interaction",
              "interaction": {"event_id": "storm", "event": {"prompt": "a fox in a storm"}, "transition_chunks": 2}}
    replies = []
    chunks, live, (_, done) = asyncio.run(realtime_session(url, start, timeout=120, after_chunk={0: [change]}, replies=replies))
    assert done["type"] == "session.done" and len(chunks) == 4, (done, replies)
    assert {"type": "session.interaction.queued", "request_id": done["request_id"], "event_id": "storm"} in replies
    (k,) = [event["generation_chunk_index"] for _, event in chunks if "storm" in event["started_event_ids"]]
    assert k >= 1

    schedule = {"prompt_schedule": [{"start_chunk": 0, "prompt": "a fox"}, {"start_chunk": k, "prompt": "a fox in a storm"}],
                "interpolation_steps": 2}
    scheduled = {**start, "extra_params": {**FAST, **schedule}}
    _, by_schedule, (_, done) = asyncio.run(realtime_session(url, scheduled, timeout=120))
    _, unchanged, _ = asyncio.run(realtime_session(url, start, timeout=120))
    live, by_schedule, unchanged = _frames(live), _frames(by_schedule), _frames(unchanged)
    assert np.array_equal(live, by_schedule)
    assert np.array_equal(live[: 33 * k], unchanged[: 33 * k]) and not np.array_equal(live[33 * k :], unchanged[33 * k :])


def test_a_new_negative_prompt_in_a_live_change_is_refused_and_the_stream_goes_on(server):
    url = server.url.replace("http://", "ws://") + "/v1/realtime/video"
    start = {"prompt": "a fox", "width": WIDTH, "height": HEIGHT, "num_frames": 99, "seed": 4, "extra_params": FAST}
    negative = {"type": "session.interaction",
                "interaction": {"event_id": "neg", "event": {"prompt": "a storm", "negative_prompt": "blur"}}}
    replies = []
    chunks, _, (_, done) = asyncio.run(realtime_session(url, start, timeout=120, after_chunk={0: [negative]}, replies=replies))
    assert done["type"] == "session.done" and len(chunks) == 3, (done, replies)
    assert [r["message"] for r in replies if r["type"] == "error"] == ["session.interaction negative_prompt is not supported in this release"]
    assert all(not event["started_event_ids"] for _, event in chunks)


def test_media_in_a_live_change_is_refused_naming_the_modality(server):
    """vLLM-Omni 0.30 ends a request whose workers refuse an interaction (any pipeline): the error
    names the modality Helios has no handler for."""
    url = server.url.replace("http://", "ws://") + "/v1/realtime/video"
    start = {"prompt": "a fox", "width": WIDTH, "height": HEIGHT, "num_frames": 99, "seed": 4, "extra_params": FAST}
    media = {"type": "session.interaction",
             "interaction": {"event_id": "img", "event": {"multi_modal_data": {"image": {"url": "x"}}}}}
    replies = []
    _, _, (_, done) = asyncio.run(realtime_session(url, start, timeout=120, after_chunk={0: [media]}, replies=replies))
    assert done["type"] == "error" and "interaction modality 'image' is not supported" in done["message"], (done, replies)


# variant, server flags, the request's step fields (Distilled: pyramid steps; Base: num_inference_steps, CFG on).
PARALLEL = {"ulysses2": ("distilled", ["--ulysses-degree", "2"], {"extra_params": FAST}),
            "cfg2": ("base", ["--cfg-parallel-size", "2"], {"num_inference_steps": 2})}


@pytest.fixture(scope="module", params=list(PARALLEL))
def parallel_server(request, tmp_path_factory):
    """Two diffusion workers on the CPU platform, streaming: Ulysses (Distilled) or CFG-parallel (Base)."""
    from helios_backends.tiny import make_tiny

    from .test_parallel import PARALLEL_TRANSFORMER

    variant, flags, steps = PARALLEL[request.param]
    folder = make_tiny(tmp_path_factory.mktemp(f"live-{request.param}") / variant, variant, transformer=PARALLEL_TRANSFORMER)
    previous = os.environ.get("HELIOS_CPU_DEVICES")
    os.environ["HELIOS_CPU_DEVICES"] = "2"  # two CPU "devices" whatever the core count
    try:
        server = start_server(folder, tmp_path_factory, f"serve-streaming-{request.param}", "--diffusion-streaming-output",
                              "--step-execution", *flags)
    finally:
        if previous is None:
            os.environ.pop("HELIOS_CPU_DEVICES")
        else:
            os.environ["HELIOS_CPU_DEVICES"] = previous
    yield server, steps
    server.stop()


def test_with_two_parallel_workers_a_live_change_gives_the_video_of_the_schedule(parallel_server):
    """Every rank must take the change at the same chunk boundary: ranks that disagreed would mix
    two prompts in one step and the video would differ from the schedule's."""
    server, steps = parallel_server
    url = server.url.replace("http://", "ws://") + "/v1/realtime/video"
    start = {"prompt": "a kite", "width": 128, "height": 64, "num_frames": 99, "seed": 3, **steps}
    change = {"type": "session.interaction",
              "interaction": {"event_id": "gust", "event": {"prompt": "a kite in a gust of wind"}, "transition_chunks": 1}}
    replies = []
    chunks, live, (_, done) = asyncio.run(realtime_session(url, start, timeout=300, after_chunk={0: [change]}, replies=replies))
    assert done["type"] == "session.done" and len(chunks) == 3, done
    started = [event["generation_chunk_index"] for _, event in chunks if "gust" in event["started_event_ids"]]
    assert len(started) == 1, (replies, [event for _, event in chunks])
    k = started[0]
    schedule = {"prompt_schedule": [{"start_chunk": 0, "prompt": "a kite"}, {"start_chunk": k, "prompt": "a kite in a gust of wind"}],
                "interpolation_steps": 1}
    scheduled = {**start, "extra_params": {**start.get("extra_params", {}), **schedule}}
    _, by_schedule, _ = asyncio.run(realtime_session(url, scheduled, timeout=300))
    _, unchanged, _ = asyncio.run(realtime_session(url, start, timeout=300))
    live, by_schedule, unchanged = _frames(live), _frames(by_schedule), _frames(unchanged)
    assert np.array_equal(live, by_schedule)
    assert not np.array_equal(live[33 * k :], unchanged[33 * k :])
