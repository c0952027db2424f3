"""The front-door conformance spec both engine suites run: the official `openai` SDK and raw HTTP.

A new user drives a server with `openai.OpenAI(base_url=...).videos`; every behaviour below is
what that user relies on. Each engine's `test_openai_sdk.py` starts one real server on 127.0.0.1
(tiny model) and hands a `Served` to these functions; engine-specific parts are data (`small`
fields, the refused fields with how each is sent). Not collected by itself (no `test_` prefix).
"""

from __future__ import annotations

import http.server
import io
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from helios_harness.launch import free_port
from helios_backends.media_read import decode_mp4
from helios_backends.media_write import Mp4Writer

HEIGHT, WIDTH = 64, 128
POLL_MS = 200


@dataclass
class Served:
    """One running server: its SDK client, a raw HTTP client, and the engine's spelling of a small request."""

    client: openai.OpenAI
    http: httpx.Client
    small: dict  # extra_body of a one-chunk, one-step-per-stage request
    long: dict  # extra_body of a request that runs for many steps (delete / failure tests)
    failing: dict  # extra_body of a request that passes validation and fails mid-run
    failure_names: str  # what the failed job's error message names
    image_body: dict  # extra_body giving png(5) inline (base64), the engine's spelling
    long_chunks: int  # chunks of the `long` request (each about one small job's time)
    media_fields: dict = field(default_factory=dict)  # extra_body beside an input_reference upload


def mp4_frames(data: bytes) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        return decode_mp4(f.name)


def png(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def mp4(seed: int, frames: int = 33) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        with Mp4Writer(path, WIDTH, HEIGHT, 24) as writer:
            writer.write(np.random.default_rng(seed).integers(0, 256, (frames, HEIGHT, WIDTH, 3), dtype=np.uint8))
        return path.read_bytes()


def completed(served: Served, **create) -> tuple[object, np.ndarray]:
    video = served.client.videos.create_and_poll(poll_interval_ms=POLL_MS, **create)
    assert video.status == "completed", video
    return video, mp4_frames(served.client.videos.download_content(video.id).read())


# -- the SDK flow ----------------------------------------------------------------------------------


def create_and_poll_completes_and_download_content_is_its_mp4(served: Served) -> None:
    video, frames = completed(served, prompt="a red fox", extra_body={**served.small, "seed": 3})
    assert frames.shape == (33, HEIGHT, WIDTH, 3)
    again = served.client.videos.retrieve(video.id)
    assert again.id == video.id and again.status == "completed" and again.progress == 100


def create_returns_a_queued_job_that_retrieve_follows_to_completion(served: Served) -> None:
    job = served.client.videos.create(prompt="a red fox", extra_body=served.small)
    assert job.status in ("queued", "in_progress"), job
    deadline = time.monotonic() + 120
    while (job := served.client.videos.retrieve(job.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, job
        time.sleep(POLL_MS / 1000)
    assert job.status == "completed", job


def a_failed_job_reads_back_as_failed_with_its_error(served: Served) -> None:
    """create_and_poll returns the failed job (it raises only if retrieve answers an error status)."""
    video = served.client.videos.create_and_poll(prompt="a fox", poll_interval_ms=POLL_MS, extra_body=served.failing)
    assert video.status == "failed", video
    assert served.failure_names in video.error.message, video.error
    assert served.client.videos.retrieve(video.id).status == "failed"


def image_to_video_by_input_reference_equals_the_base64_image_request(served: Served) -> None:
    """The SDK's upload reaches the core as the same image a base64 `image` field gives."""
    _, uploaded = completed(served, prompt="a fox", input_reference=("first.png", png(5), "image/png"),
                            extra_body={**served.small, **served.media_fields, "seed": 2})
    _, inline = completed(served, prompt="a fox", extra_body={**served.small, **served.image_body, "seed": 2})
    _, text_only = completed(served, prompt="a fox", extra_body={**served.small, "seed": 2})
    np.testing.assert_array_equal(uploaded, inline)
    assert not np.array_equal(uploaded, text_only)


def video_to_video_by_input_reference_completes(served: Served) -> None:
    _, frames = completed(served, prompt="a street", input_reference=("clip.mp4", mp4(6), "video/mp4"),
                          extra_body={**served.small, **served.media_fields})
    assert frames.shape == (33, HEIGHT, WIDTH, 3)


def list_honours_limit_and_pages_with_after(served: Served) -> None:
    ids = {served.client.videos.create(prompt=f"fox {i}", extra_body=served.small).id for i in range(3)}
    page = served.client.videos.list(limit=2)
    assert len(page.data) == 2 and page.has_more, page
    rest = served.client.videos.list(limit=100, after=page.data[-1].id)
    assert not {v.id for v in page.data} & {v.id for v in rest.data}
    assert ids <= {v.id for v in page.data} | {v.id for v in rest.data}
    for video_id in ids:
        served.client.videos.delete(video_id)


def deleting_a_running_job_stops_it_and_frees_the_worker(served: Served) -> None:
    """The deleted job's remaining chunks are not run: the next small job completes in about its own
    time (measured just before, on the same loaded machine), not after the long job's."""
    started = time.monotonic()
    completed(served, prompt="baseline", extra_body=served.small)
    small_s = time.monotonic() - started
    job = served.client.videos.create(prompt="a long fox", extra_body=served.long)
    deadline = time.monotonic() + 60
    while served.client.videos.retrieve(job.id).status != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    deleted = served.client.videos.delete(job.id)
    assert deleted.id == job.id and deleted.deleted is True and deleted.object == "video.deleted", deleted
    started = time.monotonic()
    try:
        served.client.videos.retrieve(job.id)
        raise AssertionError("a deleted job is still readable")
    except openai.NotFoundError:
        pass
    completed(served, prompt="next", extra_body=served.small)
    elapsed = time.monotonic() - started
    assert elapsed < small_s * served.long_chunks / 2, f"the deleted job kept the worker busy: {elapsed:.1f} s against {small_s:.1f} s for a small job"


SDK_SPEC = (
    create_and_poll_completes_and_download_content_is_its_mp4,
    create_returns_a_queued_job_that_retrieve_follows_to_completion,
    a_failed_job_reads_back_as_failed_with_its_error,
    image_to_video_by_input_reference_equals_the_base64_image_request,
    video_to_video_by_input_reference_completes,
    list_honours_limit_and_pages_with_after,
    deleting_a_running_job_stops_it_and_frees_the_worker,  # last: an engine that cannot abort stays busy
)


def sdk_cases(known_gaps: dict[str, str] | None = None) -> list:
    """SDK_SPEC as pytest params; a known gap (name -> reason) is a strict xfail, so closing it fails the suite until it is removed."""
    gaps = known_gaps or {}
    return [
        pytest.param(case, id=case.__name__, marks=[pytest.mark.xfail(strict=True, reason=gaps[case.__name__])] if case.__name__ in gaps else [])
        for case in SDK_SPEC
    ]


# -- refusals (raw HTTP) ---------------------------------------------------------------------------


class RecordingServer:
    """A 127.0.0.1 HTTP server that counts requests: a refused URL field must never reach it."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.write(png(1))

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = socketserver.TCPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def job_ids(served: Served) -> set[str]:
    return {v.id for v in served.client.videos.list(limit=100).data}


def refused_with_400_naming_the_field(served: Served, send: Callable[[httpx.Client], httpx.Response], field_name: str) -> None:
    before = job_ids(served)
    response = send(served.http)
    assert response.status_code == 400, (response.status_code, response.text)
    assert field_name in response.text, response.text
    assert job_ids(served) == before, "a refused request queued a job"
