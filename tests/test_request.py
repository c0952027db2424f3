"""Bad requests fail before any model work, with the field and the accepted range."""

from __future__ import annotations

import pytest

from helios_backends.config import PipelineConfig, SchedulerConfig
from helios_backends.errors import RequestError
from helios_backends.request import GenerationRequest, plan

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
