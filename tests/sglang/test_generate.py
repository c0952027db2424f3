"""`sglang generate` (SGLang's offline CLI) runs the Helios core through the plugin."""

from __future__ import annotations

import json

import numpy as np

from helios_backends.request import GenerationRequest, PromptSegment
from helios_backends.media_read import decode_mp4

from .conftest import HEIGHT, WIDTH, as_served, core_frames, run_generate


def _assert_wrote(result, path):
    # `sglang generate` exits 0 even when the request failed: the mp4 is the evidence.
    assert path.is_file(), f"no mp4 (rc={result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def test_generate_writes_the_core_video_for_a_distilled_folder(tiny_folders, fp32_config, tmp_path):
    folder = tiny_folders["distilled"]
    result = run_generate(
        ["--model-path", str(folder), "--pipeline-config-path", str(fp32_config), "--warmup-mode", "off",
         "--prompt", "a red fox running through snow", "--height", str(HEIGHT), "--width", str(WIDTH),
         "--num-frames", "33", "--seed", "7", "--output-path", str(tmp_path), "--output-file-name", "fox.mp4"],
        cwd=tmp_path,
    )
    _assert_wrote(result, tmp_path / "fox.mp4")
    served = decode_mp4(tmp_path / "fox.mp4")
    assert served.shape == (33, HEIGHT, WIDTH, 3)
    expected = core_frames(folder, GenerationRequest(prompt="a red fox running through snow", height=HEIGHT, width=WIDTH, num_frames=33, seed=7))
    np.testing.assert_array_equal(served, as_served(expected, tmp_path / "ref.mp4"))


def test_generate_takes_helios_options_from_a_config_file_for_a_mid_folder(tiny_folders, fp32_config, tmp_path):
    """Options with no SGLang flag (pyramid steps, interactive prompts ...) come through --config."""
    folder = tiny_folders["mid"]
    options = {
        "pyramid_steps": [1, 2, 1],
        "guidance_scale": 3.0,
        "zero_steps": 0,
        "prompt_schedule": [{"start_chunk": 0, "prompt": "a calm lake"}, {"start_chunk": 1, "prompt": "a storm"}],
        "interpolation_steps": 2,
    }
    config = tmp_path / "request.json"
    config.write_text(json.dumps(options))
    result = run_generate(
        ["--model-path", str(folder), "--pipeline-config-path", str(fp32_config), "--warmup-mode", "off",
         "--config", str(config), "--prompt", "unused with a schedule", "--height", str(HEIGHT), "--width", str(WIDTH),
         "--num-frames", "66", "--seed", "11", "--output-path", str(tmp_path), "--output-file-name", "lake.mp4"],
        cwd=tmp_path,
    )
    _assert_wrote(result, tmp_path / "lake.mp4")
    served = decode_mp4(tmp_path / "lake.mp4")
    request = GenerationRequest(
        prompt="unused with a schedule", height=HEIGHT, width=WIDTH, num_frames=66, seed=11, pyramid_steps=(1, 2, 1),
        guidance_scale=3.0, zero_steps=0, interpolation_steps=2,
        prompt_schedule=[PromptSegment(0, "a calm lake"), PromptSegment(1, "a storm")],
    )
    expected = core_frames(folder, request)
    assert served.shape == expected.shape == (65, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(served, as_served(expected, tmp_path / "ref.mp4"))
