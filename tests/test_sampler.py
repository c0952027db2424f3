"""The step-wise API, the streamed chunks, bounded state and interactive prompts."""

from __future__ import annotations

import threading

import pytest
import torch

from helios_backends.errors import GenerationCancelled, GenerationTimeout, RequestError
from helios_backends.parallel import ParallelConfig, ParallelGroups
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest, PromptSegment
from helios_backends.sampler import interpolated_prompt

from .conftest import HEIGHT, WIDTH


def request(**kw):
    base = dict(prompt="a boat", height=HEIGHT, width=WIDTH, num_frames=40, pyramid_steps=(1, 1, 1), seed=1)
    return GenerationRequest(**{**base, **kw})


def state_bytes(gen) -> int:
    tensors = [gen.history_buffer, gen.image_latents, gen.text]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def test_stepwise_api_and_stream_give_the_same_latents(cores):
    core = cores["distilled"]
    gen = core.start(request())
    stepwise, steps = [], 0
    while not gen.done:
        gen.begin_chunk()
        while not gen.chunk_denoised:
            gen.step()
            steps += 1
        stepwise.append(gen.end_chunk().latents)
    assert steps == gen.total_steps == gen.steps_done == 6 + 3  # amplified first chunk: 6 steps, then 3
    streamed = [c.latents for c in core.stream(request(), decode=False)]
    assert all(torch.equal(a, b) for a, b in zip(stepwise, streamed, strict=True))


def test_stream_hands_out_each_chunk_before_the_next_is_computed(cores):
    core = cores["distilled"]
    gen = core.start(request(num_frames=99))
    stream = core.stream(gen)
    first = next(stream)
    assert first.index == 0 and gen.chunk == 0
    assert first.frames.shape == (1, 33, HEIGHT, WIDTH, 3) and first.frames.dtype == torch.uint8
    rest = list(stream)
    assert [c.index for c in rest] == [1, 2]
    assert sum(c.frames.shape[1] for c in [first, *rest]) == 97  # 3 x 33 trimmed to 4k+1


def test_sampler_state_does_not_grow_with_the_number_of_chunks(cores):
    core = cores["distilled"]
    sizes = []
    for frames in (33, 33 * 6):
        gen = core.start(request(num_frames=frames))
        for _ in core.stream(gen, decode=False):
            pass
        sizes.append((state_bytes(gen), tuple(gen.history_buffer.shape)))
    assert sizes[0] == sizes[1]
    assert sizes[0][1][2] == 19  # 16 + 2 + 1 history frames, whatever the length


def test_step_outside_a_chunk_is_refused(cores):
    gen = cores["distilled"].start(request())
    with pytest.raises(RuntimeError, match="begin_chunk"):
        gen.step()
    gen.begin_chunk()
    with pytest.raises(RuntimeError, match="not fully denoised"):
        gen.end_chunk()


def test_same_seed_same_latents_and_a_different_seed_differs(cores):
    core = cores["distilled"]
    a = [c.latents for c in core.stream(request(seed=4), decode=False)]
    b = [c.latents for c in core.stream(request(seed=4), decode=False)]
    c = [c.latents for c in core.stream(request(seed=5), decode=False)]
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_prompt_interpolation_blends_into_the_next_prompt_over_the_given_chunks():
    embeds = torch.stack([torch.zeros(2, 3), torch.ones(2, 3)])
    starts = [0, 2]
    weights = [interpolated_prompt(embeds, starts, k, steps=[3, 3]).mean().item() for k in range(6)]
    assert weights == pytest.approx([0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0])
    sharp = [interpolated_prompt(embeds, starts, k, steps=[3, 0]).mean().item() for k in range(4)]
    assert sharp == [0.0, 0.0, 1.0, 1.0]  # each prompt blends over its own length


def test_interactive_schedule_changes_the_prompt_at_its_chunk(cores):
    core = cores["distilled"]
    schedule = [PromptSegment(0, "a boat"), PromptSegment(1, "a storm at sea")]
    gen = core.start(request(prompt=None, prompt_schedule=schedule, num_frames=99, interpolation_steps=1))
    texts = []
    while not gen.done:
        gen.begin_chunk()
        texts.append(gen.chunk_text.clone())
        while not gen.chunk_denoised:
            gen.step()
        gen.end_chunk()
    assert gen.text.shape[0] == 2
    assert torch.equal(texts[0], gen.text[0:1]) and torch.equal(texts[1], gen.text[1:2]) and torch.equal(texts[2], gen.text[1:2])


def test_keep_first_frame_off_runs_with_a_two_frame_short_history(cores):
    outs = list(cores["distilled"].stream(request(keep_first_frame=False, num_frames=70), decode=False))
    assert len(outs) == 3 and all(torch.isfinite(o.latents).all() for o in outs)


def test_released_gamma_one_third_runs(tmp_path):
    """diffusers' fp32 Cholesky fails at gamma = 1/3 on CPU; ours factors in fp64."""
    from helios_backends.pipeline import Helios
    from helios_backends.tiny import make_tiny

    core = Helios.from_pretrained(make_tiny(tmp_path / "tiny", "distilled"))
    assert core.scheduler.gamma == pytest.approx(1 / 3)
    outs = list(core.stream(request(num_frames=10), decode=False))
    assert torch.isfinite(outs[0].latents).all()


def test_cancel_stops_the_next_step_and_every_later_one(cores):
    gen = cores["distilled"].start(request())
    gen.begin_chunk()
    gen.step()
    gen.cancel()
    for _ in range(2):
        with pytest.raises(GenerationCancelled, match="cancelled after 1 of 9 steps"):
            gen.step()
    assert gen.steps_done == 1


def test_cancel_from_another_thread_ends_a_stream_at_a_step_boundary(cores):
    core = cores["distilled"]
    gen = core.start(request(num_frames=99))
    stream = core.stream(gen, decode=False)
    next(stream)
    canceller = threading.Thread(target=gen.cancel)
    canceller.start()
    canceller.join()
    with pytest.raises(GenerationCancelled):
        list(stream)
    assert gen.steps_done < gen.total_steps


def test_a_request_past_its_timeout_stops_with_a_timeout_naming_the_steps_done(cores):
    core = cores["distilled"]
    gen = core.start(request(timeout_s=1e-9))
    gen.begin_chunk()
    with pytest.raises(GenerationTimeout, match=r"timeout_s: still running after 1e-09 s \(0 of 9 steps done\)") as info:
        gen.step()
    assert isinstance(info.value, GenerationCancelled)
    within = [c.latents for c in core.stream(request(timeout_s=3600), decode=False)]
    unlimited = [c.latents for c in core.stream(request(), decode=False)]
    assert all(torch.equal(a, b) for a, b in zip(within, unlimited, strict=True))


def test_stopping_a_parallel_generation_is_refused_since_ranks_would_stop_apart(cores):
    core = cores["distilled"]
    parallel = Helios(core.transformer, core.pipeline, core.scheduler, core.text_encoder, core.vae, ParallelGroups(ParallelConfig()))
    with pytest.raises(RequestError, match="timeout_s: is not available with parallel groups"):
        parallel.start(request(timeout_s=10))
    with pytest.raises(RuntimeError, match="not available with parallel groups"):
        parallel.start(request()).cancel()
