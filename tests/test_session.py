"""The Session: one run loop for every front end, whole-output assembly, live prompt changes, and
release of what a request held on the device however it ends."""

from __future__ import annotations

import threading
import weakref

import pytest
import torch

from helios_backends.errors import GenerationCancelled, GenerationTimeout, RequestError
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest, PromptSegment

from .conftest import HEIGHT, WIDTH, random_image


def request(**kw):
    base = dict(prompt="a boat", height=HEIGHT, width=WIDTH, num_frames=66, pyramid_steps=(1, 1, 1), seed=1)
    return GenerationRequest(**{**base, **kw})


@pytest.fixture(scope="module")
def offloaded(checkpoints):
    """A Helios streaming its transformer blocks through one device slot (the host stands in for the device)."""
    return Helios.from_pretrained(checkpoints["mid"][0], offload="layer", offload_slots=1)


def assert_released(helios: Helios, session) -> None:
    assert helios.layers.resident == [] and helios.layers.device_bytes == 0 and helios.layers.slots == [None]
    assert session.closed and session.generation.context is None and session.generation.negative_context is None


def test_step_wise_driving_equals_iteration_and_assembles_the_same_video(cores):
    core = cores["distilled"]
    with core.session(request(), keep="frames") as iterated:
        chunks = list(iterated)
    stepped = core.session(request(), keep="frames")
    finished, steps = [], 0
    while not stepped.done:
        out = stepped.step()
        steps += 1
        if out is not None:
            finished.append(out)
            assert steps == sum(stepped.chunk_steps(k) for k in range(out.index + 1))  # returned by its chunk's last step
    stepped.close()
    assert steps == stepped.total_steps == sum(stepped.chunk_steps(k) for k in range(2))
    assert [c.index for c in finished] == [c.index for c in chunks] == [0, 1]
    assert all(torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames) for a, b in zip(finished, chunks))
    assert torch.equal(stepped.video(), iterated.video())
    assert torch.equal(iterated.video(), torch.cat([c.frames for c in chunks], 1)) and iterated.video().shape[1] == 65


def test_latent_output_is_the_conditioning_prefix_then_every_chunk(cores):
    core = cores["distilled"]
    with core.session(request(image=random_image(), num_frames=33), decode=False, keep="latents") as session:
        chunks = [c.latents for c in session]
        prefix = session.generation.prefix_latents
    latents = session.latents()
    assert latents.dtype == torch.float32 and latents.device.type == "cpu"
    assert torch.equal(latents, torch.cat([prefix.float(), *chunks], dim=2))
    with pytest.raises(RuntimeError, match="video: the session keeps latents, not frames"):
        session.video()


def test_leaving_a_session_releases_the_offload_slots_and_the_text_contexts(offloaded):
    session = offloaded.session(request(), decode=False)
    context = weakref.ref(session.generation.context)
    with session:
        chunks = iter(session)
        next(chunks)
        assert offloaded.layers.device_bytes > 0
    assert_released(offloaded, session)
    assert context() is None  # nothing keeps it: a CUDA-graph text slot frees with it


def test_an_error_mid_run_still_releases(offloaded):
    session = offloaded.session(request(), decode=False)
    with pytest.raises(KeyError), session:
        for _ in session:
            raise KeyError("the consumer failed")
    assert_released(offloaded, session)


def test_cancel_from_another_thread_stops_at_a_step_and_releases(offloaded):
    session = offloaded.session(request())
    with pytest.raises(GenerationCancelled), session:
        for _ in session:
            canceller = threading.Thread(target=session.cancel)
            canceller.start()
            canceller.join()
    assert session.steps_done < session.total_steps
    assert_released(offloaded, session)


def test_an_abandoned_iteration_releases(offloaded):
    session = offloaded.session(request(), decode=False)
    chunks = iter(session)
    next(chunks)
    chunks.close()  # what a server does when its client goes away
    assert_released(offloaded, session)
    with pytest.raises(RuntimeError, match="closed"):
        session.step()


