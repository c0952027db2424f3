"""WanChunkDecoder (one call per layer per chunk) on our Wan VAE against diffusers' frame-by-frame
decode of the same weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan

from helios_backends.config import VAEConfig
from helios_backends.tiny import TINY_VAE
from helios_backends.vae import WanVAE
from helios_backends.wan_decoder import DecoderCache, WanChunkDecoder, to_channels_last
from helios_backends.wan_vae import WanAutoencoder

CHUNK = 9  # latent frames per Helios chunk


def tiny_diffusers_vae(**config) -> AutoencoderKLWan:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**{**TINY_VAE, **config}).eval()
    with torch.no_grad():  # larger than the default init, so no layer is near zero and the clamp bites
        for p in vae.decoder.parameters():
            p.mul_(1.5)
    return vae


def ours_from(vae: AutoencoderKLWan) -> WanAutoencoder:
    """Our VAE with diffusers' config and weights (their names are ours)."""
    ours = WanAutoencoder(VAEConfig.from_dict(dict(vae.config))).to(vae.device, vae.dtype).eval()
    ours.load_state_dict(vae.state_dict(), strict=True)
    return ours


def tiny_vaes(**config) -> tuple[WanAutoencoder, AutoencoderKLWan]:
    """Ours and diffusers' tiny VAE with the same weights."""
    theirs = tiny_diffusers_vae(**config)
    return ours_from(theirs), theirs


def latents(frames: int) -> torch.Tensor:
    return torch.randn(1, 16, frames, 4, 8, generator=torch.Generator().manual_seed(frames))


def diffusers_decode(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(z, return_dict=False)[0]


def assert_close(got: torch.Tensor, want: torch.Tensor):
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_successive_chunks_with_one_cache_equal_diffusers_decoding_the_whole_video_frame_by_frame(chunks):
    vae, theirs = tiny_vaes()
    z = latents(chunks * CHUNK)
    decoder, cache = WanChunkDecoder(vae), DecoderCache()
    parts = [decoder(z[:, :, i * CHUNK : (i + 1) * CHUNK], cache) for i in range(chunks)]
    assert [p.shape[2] for p in parts] == [33] + [36] * (chunks - 1)  # the video's first latent frame gives one frame
    assert_close(torch.cat(parts, 2), diffusers_decode(theirs, z))


def test_chunks_of_any_length_even_a_single_frame_continue_the_video_exactly():
    vae, theirs = tiny_vaes()
    z = latents(12)
    decoder, cache = WanChunkDecoder(vae), DecoderCache()
    parts = [decoder(z[:, :, a:b], cache) for a, b in ((0, 1), (1, 2), (2, 5), (5, 12))]
    assert_close(torch.cat(parts, 2), diffusers_decode(theirs, z))


def test_a_decoder_without_temporal_upsampling_runs_each_up_block_once():
    vae, theirs = tiny_vaes(temperal_downsample=[False, False, False])
    z = latents(4)
    decoder, cache = WanChunkDecoder(vae, frames_per_pass=1), DecoderCache()
    got = torch.cat([decoder(z[:, :, :2], cache), decoder(z[:, :, 2:], cache)], 2)
    assert_close(got, diffusers_decode(theirs, z))


@pytest.mark.parametrize("frames_per_pass", [None, 1])
def test_channels_last_weights_and_activations_decode_the_same_video(frames_per_pass):
    vae, theirs = tiny_vaes()
    z = latents(2 * CHUNK)
    want = diffusers_decode(theirs, z)
    to_channels_last(vae)
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    decoder, cache = WanChunkDecoder(vae, channels_last=True, frames_per_pass=frames_per_pass), DecoderCache()
    assert_close(torch.cat([decoder(z[:, :, :CHUNK], cache), decoder(z[:, :, CHUNK:], cache)], 2), want)


def test_the_core_decodes_each_chunk_as_a_video_start_like_diffusers_helios_pipelines():
    # float64: the two decodes split frames differently, and float32 rounding of that split differs
    # by CPU; the behaviour under test is the per-chunk start.
    vae, theirs = (v.double() for v in tiny_vaes())
    core = WanVAE(vae)
    z = latents(2 * CHUNK).double()
    normalised = (z - core.mean) * core.inv_std
    for chunk in (normalised[:, :, :CHUNK], normalised[:, :, CHUNK:]):
        want = diffusers_decode(theirs, chunk / core.inv_std + core.mean)
        assert_close(core.decode(chunk), want)


def test_decoding_a_frame_per_pass_for_low_vram_equals_the_whole_chunk_pass():
    vae, _ = tiny_vaes()
    z = latents(CHUNK)
    assert_close(WanVAE(vae, frames_per_call=1).decode(z), WanVAE(vae, frames_per_call=None).decode(z))


@pytest.mark.parametrize("frames_per_pass", [1, 2, 4])
def test_the_full_resolution_tail_in_frame_groups_continues_the_video_exactly(frames_per_pass):
    vae, theirs = tiny_vaes()
    z = latents(2 * CHUNK)
    decoder, cache = WanChunkDecoder(vae, frames_per_pass=frames_per_pass), DecoderCache()
    first_groups = decoder._tail_groups(CHUNK, first=True)
    # groups of the head's output: a latent frame is 2 frames there (the video's first is 1)
    assert sum(first_groups) == 1 + 2 * (CHUNK - 1) and first_groups[0] == 1 + 2 * (frames_per_pass - 1)
    parts = [decoder(z[:, :, :CHUNK], cache), decoder(z[:, :, CHUNK:], cache)]
    assert_close(torch.cat(parts, 2), diffusers_decode(theirs, z))


def test_the_gpu_probe_times_and_compares_the_decoders_on_a_tiny_cpu_vae(capsys):
    spec = importlib.util.spec_from_file_location("probe_gpu", Path(__file__).resolve().parents[1] / "bench" / "probe_gpu.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    results = probe.vae_decode(tiny_diffusers_vae(), (1, 16, 3, 4, 8), "cpu", torch.float32, reps=1)  # the bench drives diffusers' VAE
    names = ["diffusers frame by frame", "ours chunk-wise", "ours, tail 1 latent frame per pass", "ours, tail 2 latent frames per pass",
             "ours, tail after the last temporal upsampling, 1 latent frame per pass", "ours chunk-wise channels_last_3d",
             "ours, tail 1 latent frame per pass, channels_last_3d"]
    assert all(results[n] > 0 and results[f"{n} diff"] <= 1e-5 for n in names)
    assert capsys.readouterr().out.count("VAE decode 3 latent frames -> 9 frames 32x64 float32") == len(names)


@pytest.mark.parametrize("autotune", [False, True])
def test_the_decoder_takes_cudnns_heuristic_unless_asked_to_autotune_and_restores_the_process_setting(autotune):
    """Autotuning times every candidate conv algorithm, each holding its workspace (tens of GiB
    for the fp32 decoder's first decode on an H200), so it is the caller's choice, not the default."""
    vae, _ = tiny_vaes()
    seen = []
    hooks = [m.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.cudnn.benchmark))
             for m in vae.decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    decoder = WanChunkDecoder(vae) if not autotune else WanChunkDecoder(vae, autotune=True)
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not autotune  # the process's own setting, which the decode must not leak into
    try:
        decoder(latents(2))
        assert torch.backends.cudnn.benchmark is (not autotune)
    finally:
        torch.backends.cudnn.benchmark = before
        for hook in hooks:
            hook.remove()
    assert seen and set(seen) == {autotune}
