"""The live page (helios_backends/web/live.html) in headless Chromium against real servers.

Opened from its file with the server in the query, as a user opens it. SGLang: the page plays the
stream on its canvas and its prompt box changes the prompt live, verified from both ends: the
canvas shows frames the server sent (as captured on the browser's websocket), the server logs the
change at the chunk the page reports, and the video the browser received equals the server's own
video for the prompt schedule starting the change at that chunk (asked for by a second websocket
client), so the change reached the core session. vLLM-Omni: the page plays the fragmented MP4
through MediaSource (the <video> presents decoded frames of the served size) and the server
reports the page's change as started at a later chunk.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from helios_harness.launch import Http, Launched, free_port, wait_ready
from helios_harness.realtime import SglangMessages, sglang_realtime_session

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "helios_backends" / "web" / "live.html"
CHROMIUM = Path("/usr/bin/chromium")
START = {"height": 64, "width": 128, "seed": 4, "max_chunks": 3}
ENGINE_ENV = {
    "SGLANG_EXTERNAL_MODEL_PACKAGE": "helios_sglang",
    "SGLANG_DIFFUSION_PLATFORM_OVERRIDE": "cpu",
    "TORCHDYNAMO_DISABLE": "1",
    "HF_HUB_OFFLINE": "1",
}


def _engine_env(engine: str) -> Path:
    variable = f"HELIOS_{engine.upper()}_ENV"
    env = os.environ.get(variable)
    if not env or not (Path(env) / "bin" / engine).is_file():
        pytest.fail(f"{variable}={env!r}: needs the {engine} environment (scripts/test browser sets it)")
    return Path(env)


def _tiny_folder(env: Path, work: Path) -> Path:
    folder = work / "tiny"
    subprocess.run([str(env / "bin" / "helios"), "make-tiny", str(folder), "--variant", "distilled"], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = _engine_env("sglang")
    work = tmp_path_factory.mktemp("live-page-sglang")
    folder = _tiny_folder(env, work)
    config = work / "fp32.json"
    config.write_text(json.dumps({"dit_precision": "fp32", "vae_precision": "fp32"}))
    port = free_port()
    command = [str(env / "bin" / "sglang"), "serve", "--model-path", str(folder), "--pipeline-config-path", str(config),
               "--host", "127.0.0.1", "--port", str(port), "--warmup-mode", "off", "--output-path", str(work / "outputs"),
               "--sleep-on-idle"]  # no hot polling loop taking a core from Chromium while the server waits
    process = Launched(command, work / "server.log", env={**os.environ, **ENGINE_ENV}, cwd=work, sample_memory=False)
    wait_ready(process, Http(f"http://127.0.0.1:{port}"), timeout=420)
    yield f"ws://127.0.0.1:{port}", process
    process.stop(grace=60)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    env = _engine_env("vllm")
    work = tmp_path_factory.mktemp("live-page-vllm")
    folder = _tiny_folder(env, work)
    port = free_port()
    command = [str(env / "bin" / "vllm"), "serve", str(folder), "--omni", "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--enforce-eager", "--diffusion-streaming-output"]
    process = Launched(command, work / "server.log", env={**os.environ, "HF_HUB_OFFLINE": "1", "TORCHDYNAMO_DISABLE": "1"},
                       cwd=work, sample_memory=False)
    wait_ready(process, Http(f"http://127.0.0.1:{port}"), timeout=420)
    yield f"ws://127.0.0.1:{port}"
    process.stop(grace=60)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM}: missing; `scripts/setup-env browser` installs it with apt-get")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def test_the_page_plays_the_sglang_stream_and_its_prompt_box_changes_the_video(server, browser):
    url, process = server
    page = browser.new_page()
    received: list[bytes] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: received.append(payload) if isinstance(payload, bytes) else None))
    query = urllib.parse.urlencode({"engine": "sglang", "server": url, "prompt": "a fox", "options": json.dumps(START)})
    page.goto(f"{PAGE.as_uri()}?{query}")
    page.click("#start")
    page.wait_for_function("() => heliosLive.shown > 0", timeout=240_000)  # a frame of chunk 0 is on the canvas

    page.fill("#change", "a fox in a storm")
    page.fill("#transition", "2")
    page.click("#send")
    page.wait_for_function("() => heliosLive.ended !== null && heliosLive.shown === 99", timeout=300_000)
    live = page.evaluate("() => ({changes: heliosLive.changes, errors: heliosLive.errors, ended: heliosLive.ended, "
                         "chunks: heliosLive.chunks.map(c => c.frames)})")
    assert live["errors"] == [] and live["ended"] == "generation complete" and live["chunks"] == [33, 33, 33], live
    k = live["changes"][0]["started"]
    assert k in (1, 2), live

    messages = SglangMessages()
    batches = [m for m in map(messages.read, received) if m is not None and m["type"] == "frame_batch"]
    video = np.concatenate([b["frames"] for b in sorted(batches, key=lambda b: b["chunk_index"])])
    assert video.shape == (99, 64, 128, 3)
    canvas = page.evaluate("() => Array.from(document.getElementById('canvas').getContext('2d').getImageData(0, 0, 128, 64).data)")
    shown = np.array(canvas, np.uint8).reshape(64, 128, 4)[..., :3]
    np.testing.assert_array_equal(shown, video[-1])  # the canvas shows the stream's last frame

    assert f"Helios core: live prompt from chunk {k}: 'a fox in a storm'" in process.log.read_text(errors="replace")
    schedule = {**START, "prompt": "a fox", "prompt_schedule": [[0, "a fox"], [k, "a fox in a storm"]], "interpolation_steps": 2}
    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API keeps an event loop on this thread
        reference = thread.submit(asyncio.run, sglang_realtime_session(f"{url}/v1/realtime_video/generate", schedule, timeout=240)).result()
    assert reference["errors"] == [], reference["errors"]
    np.testing.assert_array_equal(video, np.stack([f for i in sorted(reference["frames"]) for f in reference["frames"][i]]))


def test_the_page_plays_vllm_omnis_fragmented_mp4_and_its_prompt_box_reaches_the_server(vllm_server, browser):
    page = browser.new_page()
    options = {"width": 128, "height": 64, "num_frames": 132, "seed": 4, "extra_params": {"pyramid_steps": [1, 1, 1]}}
    query = urllib.parse.urlencode({"engine": "vllm", "server": vllm_server, "prompt": "a fox", "options": json.dumps(options)})
    page.goto(f"{PAGE.as_uri()}?{query}")
    page.click("#start")
    page.wait_for_function("() => heliosLive.shown > 0", timeout=240_000)  # <video> presented a decoded frame

    page.fill("#change", "a fox in a storm")
    page.click("#send")
    page.wait_for_function("() => heliosLive.ended !== null", timeout=300_000)
    live = page.evaluate("() => ({changes: heliosLive.changes, errors: heliosLive.errors, ended: heliosLive.ended, "
                         "chunks: heliosLive.chunks.map(c => c.frames), size: [document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]})")
    assert live["errors"] == [] and live["ended"] == "session.done", live
    assert len(live["chunks"]) == 4 and live["size"] == [128, 64], live
    assert live["changes"][0]["started"] in (1, 2, 3), live  # the server's started_event_ids name the change