def test_a_session_past_its_deadline_stops_with_a_timeout_and_releases(offloaded):
    session = offloaded.session(request(timeout_s=1e-9))
    with pytest.raises(GenerationTimeout, match=r"timeout_s: still running after 1e-09 s \(0 of"):
        session.run()
    assert_released(offloaded, session)


@pytest.mark.parametrize("variant", ["distilled", "mid"])  # mid: under CFG, the negative prompt stays
def test_a_live_prompt_change_equals_a_schedule_starting_the_prompt_at_that_chunk(cores, variant):
    core = cores[variant]
    common = dict(num_frames=132, interpolation_steps=2)
    schedule = [PromptSegment(0, "a boat"), PromptSegment(1, "a storm at sea")]
    scheduled = [c.latents for c in core.session(request(prompt=None, prompt_schedule=schedule, **common), decode=False)]
    live = []
    with core.session(request(prompt="a boat", **common), decode=False) as session:
        for chunk in session:
            live.append(chunk.latents)
            if chunk.index == 0:
                session.change_prompt("a storm at sea")
    assert len(live) == 4
    assert all(torch.equal(a, b) for a, b in zip(live, scheduled, strict=True))
    unchanged = [c.latents for c in core.session(request(prompt="a boat", **common), decode=False)]
    assert torch.equal(live[0], unchanged[0]) and not torch.equal(live[1], unchanged[1])


def test_a_live_change_blends_over_its_own_transition_chunks_as_a_schedule_of_that_length(cores):
    core = cores["distilled"]
    schedule = [PromptSegment(0, "a boat"), PromptSegment(1, "a storm at sea")]
    scheduled = [c.latents for c in core.session(request(prompt=None, prompt_schedule=schedule, num_frames=132, interpolation_steps=3),
                                                 decode=False)]
    live = []
    with core.session(request(prompt="a boat", num_frames=132, interpolation_steps=1), decode=False) as session:
        for chunk in session:
            live.append(chunk.latents)
            if chunk.index == 0:
                session.change_prompt("a storm at sea", transition_chunks=3)
    assert all(torch.equal(a, b) for a, b in zip(live, scheduled, strict=True))
    with core.session(request(num_frames=33), decode=False) as session:
        with pytest.raises(RequestError, match="transition_chunks: must be an integer >= 0, got -1"):
            session.change_prompt("a storm", transition_chunks=-1)


def test_a_live_prompt_change_in_step_wise_driving_takes_the_next_chunk(cores):
    core = cores["distilled"]
    schedule = [PromptSegment(0, "a boat"), PromptSegment(1, "a storm at sea")]
    scheduled = [c.latents for c in core.session(request(prompt=None, prompt_schedule=schedule), decode=False)]
    session = core.session(request(), decode=False)
    live = []
    while not session.done:
        out = session.step()
        if session.steps_done == 1:
            session.change_prompt("a storm at sea")  # mid-chunk 0: takes effect at chunk 1
        if out is not None:
            live.append(out.latents)
    session.close()
    assert all(torch.equal(a, b) for a, b in zip(live, scheduled, strict=True))


def test_a_live_prompt_change_needs_a_request_of_one_video(cores):
    with cores["distilled"].session(request(prompt=["a boat", "a car"]), decode=False) as session:
        with pytest.raises(RequestError, match="prompt: a live prompt change needs a request of one video, this one makes 2"):
            session.change_prompt("a storm")


def test_offload_settings_are_constructor_arguments(cores):
    core = cores["mid"]
    with pytest.raises(ValueError, match="offload 'layer'"):
        Helios(core.transformer, core.pipeline, core.scheduler, core.text_encoder, core.vae, offload="layer")
    assert Helios(core.transformer, core.pipeline, core.scheduler, core.text_encoder, core.vae, offload="model").offload == "model"


def test_a_live_prompt_change_before_the_first_chunk_replaces_the_prompt(cores):
    core = cores["distilled"]
    with core.session(request(num_frames=33), decode=False) as session:
        session.change_prompt("a storm at sea")
        (live,) = [c.latents for c in session]
    (asked,) = [c.latents for c in core.session(request(prompt="a storm at sea", num_frames=33), decode=False)]
    assert torch.equal(live, asked)
