"""The Wan-2.1 VAE (wan_vae.WanAutoencoder) with Helios' latent normalisation."""

from __future__ import annotations

from pathlib import Path

import torch

from .loading import load_vae
from .wan_decoder import DecoderCache, WanChunkDecoder, to_channels_last
from .wan_vae import WanAutoencoder


class WanVAE:
    """Encode with WanAutoencoder; decode a chunk per layer call with WanChunkDecoder.

    channels_last: store the decoder's conv weights and run its activations channels-last, the
    layout cuDNN's convolutions take natively (channel-first, it transposes around every conv).
    None: on CUDA.
    frames_per_call: latent frames that pass the decoder's upsampled layers (everything after its
    first temporal upsampling) together. 1, the default: those layers' activations for 4 video
    frames at a time; None: the whole chunk, ~8.5 GiB at 384x640 bf16. The layers at the latents'
    resolution always take the whole chunk. The video is the same within rounding: the causal
    cache carries across passes.
    """

    temporal_factor = 4
    spatial_factor = 8

    def __init__(self, model: WanAutoencoder, channels_last: bool | None = None, frames_per_call: int | None = 1):
        self.model = model
        channels_last = model.device.type == "cuda" if channels_last is None else channels_last
        if channels_last:
            to_channels_last(model)
        self._decode = WanChunkDecoder(model, channels_last, frames_per_call)
        cfg = model.config
        self.mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(model.device, model.dtype)
        self.inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(model.device, model.dtype)
        self.temporal_factor = cfg.scale_factor_temporal
        self.spatial_factor = cfg.scale_factor_spatial

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype, device: torch.device, channels_last: bool | None = None,
             frames_per_call: int | None = 1) -> "WanVAE":
        return cls(load_vae(folder, dtype, device), channels_last, frames_per_call)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """video (B, 3, T, H, W) in [-1, 1] -> normalised latents, sampled from the posterior with `generator`."""
        video = video.to(device=self.device, dtype=self.dtype)
        latents = self.model.encode(video, generator)
        return (latents - self.mean) * self.inv_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, cache: DecoderCache | None = None) -> torch.Tensor:
        """Normalised latents (B, 16, t, h, w) -> video (B, 3, T, H, W) in [-1, 1].

        Without `cache` the latents decode as a video's start (T = 4t - 3), as diffusers' Helios
        pipelines decode every chunk; pass one cache through successive calls to continue a video
        seamlessly instead (T = 4t after the first call).
        """
        latents = latents.to(device=self.device, dtype=self.dtype) / self.inv_std + self.mean
        return self._decode(latents, cache)


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8, on the video's device."""
    frames = (video.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1)
