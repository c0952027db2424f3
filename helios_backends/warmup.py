"""Compiling the device's kernels while the weights load.

Where the kernels compile on first use (Triton on CUDA), a fresh machine's first request would
compile every variant it reaches, seconds on the critical path (bench/RESULTS.md). The variants
follow from the model's widths and dtypes, not from its weights or a request's sizes (the kernels
do not specialize on token or position counts), so the model's own code run once on tiny inputs
compiles them all: a one-block transformer with zeroed weights, with history tokens as every
chunk has them, and the VAE decoder on a short latent, first as a video's start and then
continuing it. from_pretrained runs the transformer's on a thread of its own from the start and the
decoder's once the VAE is loaded, while the weights are read.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import replace

import torch

from .config import TransformerConfig
from .fp8 import quantize_blocks
from .loading import build_model
from .transformer import FramePositions, History
from .vae import WanVAE
from .wan_decoder import DecoderCache

LOG = logging.getLogger(__name__)

# Tiny inputs: a 4x4 latent grid (2x2 tokens a frame), histories of 4, 2 and 1 frames.
GRID = (4, 4)
HISTORY_SIZES = (4, 2, 1)


def compile_transformer_kernels(config: TransformerConfig, dtype: torch.dtype, ops, device: torch.device, quantization: str | None) -> None:
    """Run the transformer's code once on tiny inputs. It needs no weights, so from_pretrained
    starts it on a thread of its own as loading begins."""
    _warm(device, lambda: run_transformer_once(config, dtype, ops, device, quantization))


def compile_decoder_kernels(vae: WanVAE) -> None:
    """Run the VAE decoder's code once on tiny inputs (from_pretrained: once the VAE is loaded)."""
    _warm(vae.device, lambda: run_decoder_once(vae))


def _warm(device: torch.device, run) -> None:
    """A failure costs only the head start (the kernels then compile on first use, as without
    it), so it is logged, not raised."""
    cuda = device.type == "cuda"
    try:
        with torch.cuda.device(device) if cuda else nullcontext(), torch.no_grad():  # a thread's CUDA device is its own
            run()
            if cuda:
                torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001 - see the docstring
        LOG.warning("compiling the kernels ahead of the first request failed (they compile on first use): %r", error)
    if cuda:
        torch.cuda.empty_cache()  # the tiny run's memory, back to the device


def run_transformer_once(config: TransformerConfig, dtype: torch.dtype, ops, device: torch.device, quantization: str | None) -> torch.Tensor:
    """One forward of a one-block copy of the model (fused as loaded, FP8 where asked) on a chunk
    of one latent frame with its three history views."""
    model = build_model(replace(config, num_layers=1), dtype, ops, fuse=True)
    model.to_empty(device=device)
    for param in model.parameters():
        param.zero_()
    if quantization == "fp8":
        quantize_blocks(model.blocks, ops)
    c = config.in_channels
    long_n, mid_n, short_n = HISTORY_SIZES
    latents = torch.zeros(1, c, 1, *GRID, device=device, dtype=dtype)
    history = History(short=latents.new_zeros(1, c, short_n + 1, *GRID), mid=latents.new_zeros(1, c, mid_n, *GRID),
                      long=latents.new_zeros(1, c, long_n, *GRID))
    text = latents.new_zeros(1, 8, config.text_dim)
    timestep = torch.full((1,), 500.0, device=device)
    positions = FramePositions.helios(HISTORY_SIZES, 1, keep_first_frame=True)
    return model(latents, timestep, text, history, positions=positions)


def run_decoder_once(vae: WanVAE) -> torch.Tensor:
    """Two latent frames decoded as a video's start, then two more continuing it."""
    latents = torch.zeros(1, vae.model.config.z_dim, 2, *GRID, device=vae.device, dtype=vae.dtype)
    cache = DecoderCache()
    vae.decode(latents, cache)
    return vae.decode(latents, cache)
