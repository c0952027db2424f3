"""Our Wan-2.1 VAE (helios_backends.wan_vae) is diffusers' AutoencoderKLWan: same checkpoint
names, same folder, and from the same weights the same latents for a seed and the same video."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKLWan

from helios_backends.config import VAEConfig
from helios_backends.errors import CheckpointError
from helios_backends.loading import load_vae
from helios_backends.tiny import TINY_VAE, make_tiny
from helios_backends.vae import WanVAE
from helios_backends.wan_vae import WanAutoencoder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Helios folder as `helios make-tiny` writes it (its VAE by our module)."""
    return make_tiny(tmp_path_factory.mktemp("tiny"), "distilled")


def theirs_from(folder, dtype=torch.float32) -> AutoencoderKLWan:
    return AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=dtype).eval()


def video(frames: int, dtype=torch.float32) -> torch.Tensor:
    """(2, 3, frames, 32, 48) in [-1, 1]: a batch of two, so the noise differs per sample too."""
    return (torch.rand(2, 3, frames, 32, 48, generator=torch.Generator().manual_seed(frames)) * 2 - 1).to(dtype)


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("config", [{}, TINY_VAE, {"decoder_base_dim": 64}], ids=["wan-2.1", "tiny", "decoder_base_dim"])
def test_our_vae_has_exactly_diffusers_parameter_names_and_shapes(config):
    """The released checkpoints' safetensors keys are diffusers' names: every one must be ours, and nothing else."""
    with torch.device("meta"):
        ours, theirs = WanAutoencoder(VAEConfig.from_dict(config)), AutoencoderKLWan(**config)
    assert shapes(ours) == shapes(theirs)


def test_the_tiny_folder_written_without_diffusers_loads_in_diffusers_with_the_weights_we_load(folder):
    theirs, info = AutoencoderKLWan.from_pretrained(folder / "vae", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or misshaped tensor
    assert json.loads((folder / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderKLWan"
    assert {k: v for k, v in theirs.config.items() if not k.startswith("_")} == VAEConfig.from_dict(TINY_VAE).to_dict()
    ours = load_vae(folder, torch.float32, torch.device("cpu"))
    want = theirs.state_dict()
    assert ours.state_dict().keys() == want.keys()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    # not a degenerate init: every layer has spread (a zero or constant conv would pass the encode/decode tests trivially)
    assert all(t.std() > 0 for name, t in want.items() if name.endswith("weight") and t.dim() > 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("frames", [1, 5, 12])
def test_encoding_with_a_seeded_generator_samples_diffusers_latents(folder, dtype, frames):
    """diffusers encodes the first frame, then 4 frames at a time (12 frames: the last 3 are
    dropped), and samples mean + std * noise with the noise drawn in the VAE's dtype: a seed then
    gives the same latents. float64 pins the noise's dtype (CPU randn in float64 is not float32
    randn cast; in bfloat16 it is, at these sizes)."""
    ours, theirs = load_vae(folder, dtype, torch.device("cpu")), theirs_from(folder, dtype)
    x = video(frames, dtype)
    with torch.no_grad():
        got = ours.encode(x, torch.Generator().manual_seed(7))
        want = theirs.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(7))
    assert got.shape == (2, 16, 1 + (frames - 1) // 4, 4, 6) and got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_the_cores_encode_normalises_diffusers_latents_with_the_configs_mean_and_std(folder):
    """WanVAE.encode is what the image- and video-to-video conditioning feeds the transformer."""
    core, theirs = WanVAE.load(folder, torch.float32, torch.device("cpu")), theirs_from(folder)
    x = video(5)
    with torch.no_grad():
        sample = theirs.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(3))
    mean = torch.tensor(theirs.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(theirs.config.latents_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(core.encode(x, torch.Generator().manual_seed(3)), (sample - mean) / std, rtol=1e-5, atol=1e-5)


def test_decoding_the_tiny_folder_gives_diffusers_video(folder):
    core, theirs = WanVAE.load(folder, torch.float32, torch.device("cpu")), theirs_from(folder)
    z = torch.randn(1, 16, 9, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = theirs.decode(z / core.inv_std + core.mean, return_dict=False)[0]
    got = core.decode(z)
    assert got.shape == want.shape == (1, 3, 33, 32, 48)
    assert want.std() > 0.01  # a video, not a constant
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("field", "value"), [("is_residual", True), ("patch_size", 2), ("attn_scales", [0.5])])
def test_a_vae_config_other_than_wan_2_1_is_refused_naming_the_field(tmp_path, field, value):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({**TINY_VAE, field: value}))
    with pytest.raises(CheckpointError, match=f"vae config: {field} ") as caught:
        load_vae(tmp_path, torch.float32, torch.device("cpu"))
    assert "\n" not in str(caught.value)


def test_a_vae_config_with_an_unknown_field_is_refused_by_name(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({**TINY_VAE, "clip_output": True}))
    with pytest.raises(CheckpointError, match=r"unknown config keys \['clip_output'\]"):
        load_vae(tmp_path, torch.float32, torch.device("cpu"))


def test_a_checkpoint_tensor_our_vae_lacks_is_refused_by_name(folder, tmp_path):
    from safetensors.torch import load_file, save_file

    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text((folder / "vae" / "config.json").read_text())
    tensors = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    tensors["decoder.norm_out.bias"] = torch.zeros(8, 1, 1, 1)
    save_file(tensors, tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['decoder.norm_out.bias'\]"):
        load_vae(tmp_path, torch.float32, torch.device("cpu"))
