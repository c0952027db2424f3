"""`vllm serve <tiny Helios-Distilled> --omni` with the plugin, over HTTP only."""

from __future__ import annotations

import base64
import json
import tempfile
import threading
import time

import httpx
import numpy as np
import pytest
from vllm_omni.entrypoints.openai.video_api_utils import _encode_video_bytes

from helios_backends.media_read import decode_mp4
from helios_backends.media_write import Mp4Writer

from .conftest import FAST, HEIGHT, WIDTH, core_frames, png_bytes, start_server

MIDDLEWARE = ("--middleware", "helios_vllm.http.HeliosRequestCheck")


@pytest.fixture(scope="module")
def server(tiny_folders, shared_server):
    return shared_server.get(tiny_folders["distilled"], *MIDDLEWARE)


def form(prompt="a red fox running through snow", extra=None, **fields):
    data = {"prompt": prompt, "width": WIDTH, "height": HEIGHT, **{k: str(v) for k, v in fields.items()}}
    data["extra_params"] = json.dumps({**FAST, **(extra or {})})
    return data


def decode(mp4: bytes) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(mp4)
        f.flush()
        return decode_mp4(f.name)


def served_as(frames: np.ndarray) -> np.ndarray:
    """The core's frames after the lossy step the server adds: vLLM-Omni's own mp4 encoding of them."""
    return decode(_encode_video_bytes(frames, fps=24, video_codec_options={"preset": "ultrafast", "threads": "0"}))


def reference(core, prompt="a red fox running through snow", **fields) -> np.ndarray:
    """What the server must return for a request: the core's own frames, through the server's encoder."""
    fields = {"height": HEIGHT, "width": WIDTH, "pyramid_steps": (1, 1, 1), **fields}
    return served_as(core_frames(core["distilled"], prompt=prompt, **fields))


