"""SGLang's realtime websocket (`/v1/realtime_video/generate`, msgpack) runs a Helios core session.

A real `sglang serve` on the tiny Distilled model, spoken to by a real websocket client
(helios_harness.realtime); the oracle is the core's own session in this process.
"""

from __future__ import annotations

import asyncio
import io
import re
import time

import numpy as np
import pytest
from PIL import Image

from helios_backends.errors import RequestError
from helios_backends.loading import plan_for_folder
from helios_backends.pipeline import Helios
from helios_backends.request import MAX_NUM_FRAMES, GenerationRequest, PromptSegment
from helios_harness.realtime import sglang_realtime_session

from .conftest import HEIGHT, WIDTH, start_server
from .test_parallel import parallel_folders  # noqa: F401 (the module fixture: tiny folders Ulysses can split)

START = {"prompt": "a fox", "height": HEIGHT, "width": WIDTH, "seed": 4}


@pytest.fixture(scope="module")
def server(tiny_folders, shared_server):
    return shared_server.get(tiny_folders["distilled"])


def _session(server, init: dict, **kwargs) -> dict:
    url = server.http.base_url.replace("http://", "ws://") + "/v1/realtime_video/generate"
    return asyncio.run(sglang_realtime_session(url, init, timeout=180, **kwargs))


def _video(result: dict) -> np.ndarray:
    return np.stack([frame for k in sorted(result["frames"]) for frame in result["frames"][k]])


def core_chunks(folder, request: GenerationRequest, chunks: int) -> np.ndarray:
    """(T, H, W, 3): the first `chunks` chunks of the core's open-ended session for `request`."""
    with Helios.from_pretrained(folder).session(request) as session:
        frames = []
        for chunk in session:
            frames.append(chunk.frames[0].numpy())
            if chunk.index == chunks - 1:
                break
    return np.concatenate(frames)


def _event(event_id: int, **payload) -> dict:
    return {"type": "event", "kind": "prompt", "event_id": event_id, "payload": payload}


def test_a_live_prompt_change_makes_the_video_of_the_schedule_starting_at_its_chunk(server, tiny_folders):
    """A prompt event sent after chunk 0's frames starts at the chunk the server reports (its
    event_id in that chunk's stats); the video equals the core's with a prompt schedule starting
    there over the same transition, and differs from the unchanged video from that chunk on."""
    result = _session(server, {**START, "max_chunks": 3}, after_chunk={0: [_event(5, prompt="a fox in a storm", transition_chunks=2)]})
    assert result["errors"] == [] and result["closed"] == "generation complete", result["errors"]
    started = [s["chunk_index"] for s in result["stats"] if s["event_id"] == 5]
    assert len(started) == 1 and 1 <= started[0] <= 2, result["stats"]
    k = started[0]
    live = _video(result)
    assert live.shape == (99, HEIGHT, WIDTH, 3)  # open-ended: whole chunks until max_chunks

    open_ended = dict(START, num_frames=MAX_NUM_FRAMES)
    schedule = GenerationRequest(**open_ended, interpolation_steps=2,
                                 prompt_schedule=[PromptSegment(0, "a fox"), PromptSegment(k, "a fox in a storm")])
    np.testing.assert_array_equal(live, core_chunks(tiny_folders["distilled"], schedule, 3))
    unchanged = core_chunks(tiny_folders["distilled"], GenerationRequest(**open_ended), 3)
    assert np.array_equal(live[: 33 * k], unchanged[: 33 * k]) and not np.array_equal(live[33 * k :], unchanged[33 * k :])


def test_bad_events_are_answered_naming_the_field_and_the_stream_goes_on(server):
    bad = [
        _event(1, prompt="a storm", transition_chunks=-1),
        _event(2, prompt="a storm", negative_prompt="blur"),
        _event(3, prompt=""),
        {"type": "event", "kind": "camera", "event_id": 4, "payload": {"yaw": 1}},
    ]
    result = _session(server, {**START, "max_chunks": 2}, after_chunk={0: bad})
    assert result["closed"] == "generation complete" and sorted(result["frames"]) == [0, 1]
    assert [(e["event_id"], e["content"].split(":")[0]) for e in result["errors"]] == [
        (1, "payload.transition_chunks"), (2, "payload.negative_prompt"), (3, "payload.prompt"), (4, "kind")]
    assert all(s["event_id"] is None for s in result["stats"])  # none of them started


