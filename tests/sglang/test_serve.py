"""`sglang serve` with the plugin, spoken to over HTTP only (one server for the module)."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from helios_backends.config import VARIANT_DEFAULTS
from helios_backends.loading import plan_for_folder
from helios_backends.request import GenerationRequest, PromptSegment
from helios_backends.media_read import decode_mp4
from helios_backends.media_write import Mp4Writer

from .conftest import HEIGHT, WIDTH, as_served, core_frames

VARIANT = "mid"  # pyramid + CFG-Zero*: the variant with the most request options


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def server(tiny_folders, shared_server):
    return shared_server.get(tiny_folders[VARIANT])


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _b64(buffer.getvalue())


def _mp4(tmp_path, frames: int, seed: int) -> tuple[str, list[np.ndarray]]:
    """A random clip as base64 mp4, and the frames the server will decode from it."""
    rng = np.random.default_rng(seed)
    path = tmp_path / "input.mp4"
    with Mp4Writer(path, WIDTH, HEIGHT, fps=24) as writer:
        writer.write(rng.integers(0, 256, (frames, HEIGHT, WIDTH, 3), dtype=np.uint8))
    return _b64(path.read_bytes()), list(decode_mp4(path))


SMALL = {"height": HEIGHT, "width": WIDTH, "pyramid_steps": [1, 1, 1]}


def test_served_t2v_equals_the_core_output_for_the_same_seed(server, tiny_folders, tmp_path):
    served = server.generate({"prompt": "a red fox", "num_frames": 33, "seed": 5, "guidance_scale": 4.0, "use_zero_init": False, **SMALL})
    request = GenerationRequest(prompt="a red fox", num_frames=33, seed=5, guidance_scale=4.0, use_zero_init=False,
                                height=HEIGHT, width=WIDTH, pyramid_steps=(1, 1, 1))
    expected = core_frames(tiny_folders[VARIANT], request)
    assert served.shape == (33, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(served, as_served(expected, tmp_path / "ref.mp4"))


def test_two_cfg_requests_in_a_row_each_equal_the_core_output(server, tiny_folders, tmp_path):
    """Mid guides every request (CFG-Zero*): the request after the first must run with its own prompts."""
    for seed, (prompt, negative) in enumerate([("a red fox", "blurry"), ("a lake at dawn", "dark, noisy")]):
        fields = dict(prompt=prompt, negative_prompt=negative, num_frames=33, seed=seed, guidance_scale=5.0)
        served = server.generate({**fields, **SMALL})
        expected = core_frames(tiny_folders[VARIANT], GenerationRequest(**fields, height=HEIGHT, width=WIDTH, pyramid_steps=(1, 1, 1)))
        np.testing.assert_array_equal(served, as_served(expected, tmp_path / f"ref-{seed}.mp4"))


def test_served_i2v_from_a_base64_image_equals_the_core_output(server, tiny_folders, tmp_path):
    image = _image(1)
    body = {"prompt": "a fox", "num_frames": 33, "seed": 2, "task": "i2v", "image": _png_base64(image),
            "image_noise_sigma": [0.2, 0.3], "extra_body": {"is_skip_first_chunk": False}, **SMALL}
    served = server.generate(body)
    request = GenerationRequest(prompt="a fox", num_frames=33, seed=2, task="i2v", image=image, image_noise_sigma=(0.2, 0.3),
                                height=HEIGHT, width=WIDTH, pyramid_steps=(1, 1, 1))
    np.testing.assert_array_equal(served, as_served(core_frames(tiny_folders[VARIANT], request), tmp_path / "ref.mp4"))


def test_served_v2v_and_interactive_prompts_equal_the_core_output(server, tiny_folders, tmp_path):
    video, frames = _mp4(tmp_path, 33, seed=3)
    schedule = [[0, "a quiet street"], [1, "a busy street"]]
    served = server.generate({"prompt": "a street", "num_frames": 66, "seed": 4, "video": video,
                              "extra_params": {"prompt_schedule": schedule, "interpolation_steps": 2}, **SMALL})
    request = GenerationRequest(prompt="a street", num_frames=66, seed=4, video=frames, interpolation_steps=2,
                                prompt_schedule=[PromptSegment(0, "a quiet street"), PromptSegment(1, "a busy street")],
                                height=HEIGHT, width=WIDTH, pyramid_steps=(1, 1, 1))
    expected = core_frames(tiny_folders[VARIANT], request)
    assert served.shape == expected.shape == (65, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(served, as_served(expected, tmp_path / "ref.mp4"))


BAD_REQUESTS = [
    ({"height": 96}, "height"),
    ({"pyramid_steps": [1, 2]}, "pyramid_steps"),
    ({"history_sizes": [16, 2]}, "history_sizes"),
    ({"image_noise_sigma": [0.5, 0.1]}, "image_noise_sigma"),
    ({"image": "not base64!"}, "image"),
    ({"video": _b64(b"not a video")}, "video"),
    ({"prompt_schedule": [{"start_chunk": 1, "prompt": "late"}]}, "prompt_schedule"),
    ({"input_reference": "/etc/hostname"}, "input_reference"),
    ({"task_type": "i2v"}, "task_type"),
    ({"task": "i2v"}, "image"),
    ({"seed": [1, 2]}, "seed"),
]


@pytest.mark.parametrize(("fields", "named"), BAD_REQUESTS, ids=[named for _, named in BAD_REQUESTS])
def test_bad_request_gets_400_naming_the_field(server, fields, named):
    status, payload = server.post_video({"prompt": "a fox", "num_frames": 33, **SMALL, **fields})
    assert status == 400, payload
    assert payload["detail"].startswith(f"{named}:"), payload


def test_server_keeps_serving_after_bad_requests(server):
    for fields, _ in BAD_REQUESTS:
        assert server.post_video({"prompt": "a fox", **SMALL, **fields})[0] == 400
    assert server.generate({"prompt": "still here", "num_frames": 33, **SMALL}).shape == (33, HEIGHT, WIDTH, 3)


def test_concurrent_requests_all_complete(server):
    results: dict[int, np.ndarray] = {}

    def one(seed: int) -> None:
        results[seed] = server.generate({"prompt": f"fox number {seed}", "num_frames": 33, "seed": seed, **SMALL})

    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert sorted(results) == [0, 1, 2]
    assert all(frames.shape == (33, HEIGHT, WIDTH, 3) for frames in results.values())
    assert not np.array_equal(results[0], results[1])


def test_request_failing_mid_run_is_marked_failed_and_the_next_succeeds(server):
    """timeout_s passes validation (a positive budget) and fails the job at its first denoising
    step, after planning and text encoding: the clock has always moved on by more than 1 ns."""
    status, job = server.post_video({"prompt": "a fox", "num_frames": 33, "timeout_s": 1e-9, **SMALL})
    assert status == 200, job
    failed = server.wait_job(job["id"])
    assert failed["status"] == "failed"
    assert "timeout_s: still running after 1e-09 s (0 of" in failed["error"]["message"], failed
    assert server.http.request("GET", f"/v1/videos/{job['id']}/content")[0] >= 400
    assert server.generate({"prompt": "next one", "num_frames": 33, **SMALL}).shape == (33, HEIGHT, WIDTH, 3)


def test_request_without_num_frames_gets_the_variant_length_not_sglangs_96(server, tiny_folders, tmp_path):
    served = server.generate({"prompt": "a long fox", "seed": 6, **SMALL})
    request = GenerationRequest(prompt="a long fox", seed=6, height=HEIGHT, width=WIDTH, pyramid_steps=(1, 1, 1))
    expected = core_frames(tiny_folders[VARIANT], request)
    # The core plans the variant's num_frames (Mid: 99) and makes the chunks that covers (97 frames
    # of 33-frame chunks at this size, as diffusers does); SGLang's default would have asked for 96.
    assert plan_for_folder(tiny_folders[VARIANT], request).num_frames == VARIANT_DEFAULTS[VARIANT].num_frames
    assert served.shape == expected.shape
    np.testing.assert_array_equal(served, as_served(expected, tmp_path / "ref.mp4"))
