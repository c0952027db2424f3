"""Bad requests fail before any model work, with the field and the accepted range."""

from __future__ import annotations

import json
import os

import pytest

from helios_backends.config import PipelineConfig, SchedulerConfig
from helios_backends.errors import CheckpointError, RequestError
from helios_backends.loading import COMPONENTS, plan_for_folder, read_configs
from helios_backends.request import GenerationRequest, plan
from helios_backends.tiny import TINY_TRANSFORMER, model_index, scheduler_config

from .conftest import random_image, random_video

PYRAMID = PipelineConfig("HeliosPyramidPipeline", is_distilled=True)
BASE = PipelineConfig("HeliosPipeline")
THREE_STAGES = SchedulerConfig(kind="dmd", stages=3)
ONE_STAGE = SchedulerConfig(stages=1, stage_range=(0.0, 1.0))


def check(field: str, message: str, pipeline=PYRAMID, scheduler=THREE_STAGES, **kw):
    kw.setdefault("prompt", "a cat")
    with pytest.raises(RequestError, match=message) as info:
        plan(GenerationRequest(**kw), pipeline, scheduler)
    assert info.value.field == field


def test_unset_fields_take_the_variants_defaults():
    p = plan(GenerationRequest(prompt="a cat"), PYRAMID, THREE_STAGES)
    assert (p.height, p.width, p.num_frames, p.steps, p.guidance_scale, p.is_amplify_first_chunk) == (384, 640, 240, (2, 2, 2), 1.0, True)
    assert p.num_chunks == 8 and p.output_frames == 261
    mid = plan(GenerationRequest(prompt="a cat"), PipelineConfig("HeliosPyramidPipeline", is_cfg_zero_star=True), SchedulerConfig())
    assert (mid.steps, mid.guidance_scale, mid.use_zero_init, mid.zero_steps, mid.num_frames) == ((20, 20, 20), 5.0, True, 1, 99)
    base = plan(GenerationRequest(prompt="a cat"), BASE, ONE_STAGE)
    assert (base.steps, base.guidance_scale, base.output_frames) == ((50,), 5.0, 97)


def test_sizes_the_pyramid_cannot_halve_twice_are_refused():
    check("height", "must be a multiple of 64 for 3 pyramid stage", height=400)
    check("width", "must be a multiple of 64", width=650)


def test_base_sizes_need_a_multiple_of_16():
    check("width", "must be a multiple of 16 for 1 pyramid stage", pipeline=BASE, scheduler=ONE_STAGE, width=648)


def test_num_frames_below_one_is_refused():
    check("num_frames", "must be >= 1, got 0", num_frames=0)
    check("num_frames", "must be an integer", num_frames="ten")


def test_pyramid_steps_must_have_one_value_per_stage():
    check("pyramid_steps", "needs 3 values .* got 2", pyramid_steps=(2, 2))
    check("pyramid_steps", "must be >= 1", pyramid_steps=(2, 0, 2))
    check("pyramid_steps", "only applies to pyramid", pipeline=BASE, scheduler=ONE_STAGE, pyramid_steps=(1, 1, 1))


def test_negative_guidance_is_refused():
    check("guidance_scale", "must be >= 0.0, got -1", guidance_scale=-1)


def test_i2v_needs_an_image_and_v2v_a_video():
    check("image", "task i2v needs an image", task="i2v")
    check("video", "task v2v needs a video", task="v2v")
    check("image", "not both", image=random_image(), video=random_video(33))
    check("video", "needs at least 33 frames", video=random_video(5), height=64, width=128)
    check("image", "must be an image", image="/etc/passwd")


def test_noise_ranges_must_be_ordered_within_zero_and_one():
    check("image_noise_sigma", "needs 0 <= min <= max <= 1", image_noise_sigma=(0.3, 0.2))
    check("video_noise_sigma", "two numbers", video_noise_sigma=0.2)


def test_prompt_schedule_must_start_at_chunk_zero_and_increase():
    check("prompt_schedule", "must begin at 0 and increase", prompt=None, prompt_schedule=[(1, "a"), (3, "b")])
    check("prompt_schedule", "must begin at 0 and increase", prompt=None, prompt_schedule=[(0, "a"), (0, "b")])


def test_missing_prompt_is_refused():
    check("prompt", "must be a string", prompt=None)


def test_timeout_must_be_a_positive_number_of_seconds():
    check("timeout_s", "must be > 0", timeout_s=0)
    check("timeout_s", "must be > 0", timeout_s=float("nan"))
    check("timeout_s", "<= 604800", timeout_s=float("inf"))
    check("timeout_s", "must be a number", timeout_s=True)
    assert plan(GenerationRequest(prompt="a cat", timeout_s=2), PYRAMID, THREE_STAGES).timeout_s == 2.0


def json_only_folder(root, variant: str):
    """A Helios folder with its json configs and empty component folders: no weights at all."""
    for name in COMPONENTS:
        (root / name).mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(model_index(variant)))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(variant)))
    (root / "transformer" / "config.json").write_text(json.dumps(TINY_TRANSFORMER.to_dict()))
    return root


def test_a_folder_validates_requests_from_its_json_files_without_weights(tmp_path):
    folder = json_only_folder(tmp_path / "distilled", "distilled")
    p = plan_for_folder(folder, GenerationRequest(prompt="a cat"))
    assert (p.steps, p.guidance_scale, p.is_amplify_first_chunk) == ((2, 2, 2), 1.0, True)
    with pytest.raises(RequestError, match="multiple of 64") as info:
        plan_for_folder(str(folder), GenerationRequest(prompt="a cat", height=96))
    assert info.value.field == "height"
    with pytest.raises(CheckpointError, match="model folder not found"):
        plan_for_folder(tmp_path / "missing", GenerationRequest(prompt="a cat"))


def test_folder_configs_are_read_once_and_again_when_a_json_file_changes(tmp_path):
    folder = json_only_folder(tmp_path / "helios", "distilled")
    first = read_configs(folder)
    assert read_configs(str(folder)) is first
    (folder / "model_index.json").write_text(json.dumps(model_index("mid")))
    os.utime(folder / "model_index.json", ns=(0, 0))  # a distinct stamp even on a coarse-clock filesystem
    assert read_configs(folder).pipeline.variant == "mid"
    assert plan_for_folder(folder, GenerationRequest(prompt="a cat")).guidance_scale == 5.0


def test_prompt_schedules_from_request_json_take_pairs_or_objects():
    from helios_backends.request import PromptSegment, parse_prompt_schedule

    expected = [PromptSegment(0, "a"), PromptSegment(2, "b")]
    assert parse_prompt_schedule([[0, "a"], [2, "b"]]) == expected
    assert parse_prompt_schedule([{"start_chunk": 0, "prompt": "a"}, {"start_chunk": 2, "prompt": "b"}]) == expected
    for bad in ([], "0,a", [[0]], [["0", "a"]], [[True, "a"]], [{"start": 0, "prompt": "a"}]):
        with pytest.raises(RequestError, match="prompt_schedule"):
            parse_prompt_schedule(bad)