def test_closing_the_websocket_stops_the_generation_and_releases_the_session(server):
    """Closed after chunk 0 of an open-ended stream: the worker releases the core session after at
    most the chunk in flight, and the server takes the next session at once."""
    log = server.process.log
    before = log.read_text(errors="replace").count("realtime session released")
    result = _session(server, START, close_after=0)
    assert result["closed"] == "client" and sorted(result["frames"]) == [0]
    deadline = time.monotonic() + 120
    released = []
    while time.monotonic() < deadline:
        released = re.findall(r"realtime session released after (\d+) chunk", log.read_text(errors="replace"))
        if len(released) > before:
            break
        time.sleep(1)
    assert len(released) == before + 1 and int(released[-1]) <= 2, released
    after = _session(server, {**START, "max_chunks": 1})
    assert after["closed"] == "generation complete" and len(after["frames"][0]) == 33


def test_i2v_takes_the_first_frame_as_bytes_in_the_init_message(server, tiny_folders):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    png = io.BytesIO()
    image.save(png, format="PNG")
    result = _session(server, {**START, "first_frame": png.getvalue(), "max_chunks": 1})
    assert result["errors"] == [] and result["closed"] == "generation complete"
    expected = core_chunks(tiny_folders["distilled"], GenerationRequest(**START, image=image, num_frames=MAX_NUM_FRAMES), 1)
    np.testing.assert_array_equal(_video(result), expected)


def test_a_refused_init_ends_the_session_with_an_error_naming_the_field(server):
    for init, field in [({**START, "first_frame": "/etc/passwd"}, "first_frame"), ({**START, "width": 100}, "width"),
                        ({**START, "output_path": "/tmp/x"}, "output_path")]:
        result = _session(server, init)
        assert result["frames"] == {} and len(result["errors"]) == 1, result
        assert result["errors"][0]["content"].startswith(f"error during generate loop: {field}: "), result["errors"]


def _init(**fields):
    from sglang.multimodal_gen.runtime.entrypoints.openai.protocol import RealtimeVideoGenerationsRequest

    return RealtimeVideoGenerationsRequest.model_validate({"type": "init", **fields})


def test_init_takes_the_variants_defaults_not_sglangs_832x480_and_guidance_1(tiny_folders):
    from helios_sglang.realtime import init_request

    plan = plan_for_folder(tiny_folders["mid"], init_request(_init(prompt="a fox")))
    assert (plan.width, plan.height, plan.guidance_scale) == (640, 384, 5.0)
    plan = plan_for_folder(tiny_folders["mid"], init_request(_init(prompt="a fox", size="128x64", guidance_scale=3.0, pyramid_steps=[1, 2, 1])))
    assert (plan.width, plan.height, plan.guidance_scale, plan.steps) == (128, 64, 3.0, (1, 2, 1))
    with pytest.raises(RequestError) as error:
        init_request(_init(prompt="a fox", condition_inputs={"segments": []}))
    assert error.value.field == "condition_inputs"


def test_two_sequence_parallel_workers_apply_a_live_change_at_the_same_chunk(parallel_folders, fp32_config, tmp_path):
    """`--num-gpus 2 --ulysses-degree 2` on SGLang's CPU platform (gloo): every worker runs the
    chunk requests on its own core session, so both take the change at the chunk the server reports
    and the video is one process's schedule video (a pixel may differ by one rounding step, as in
    test_parallel). A change sent right after init lands at chunk 1: SGLang prepares chunk 0
    before it reads events."""
    folder = parallel_folders["distilled"]
    server = start_server(folder, fp32_config, tmp_path, "--num-gpus", "2", "--ulysses-degree", "2")
    try:
        start = {"prompt": "a kite", "height": 64, "width": 128, "seed": 3}
        result = _session(server, {**start, "max_chunks": 2}, after_init=[_event(9, prompt="a storm", transition_chunks=1)])
    finally:
        server.stop()
    assert result["errors"] == [] and [(s["chunk_index"], s["event_id"]) for s in result["stats"]] == [(0, None), (1, 9)]
    schedule = GenerationRequest(**start, num_frames=MAX_NUM_FRAMES, interpolation_steps=1,
                                 prompt_schedule=[PromptSegment(0, "a kite"), PromptSegment(1, "a storm")])
    expected = core_chunks(folder, schedule, 2)
    got = _video(result)
    assert got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (int(diff.max()), float((diff > 0).mean()))
