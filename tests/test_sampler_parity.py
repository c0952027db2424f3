"""Whole runs: same seed, same settings -> the same latents as diffusers' Helios pipelines."""

from __future__ import annotations

import pytest
import torch

from helios_backends.request import GenerationRequest

from .conftest import HEIGHT, WIDTH, random_image, random_video, relative_error

TOL = 1e-5
PROMPT = "a red fox running through snow"
NEGATIVE = "blurry, static"


def core_latents(core, request: GenerationRequest) -> torch.Tensor:
    """Every latent frame the run produced, conditioning prefix first, as diffusers returns them."""
    gen = core.start(request, generator=torch.Generator().manual_seed(request.seed))
    chunks = [c.latents for c in core.stream(gen, decode=False)]
    prefix = [] if gen.prefix_latents is None else [gen.prefix_latents]
    return torch.cat(prefix + chunks, dim=2)


def diffusers_latents(pipe, seed: int, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).frames


def test_base_with_cfg_matches_diffusers_over_two_chunks(checkpoints, cores):
    _, pipe = checkpoints["base"]
    req = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=40,
                            num_inference_steps=4, guidance_scale=5.0, seed=3)
    ours = core_latents(cores["base"], req)
    ref = diffusers_latents(pipe, 3, prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH,
                            num_frames=40, num_inference_steps=4, guidance_scale=5.0)
    assert ours.shape == ref.shape == (1, 16, 18, HEIGHT // 8, WIDTH // 8)
    assert relative_error(ours, ref) <= TOL


def test_mid_with_cfg_zero_star_and_zero_init_matches_diffusers(checkpoints, cores):
    _, pipe = checkpoints["mid"]
    req = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=40,
                            pyramid_steps=(3, 2, 2), guidance_scale=5.0, use_zero_init=True, zero_steps=1, seed=5)
    ours = core_latents(cores["mid"], req)
    ref = diffusers_latents(pipe, 5, prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=40,
                            pyramid_num_inference_steps_list=[3, 2, 2], guidance_scale=5.0, use_zero_init=True, zero_steps=1)
    assert ours.shape == ref.shape
    assert relative_error(ours, ref) <= TOL


def test_mid_without_zero_init_matches_diffusers(checkpoints, cores):
    _, pipe = checkpoints["mid"]
    req = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=40,
                            pyramid_steps=(2, 2, 2), guidance_scale=4.0, use_zero_init=False, seed=6)
    ours = core_latents(cores["mid"], req)
    ref = diffusers_latents(pipe, 6, prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=40,
                            pyramid_num_inference_steps_list=[2, 2, 2], guidance_scale=4.0, use_zero_init=False)
    assert relative_error(ours, ref) <= TOL


@pytest.mark.parametrize("amplify", [True, False])
def test_distilled_dmd_matches_diffusers(checkpoints, cores, amplify):
    _, pipe = checkpoints["distilled"]
    req = GenerationRequest(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=70, pyramid_steps=(2, 1, 1),
                            guidance_scale=1.0, is_amplify_first_chunk=amplify, seed=7)
    ours = core_latents(cores["distilled"], req)
    ref = diffusers_latents(pipe, 7, prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=70,
                            pyramid_num_inference_steps_list=[2, 1, 1], guidance_scale=1.0, is_amplify_first_chunk=amplify)
    assert ours.shape == ref.shape == (1, 16, 27, HEIGHT // 8, WIDTH // 8)
    assert relative_error(ours, ref) <= TOL


def test_distilled_skip_first_chunk_matches_diffusers(checkpoints, cores):
    _, pipe = checkpoints["distilled"]
    req = GenerationRequest(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=70, pyramid_steps=(1, 1, 1),
                            is_skip_first_chunk=True, seed=8)
    ours = core_latents(cores["distilled"], req)
    ref = diffusers_latents(pipe, 8, prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=70, guidance_scale=1.0,
                            pyramid_num_inference_steps_list=[1, 1, 1], is_amplify_first_chunk=True, is_skip_first_chunk=True)
    assert relative_error(ours, ref) <= TOL


@pytest.mark.parametrize("variant", ["base", "distilled"])
def test_image_to_video_matches_diffusers(checkpoints, cores, variant):
    _, pipe = checkpoints[variant]
    image = random_image()
    steps = dict(num_inference_steps=3) if variant == "base" else dict(pyramid_steps=(1, 1, 1))
    ref_steps = dict(num_inference_steps=3) if variant == "base" else dict(pyramid_num_inference_steps_list=[1, 1, 1], is_amplify_first_chunk=True)
    guidance = 5.0 if variant == "base" else 1.0
    req = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, height=HEIGHT, width=WIDTH, num_frames=40,
                            guidance_scale=guidance, image_noise_sigma=(0.2, 0.3), seed=9, **steps)
    ours = core_latents(cores[variant], req)
    ref = diffusers_latents(pipe, 9, prompt=PROMPT, negative_prompt=NEGATIVE, image=image, height=HEIGHT, width=WIDTH,
                            num_frames=40, guidance_scale=guidance, image_noise_sigma_min=0.2, image_noise_sigma_max=0.3, **ref_steps)
    assert ours.shape == ref.shape == (1, 16, 19, HEIGHT // 8, WIDTH // 8)  # the fake image latent comes first
    assert relative_error(ours, ref) <= TOL


@pytest.mark.parametrize("frames", [40, 70])
def test_video_to_video_matches_diffusers(checkpoints, cores, frames):
    _, pipe = checkpoints["mid"]
    video = random_video(frames)
    req = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, video=video, height=HEIGHT, width=WIDTH, num_frames=40,
                            pyramid_steps=(2, 1, 1), guidance_scale=5.0, video_noise_sigma=(0.1, 0.4), seed=10)
    ours = core_latents(cores["mid"], req)
    ref = diffusers_latents(pipe, 10, prompt=PROMPT, negative_prompt=NEGATIVE, video=video, height=HEIGHT, width=WIDTH,
                            num_frames=40, pyramid_num_inference_steps_list=[2, 1, 1], guidance_scale=5.0,
                            video_noise_sigma_min=0.1, video_noise_sigma_max=0.4)
    assert ours.shape == ref.shape
    assert relative_error(ours, ref) <= TOL


def test_decoded_frames_match_diffusers_video(checkpoints, cores):
    _, pipe = checkpoints["distilled"]
    req = GenerationRequest(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=40, pyramid_steps=(1, 1, 1), seed=11)
    frames = torch.cat([c.frames for c in cores["distilled"].stream(req)], dim=1)
    with torch.no_grad():
        ref = pipe(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=40, guidance_scale=1.0, output_type="np",
                   pyramid_num_inference_steps_list=[1, 1, 1], is_amplify_first_chunk=True,
                   generator=torch.Generator().manual_seed(11)).frames
    ref = torch.from_numpy(ref).mul(255).round().to(torch.uint8)
    assert frames.shape == ref.shape == (1, 65, HEIGHT, WIDTH, 3)  # 2 chunks of 33, trimmed to 4k+1
    assert (frames.int() - ref.int()).abs().max() <= 1
