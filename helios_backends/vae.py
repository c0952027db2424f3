"""The Wan-2.1 VAE (diffusers' AutoencoderKLWan) with Helios' latent normalisation."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan


class WanVAE:
    temporal_factor = 4
    spatial_factor = 8

    def __init__(self, model: AutoencoderKLWan, cuda_graphs: bool = False):
        self.model = model
        self._decode = self._eager_decode
        if cuda_graphs and model.device.type == "cuda":
            from .graphs import GraphedDecoder

            self._decode = GraphedDecoder(self._eager_decode)
        cfg = model.config
        self.mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(model.device, model.dtype)
        self.inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(model.device, model.dtype)
        self.temporal_factor = cfg.scale_factor_temporal
        self.spatial_factor = cfg.scale_factor_spatial

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype, device: torch.device, cuda_graphs: bool = False) -> "WanVAE":
        model = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=dtype).to(device)
        return cls(model.eval().requires_grad_(False), cuda_graphs)

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
        latents = self.model.encode(video).latent_dist.sample(generator=generator)
        return (latents - self.mean) * self.inv_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, 16, t, h, w) -> video (B, 3, T, H, W) in [-1, 1]."""
        latents = latents.to(device=self.device, dtype=self.dtype) / self.inv_std + self.mean
        return self._decode(latents)

    def _eager_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents, return_dict=False)[0]


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8, on the video's device."""
    frames = (video.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1)
