"""Bad requests fail before any model work, with the field and the accepted range."""

from __future__ import annotations

import json
import os

import pytest

from helios_backends.config import PipelineConfig, SchedulerConfig
from helios_backends.errors import CheckpointError, RequestError
from helios_backends.loading import COMPONENTS, plan_for_folder, read_configs
from helios_backends.parallel import CallTokens, call_tokens
from helios_backends.request import GenerationRequest, plan
from helios_backends.tiny import TINY_TRANSFORMER, model_index, scheduler_config

from .conftest import random_image, random_video

PYRAMID = PipelineConfig("HeliosPyramidPipeline", is_distilled=True)
BASE = PipelineConfig("HeliosPipeline")
THREE_STAGES = SchedulerConfig(kind="dmd", stages=3)
ONE_STAGE = SchedulerConfig(stages=1, stage_range=(0.0, 1.0))


def check(field: str, message: str, pipeline=PYRAMID, scheduler=THREE_STAGES, sp_degree=1, **kw):
    kw.setdefault("prompt", "a cat")
    with pytest.raises(RequestError, match=message) as info:
        plan(GenerationRequest(**kw), pipeline, scheduler, sp_degree=sp_degree)
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


def test_call_tokens_count_the_history_views_and_the_chunk_at_every_pyramid_stage():
    # 384x640 -> a 48x80 latent grid, 24x40 patches. History: long 16 frames 4x-pooled (4 x 6 x 10),
    # mid 2 frames 2x-pooled (1 x 12 x 20), short prefix + 1 frame (2 x 24 x 40). Current: 9 frames
    # at 6x10, 12x20 and 24x40 patches, smallest stage first.
    p = plan(GenerationRequest(prompt="a cat"), PYRAMID, THREE_STAGES)
    assert call_tokens(p, (1, 2, 2)) == (CallTokens(0, 2400, 540), CallTokens(1, 2400, 2160), CallTokens(2, 2400, 8640))
    base = plan(GenerationRequest(prompt="a cat", height=48, width=80), BASE, ONE_STAGE)  # 6x10 latents: long and mid pad
    assert call_tokens(base, (1, 2, 2)) == (CallTokens(0, 4 * 1 * 2 + 1 * 2 * 3 + 2 * 3 * 5, 9 * 3 * 5),)


def test_sizes_the_sequence_parallel_ranks_cannot_split_are_refused_naming_the_field_and_the_nearest_sizes():
    # Default Mid/Distilled size at 8 ranks: 540 stage-1 tokens; 256 or 512 rows would split.
    check("height", r"= 8 must divide the 540 current-chunk tokens of pyramid stage 1 of 3 at height 384, width 640 .*"
          r"nearest accepted: height 256 or 512 \(width 640\), or width 512 or 768 \(height 384\)", sp_degree=8)
    check("height", "must divide the 2400 history tokens", sp_degree=7)
    # 48x96 Base at 4 ranks: 50 history tokens; the closest fix is the width.
    check("width", r"= 4 must divide the 50 history tokens .* nearest accepted: width 64 or 128 \(height 48\), or height 128",
          pipeline=BASE, scheduler=ONE_STAGE, height=48, width=96, sp_degree=4)
    for height, width in ((48, 64), (48, 128), (128, 96)):
        assert plan(GenerationRequest(prompt="a cat", height=height, width=width), BASE, ONE_STAGE, sp_degree=4).height == height
    assert plan(GenerationRequest(prompt="a cat"), PYRAMID, THREE_STAGES, sp_degree=4).height == 384
    assert plan(GenerationRequest(prompt="a cat", height=48, width=96), BASE, ONE_STAGE).width == 96  # sp_degree 1: no check
    with pytest.raises(ValueError, match="sp_degree must be an integer >= 1, got 0"):
        plan(GenerationRequest(prompt="a cat"), PYRAMID, THREE_STAGES, sp_degree=0)


@pytest.mark.parametrize("variant", ["base", "mid", "distilled"])
def test_call_tokens_equal_the_token_counts_the_transformer_shards(variant, cores, monkeypatch):
    """Each call's [history, current] lengths as they reach ops.shard_tokens, against call_tokens, in stage order."""
    core = cores[variant]
    steps = {"num_inference_steps": 1} if variant == "base" else {"pyramid_steps": (1, 1, 1)}
    requests = [
        GenerationRequest(prompt="a kite", height=64, width=128, num_frames=34, guidance_scale=1.0, **steps),  # two chunks
        GenerationRequest(prompt="a kite", height=192, width=64, num_frames=1, guidance_scale=1.0, **steps),
        GenerationRequest(
            prompt="a kite", height=128 if variant == "base" else 192, width=48 if variant == "base" else 128, num_frames=1,
            guidance_scale=1.0, history_sizes=(8, 3, 2), keep_first_frame=False, num_latent_frames_per_chunk=5, **steps,
        ),
    ]
    seen: list[tuple[int, int]] = []
    base_ops = core.transformer.ops

    class RecordingOps:
        def __getattr__(self, name):
            return getattr(base_ops, name)

        def shard_tokens(self, x, history_len):
            seen.append((history_len, x.shape[1] - history_len))
            return base_ops.shard_tokens(x, history_len)

    monkeypatch.setattr(core.transformer, "ops", RecordingOps())
    for request in requests:
        seen.clear()
        for _ in core.stream(request, decode=False):
            pass
        expected = [(c.history, c.current) for c in call_tokens(core.plan(request), core.transformer.config.patch_size)]
        assert len(seen) >= len(expected) and list(dict.fromkeys(seen)) == expected, (request.height, request.width)


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
    with pytest.raises(RequestError, match="= 2 must divide the 27 current-chunk tokens") as info:
        plan_for_folder(folder, GenerationRequest(prompt="a cat", height=64, width=192), sp_degree=2)
    assert info.value.field == "height"


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
