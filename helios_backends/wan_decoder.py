"""The Wan-2.1 VAE decoder run a whole chunk of latent frames per layer call.

diffusers' AutoencoderKLWan._decode feeds the decoder one latent frame at a time, so every
convolution runs on a single frame (at 384x640 hundreds of small cuDNN calls per frame). The
decoder is causal in time, so the same result comes from running each layer once over all of a
chunk's frames: a causal conv sees the last CACHE_T input frames before the chunk (zeros before
the video starts), per-frame ops (norms, attention, spatial resampling) are batched over frames.
The state between chunks lives in a `DecoderCache`, so decoding chunk after chunk with one cache
equals decoding the concatenated latents frame by frame in diffusers.

Memory: a whole chunk at full resolution holds ~8.5 GiB of bf16 activations at 384x640, so the
tail (everything after the first temporal upsampling: its spatial upsampling, the later up blocks,
the output conv) can run on a few latent frames' worth of frames at a time, one group after
another on the same cache. The head, at the latents' resolution, where per-frame calls would be
launch-bound, always takes the whole chunk; its output is small, so what the decode holds beyond
one group's working set is little. Causality makes the grouping invisible in the output.

On CUDA each norm + SiLU runs as one fused Triton pass (`channel_rmsnorm_silu`); the reference
ChannelRMSNorm makes an fp32 copy and four more full-size temporaries, which at full resolution are
the decode's peak and a sixth of its time. The pass also adds the previous conv's bias and writes
straight into the next causal conv's input buffer, and a residual block's last conv bias rides on
its residual add (`bias_residual_`), so no activation-sized pass is spent on a bias or a
concatenation. Channels-last (`WanVAE`'s default on CUDA) the activations stay in the layout
cuDNN's convolutions take natively; channel-first, cuDNN transposes around every conv.

The model's own parameters are used; nothing is copied. Only parameters and attributes that
diffusers' AutoencoderKLWan modules share (same names) are read, so bench/probe_gpu.py can run this
decoder on diffusers' VAE beside its own decode.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .backends import DecoderKernels, device_backend
from .wan_vae import CACHE_T, CausalConv3d, ChannelRMSNorm, Resample, ResidualBlock, UpBlock, WanAutoencoder


class DecoderCache:
    """The decoder's causal state after the frames decoded so far: per causal conv, its last
    CACHE_T input frames. A fresh cache decodes a chunk as the start of a video."""

    def __init__(self):
        self.frames: dict[CausalConv3d, torch.Tensor] = {}
        self.started = False

    def input_buffer(self, conv: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        """conv's (B, C, CACHE_T + T, H, W) input for x: the CACHE_T frames before x in front
        (zeros at the video's start), x's frames left for the caller to write."""
        b, c, t, h, w = x.shape
        buffer = torch.empty((b, c, CACHE_T + t, h, w), dtype=x.dtype, device=x.device, memory_format=_format(x))
        before = self.frames.get(conv)
        if before is None:
            buffer[:, :, :CACHE_T].zero_()
        else:
            buffer[:, :, :CACHE_T].copy_(before)
        return buffer

    def keep(self, conv: CausalConv3d, padded: torch.Tensor) -> None:
        """After conv's input `padded` is complete: its last CACHE_T frames (through the previous
        ones when x was shorter) are what the next frames' conv sees before them."""
        self.frames[conv] = padded[:, :, -CACHE_T:].clone(memory_format=_format(padded))

    def conv_input(self, conv: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        """x with the CACHE_T frames before it prepended; the cache moves on past x."""
        padded = self.input_buffer(conv, x)
        padded[:, :, CACHE_T:].copy_(x)
        self.keep(conv, padded)
        return padded


def _format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def to_channels_last(model: WanAutoencoder) -> None:
    """Store the decoder's conv weights channels-last (NDHWC / NHWC) in place, so cuDNN's
    channels-last kernels run without a per-call weight transpose. The encoder's keep their layout
    (layout is not semantics)."""
    for module in [model.post_quant_conv, *model.decoder.modules()]:
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
        elif isinstance(module, torch.nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)


def _conv_padded(conv: CausalConv3d, x: torch.Tensor, bias: bool) -> torch.Tensor:
    """conv on x whose time padding (its cached frames) is already in place; the conv itself
    pads space with zeros, so no padded copy of the activation is made."""
    pad_w, _, pad_h, _, _, _ = conv._padding
    return F.conv3d(x, conv.weight, conv.bias if bias else None, conv.stride, (0, pad_h, pad_w), conv.dilation, conv.groups)


def _nearest_2x(frames: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling of (N, C, H, W) frames (diffusers' nearest-exact: at an
    integer factor, output pixel i takes input pixel i // 2; its fp32 round trip changes nothing,
    since only values are copied). Channels-last, it is one broadcast copy in memory order, about
    twice as fast on an H200 as upsample_nearest2d's channels-last kernel (7 vs 16 ms a chunk)."""
    if frames.is_contiguous() or not frames.is_contiguous(memory_format=torch.channels_last):
        return F.interpolate(frames, scale_factor=2.0, mode="nearest")
    n, c, h, w = frames.shape
    pixels = frames.permute(0, 2, 3, 1)  # (N, H, W, C), contiguous
    up = pixels[:, :, None, :, None, :].expand(n, h, 2, w, 2, c).reshape(n, 2 * h, 2 * w, c)
    return up.permute(0, 3, 1, 2)


@contextmanager
def _cudnn_benchmark(on: bool):
    """With `on`, cuDNN picks each conv's algorithm by timing them once per shape (the decoder's
    shapes repeat every chunk); without, its heuristic picks. Only for the decode, whoever runs it
    (CLI or engine), leaving the process's setting as it was."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class WanChunkDecoder:
    """Decodes (B, z, t, h, w) latents to (B, 3, T, H, W) video in [-1, 1], one call per layer.

    T = 4t - 3 for the first chunk of a video (its first latent frame gives one frame), else 4t.
    `channels_last` runs the activations in channels_last_3d (call `to_channels_last` on the
    model too, or cuDNN transposes the weights on every call). `frames_per_pass` latent frames
    go through the tail (the layers after the first temporal upsampling) together (None: the
    whole chunk). `autotune`: cuDNN times every candidate conv algorithm on each new shape
    instead of taking its heuristic's pick. Off by default: while timing, each candidate holds
    its workspace, up to all the device's free memory, so a process's first decode would
    briefly claim most of the GPU (bench/RESULTS.md has the figures).
    """

    def __init__(self, model: WanAutoencoder, channels_last: bool = False, frames_per_pass: int | None = None,
                 autotune: bool = False):
        self.model = model
        self.channels_last = channels_last
        self.frames_per_pass = frames_per_pass
        self.autotune = autotune
        # Norms and residual adds on the device backend's fused kernels (helios_triton_kernels on
        # CUDA; the CPU tests set them under TRITON_INTERPRET=1); elsewhere torch.
        backend = device_backend(model.device.type)
        self.kernels: DecoderKernels | None = None if backend is None else backend.decoder
        blocks = model.decoder.up_blocks
        temporal = [i for i, b in enumerate(blocks) if b.upsamplers is not None and b.upsamplers[0].mode == "upsample3d"]
        self.split = temporal[0] if temporal else -1  # the up block whose time upsampling ends the head
        self.head_factor = 2 if temporal else 1  # head output frames per latent frame (after the first)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, cache: DecoderCache | None = None) -> torch.Tensor:
        with _cudnn_benchmark(self.autotune):
            return self._decode(z, DecoderCache() if cache is None else cache)

    def _decode(self, z: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        first = not cache.started
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last_3d)
        dec = self.model.decoder
        x = self._conv(self.model.post_quant_conv, z, cache)
        x = self._conv(dec.conv_in, x, cache)
        x = self._resnet(dec.mid_block.resnets[0], x, cache)
        for attn, resnet in zip(dec.mid_block.attentions, dec.mid_block.resnets[1:]):
            x = attn(x)  # per frame already: batched over the chunk's frames
            x = self._resnet(resnet, x, cache)
        for block in dec.up_blocks[: max(self.split, 0)]:
            x = self._up_block(block, x, cache, first)
        if self.split >= 0:
            block = dec.up_blocks[self.split]
            for resnet in block.resnets:
                x = self._resnet(resnet, x, cache)
            x = self._upsample_time(block.upsamplers[0], x, cache, first)
        groups = self._tail_groups(z.shape[2], first)
        out = torch.cat([self._tail(part, cache, first and i == 0) for i, part in enumerate(x.split(groups, dim=2))], dim=2)
        cache.started = True
        return out.clamp_(-1.0, 1.0)

    def _tail_groups(self, latent_frames: int, first: bool) -> list[int]:
        """Head output frames per tail pass: `frames_per_pass` latent frames each (a video's first
        latent frame gives one frame, the others `head_factor`)."""
        per_latent = [1 if first and i == 0 else self.head_factor for i in range(latent_frames)]
        n = self.frames_per_pass or latent_frames
        return [sum(per_latent[i : i + n]) for i in range(0, latent_frames, n)]

    def _tail(self, x: torch.Tensor, cache: DecoderCache, first: bool) -> torch.Tensor:
        """first: x starts with a video's first frame (the later temporal upsamplers pass it through)."""
        dec = self.model.decoder
        if self.split >= 0:
            x = self._upsample_space(dec.up_blocks[self.split].upsamplers[0], x)
        for block in dec.up_blocks[self.split + 1 :]:
            x = self._up_block(block, x, cache, first)
        return self._norm_act_conv(dec.norm_out, dec.nonlinearity, dec.conv_out, x, cache)

    @staticmethod
    def _conv(conv: CausalConv3d, x: torch.Tensor, cache: DecoderCache, bias: bool = True) -> torch.Tensor:
        """The causal conv over all of x's frames. bias=False leaves the bias to the consumer's pass."""
        if conv._padding[4]:  # time padding: the cached frames go in front
            x = cache.conv_input(conv, x)
        return _conv_padded(conv, x, bias)

    def _norm_act_conv(self, norm: ChannelRMSNorm, act: torch.nn.Module, conv: CausalConv3d, x: torch.Tensor, cache: DecoderCache,
                       pre_bias: torch.Tensor | None = None, bias: bool = True) -> torch.Tensor:
        """conv(act(norm(x + pre_bias))), the normalised frames written straight into conv's input
        buffer after its cached frames (no concatenation copy)."""
        if conv._padding[4] != CACHE_T:  # time padding other than the cache's frames
            return self._conv(conv, self._norm_act(norm, act, x, pre_bias), cache, bias)
        padded = cache.input_buffer(conv, x)
        self._norm_act(norm, act, x, pre_bias, out=padded[:, :, CACHE_T:])
        cache.keep(conv, padded)
        return _conv_padded(conv, padded, bias)

    def _norm_act(self, norm: ChannelRMSNorm, act: torch.nn.Module, x: torch.Tensor, pre_bias: torch.Tensor | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """act(norm(x + pre_bias)) into `out` (else a new tensor); pre_bias: the producing conv's
        bias (per channel)."""
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last_3d)
        if self.kernels is not None and isinstance(act, torch.nn.SiLU) and dense:  # the VAE's norms have no bias
            return self.kernels.channel_rmsnorm_silu(x, norm.gamma, None, norm.scale, pre_bias=pre_bias, out=out)
        y = act(norm(x if pre_bias is None else x + pre_bias.view(1, -1, 1, 1, 1)))
        return y if out is None else out.copy_(y)

    def _bias_residual(self, x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x += bias + residual in place (x: a conv's fresh output made without its bias)."""
        if self.kernels is not None:
            return self.kernels.bias_residual_(x, bias, residual)
        return x.add_(residual).add_(bias.view(1, -1, 1, 1, 1))

    def _resnet(self, block: ResidualBlock, x: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """The conv biases are folded into the next pass: conv1's into norm2, conv2's and the
        shortcut's into the residual add."""
        if isinstance(block.conv_shortcut, torch.nn.Identity):
            shortcut, bias = x, block.conv2.bias
        else:
            shortcut, bias = self._conv(block.conv_shortcut, x, cache, bias=False), block.conv2.bias + block.conv_shortcut.bias
        h = self._norm_act_conv(block.norm1, block.nonlinearity, block.conv1, x, cache, bias=False)
        h = self._norm_act_conv(block.norm2, block.nonlinearity, block.conv2, h, cache, pre_bias=block.conv1.bias, bias=False)
        return self._bias_residual(h, bias, shortcut)

    def _up_block(self, block: UpBlock, x: torch.Tensor, cache: DecoderCache, first: bool) -> torch.Tensor:
        for resnet in block.resnets:
            x = self._resnet(resnet, x, cache)
        if block.upsamplers is not None:
            x = self._resample(block.upsamplers[0], x, cache, first)
        return x

    def _resample(self, resample: Resample, x: torch.Tensor, cache: DecoderCache, first: bool) -> torch.Tensor:
        if resample.mode == "upsample3d":
            x = self._upsample_time(resample, x, cache, first)
        return self._upsample_space(resample, x)

    def _upsample_space(self, resample: Resample, x: torch.Tensor) -> torch.Tensor:
        """Per frame: nearest-neighbour 2x, then the resample's 2D conv. Channels-last, the frames
        are views of x and the result is channels_last_3d; channel-first, the result is made
        contiguous (the next norm and conv would otherwise take a frame-major layout)."""
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        upsample, conv = resample.resample
        frames = conv(_nearest_2x(frames) if tuple(upsample.scale_factor) == (2.0, 2.0) else
                      F.interpolate(frames, scale_factor=upsample.scale_factor, mode=upsample.mode))
        out = frames.view(b, t, *frames.shape[1:]).permute(0, 2, 1, 3, 4)
        return out if self.channels_last else out.contiguous()

    def _upsample_time(self, resample: Resample, x: torch.Tensor, cache: DecoderCache, first: bool) -> torch.Tensor:
        """Each latent frame -> 2 frames (channel halves of a causal time conv), except the video's
        first frame, which diffusers passes through as is and keeps out of the conv's history."""
        head = None
        if first:
            head, x = x[:, :, :1], x[:, :, 1:]
            if x.shape[2] == 0:
                return head
        y = self._conv(resample.time_conv, x, cache)
        b, c2, t, h, w = y.shape
        c = c2 // 2
        out = torch.empty((b, c, 2 * t, h, w), dtype=y.dtype, device=y.device, memory_format=_format(y))
        out[:, :, 0::2] = y[:, :c]
        out[:, :, 1::2] = y[:, c:]
        return out if head is None else torch.cat([head, out], dim=2)