def wait_done(server, video_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.client.get(f"/v1/videos/{video_id}").json()
        if job["status"] in ("completed", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"video {video_id} still {job['status']} after {timeout} s")


def job_ids(server) -> set[str]:
    return {job["id"] for job in server.client.get("/v1/videos").json()["data"]}


def sync_ok(server, **fields) -> np.ndarray:
    response = server.client.post("/v1/videos/sync", data=form(**fields))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    return decode(response.content)


def test_async_job_completes_and_its_mp4_has_the_planned_frames(server, core):
    response = server.client.post("/v1/videos", data=form(num_frames=66, seed=7))
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "queued"
    done = wait_done(server, job["id"])
    assert done["status"] == "completed", done
    content = server.client.get(f"/v1/videos/{job['id']}/content")
    assert content.status_code == 200
    frames = decode(content.content)
    # 66 frames -> two 33-frame chunks, trimmed to the VAE's 4k+1 length.
    assert frames.shape == (65, HEIGHT, WIDTH, 3)
    assert np.array_equal(frames, reference(core, num_frames=66, seed=7))


def test_sync_video_equals_the_core_run_with_the_same_seed(server, core):
    frames = sync_ok(server, num_frames=33, seed=11, negative_prompt="blurry")
    assert frames.shape == (33, HEIGHT, WIDTH, 3)
    assert np.array_equal(frames, reference(core, negative_prompt="blurry", num_frames=33, seed=11))
    other_seed = sync_ok(server, num_frames=33, seed=12, negative_prompt="blurry")
    assert not np.array_equal(other_seed, frames)


def test_two_cfg_requests_in_a_row_each_equal_the_core(server, core):
    """CFG holds a second text context per request; the request after the first must run with its own prompts."""
    for seed, (prompt, negative) in enumerate([("a red fox", "blurry"), ("a lake at dawn", "dark, noisy")]):
        frames = sync_ok(server, prompt=prompt, num_frames=33, seed=seed, guidance_scale=5.0, negative_prompt=negative)
        expected = reference(core, prompt=prompt, negative_prompt=negative, guidance_scale=5.0, num_frames=33, seed=seed)
        assert np.array_equal(frames, expected), (prompt, negative)


def test_helios_options_in_extra_params_reach_the_core(server, core):
    schedule = [[0, "a fox"], [1, "a wolf"]]
    options = {"interpolation_steps": 2, "is_amplify_first_chunk": False, "history_sizes": [8, 2, 1]}
    frames = sync_ok(server, num_frames=66, seed=3, extra={"prompt_schedule": schedule, **options})
    options["history_sizes"] = (8, 2, 1)
    expected = reference(core, prompt=None, prompt_schedule=[tuple(s) for s in schedule], num_frames=66, seed=3, **options)
    assert np.array_equal(frames, expected)


def test_image_to_video_from_an_upload_and_from_base64_equal_the_core(server, core):
    image = np.random.default_rng(5).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    expected = reference(core, prompt="a fox", image=image, num_frames=33, seed=2)
    files = {"input_reference": ("first.png", png_bytes(image), "image/png")}
    upload = server.client.post("/v1/videos/sync", data=form(prompt="a fox", num_frames=33, seed=2), files=files)
    assert upload.status_code == 200, upload.text
    assert np.array_equal(decode(upload.content), expected)
    inline = sync_ok(server, prompt="a fox", num_frames=33, seed=2, extra={"image": base64.b64encode(png_bytes(image)).decode()})
    assert np.array_equal(inline, expected)


def test_video_to_video_from_base64_equals_the_core_and_an_upload_completes(server, core, tmp_path):
    rng = np.random.default_rng(6)
    ramp = np.linspace(0, 200, HEIGHT * WIDTH * 3).reshape(HEIGHT, WIDTH, 3)
    source = np.clip(ramp[None] + rng.integers(0, 40, (40, HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "source.mp4"
    with Mp4Writer(path, WIDTH, HEIGHT, 24) as writer:
        writer.write(source)
    mp4 = path.read_bytes()
    expected = reference(core, prompt="a fox", video=list(decode_mp4(path)), num_frames=33, seed=8)
    inline = sync_ok(server, prompt="a fox", num_frames=33, seed=8, extra={"video": base64.b64encode(mp4).decode()})
    assert np.array_equal(inline, expected)
    files = {"input_reference": ("source.mp4", mp4, "video/mp4")}
    upload = server.client.post("/v1/videos/sync", data=form(prompt="a fox", num_frames=33, seed=8), files=files)
    assert upload.status_code == 200, upload.text
    assert decode(upload.content).shape == (33, HEIGHT, WIDTH, 3)


BAD_REQUESTS = {
    "negative_frames": ({"num_frames": -3}, None, "num_frames"),
    "size_the_pyramid_cannot_halve": ({"width": 96}, None, "width"),
    "malformed_pyramid_steps": ({}, {"pyramid_steps": "abc"}, "pyramid_steps"),
    "wrong_count_of_pyramid_steps": ({}, {"pyramid_steps": [1, 1]}, "pyramid_steps"),
    "unknown_extra_param": ({}, {"pyramid_step": [1, 1, 1]}, "pyramid_step"),
    "image_that_does_not_decode": ({}, {"image": base64.b64encode(b"not an image").decode()}, "image"),
    "image_given_as_a_path": ({}, {"image": "/etc/hostname"}, "image"),
    "non_boolean_flag": ({}, {"use_zero_init": "yes"}, "use_zero_init"),
}


@pytest.mark.parametrize("fields, extra, field", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_gets_4xx_naming_the_field_and_the_server_keeps_serving(server, fields, extra, field):
    data = form(extra=extra, **{"num_frames": 33, **fields})
    jobs_before = job_ids(server)
    for route in ("/v1/videos/sync", "/v1/videos"):
        response = server.client.post(route, data=data)
        assert 400 <= response.status_code < 500, (route, response.text)
        assert field in response.text, (route, response.text)
    assert job_ids(server) == jobs_before  # refused before a job was queued
    assert sync_ok(server, num_frames=33, seed=1).shape == (33, HEIGHT, WIDTH, 3)


def test_bad_upload_is_refused_before_queueing_naming_the_field(server):
    files = {"input_reference": ("still.png", b"not a png", "image/png")}
    response = server.client.post("/v1/videos", data=form(num_frames=33), files=files)
    assert response.status_code == 400 and "image" in response.json()["error"]["message"], response.text


def test_without_the_middleware_an_async_bad_request_fails_its_job_naming_the_field(tiny_folders, tmp_path_factory):
    """The engine-side check alone: vLLM-Omni queues the job, which then fails with the 4xx."""
    plain = start_server(tiny_folders["distilled"], tmp_path_factory, "serve-plain")
    try:
        created = plain.client.post("/v1/videos", data=form(num_frames=33, width=96))
        assert created.status_code == 200, created.text
        job = wait_done(plain, created.json()["id"])
        assert job["status"] == "failed" and 400 <= job["error"]["code"] < 500 and "width" in job["error"]["message"], job
    finally:
        plain.stop()


def test_concurrent_requests_all_complete(server):
    results: dict[int, object] = {}

    def post(i: int) -> None:
        response = server.client.post("/v1/videos/sync", data=form(num_frames=33 * (1 + i % 2), seed=100 + i % 2))
        results[i] = response

    threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert sorted(results) == [0, 1, 2, 3]
    videos = {}
    for i, response in results.items():
        assert response.status_code == 200, response.text
        videos[i] = decode(response.content)
        assert videos[i].shape == ((33, 65)[i % 2], HEIGHT, WIDTH, 3)
    assert np.array_equal(videos[0], videos[2]) and np.array_equal(videos[1], videos[3])


def test_request_failing_mid_run_is_marked_failed_and_the_next_succeeds(server):
    # timeout_s is a per-request time budget: it passes validation, and a 20-chunk request cannot
    # finish in 0.5 s, so the run stops between two denoising steps.
    created = server.client.post("/v1/videos", data=form(num_frames=660, seed=1, extra={"timeout_s": 0.5}))
    assert created.status_code == 200, created.text
    job = wait_done(server, created.json()["id"])
    assert job["status"] == "failed", job
    assert "timeout_s" in job["error"]["message"] and "steps done" in job["error"]["message"]
    assert server.client.get(f"/v1/videos/{job['id']}/content").status_code >= 400
    assert sync_ok(server, num_frames=33, seed=1).shape == (33, HEIGHT, WIDTH, 3)


def small_job_seconds(server) -> float:
    """One small request's time on this machine now (the yardstick for 'the long job was cut short')."""
    started = time.monotonic()
    sync_ok(server, num_frames=33, seed=1)
    return time.monotonic() - started


LONG_CHUNKS = 20  # of num_frames=660: each chunk about one small request's time


def test_deleting_a_running_job_stops_it_and_the_next_request_succeeds(server):
    small_s = small_job_seconds(server)
    created = server.client.post("/v1/videos", data=form(num_frames=660, seed=1))
    video_id = created.json()["id"]
    deadline = time.monotonic() + 30
    while server.client.get(f"/v1/videos/{video_id}").json()["status"] != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    deleted = server.client.delete(f"/v1/videos/{video_id}")
    assert deleted.status_code == 200 and deleted.json()["deleted"], deleted.text
    assert server.client.get(f"/v1/videos/{video_id}").status_code == 404
    assert sync_ok(server, num_frames=33, seed=1).shape == (33, HEIGHT, WIDTH, 3)
    # The 20-chunk job was cut short: it did not run to its end before the next request.
    assert time.monotonic() - started < small_s * LONG_CHUNKS / 2


def test_a_client_disconnecting_from_sync_aborts_its_job_and_the_next_request_succeeds(server):
    small_s = small_job_seconds(server)
    with pytest.raises(httpx.ReadTimeout):  # httpx closes the connection: the client is gone
        server.client.post("/v1/videos/sync", data=form(num_frames=660, seed=1), timeout=httpx.Timeout(60, read=small_s))
    started = time.monotonic()
    assert sync_ok(server, num_frames=33, seed=1).shape == (33, HEIGHT, WIDTH, 3)
    # The 20-chunk job was aborted: it did not run to its end before the next request.
    assert time.monotonic() - started < small_s * LONG_CHUNKS / 2
