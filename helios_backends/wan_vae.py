"""The Wan-2.1 video VAE, with the parameter names of diffusers' AutoencoderKLWan.

A video (B, 3, 1 + 4n, H, W) in [-1, 1] encodes to latents (B, 16, 1 + n, H/8, W/8): every
convolution is causal in time (an output frame sees only its own and earlier input frames), the
encoder halves the frame rate twice and the resolution three times. The decoder mirrors it.

Causality lets a video pass the encoder a few frames at a time, each group continuing where the
last stopped: `EncoderCache` carries, per causal conv, the input frames the next group's first
outputs still need. The encode runs the frame groups diffusers runs (the first frame, then 4 at a
time), so the same seed samples the same latents. The decode is `wan_decoder.WanChunkDecoder`'s,
which runs a whole chunk of latent frames per layer call over these modules' parameters. The
modules below define the architecture and the checkpoint's tensor names: a released
`vae/diffusion_pytorch_model.safetensors` loads into `WanAutoencoder` with every key matched.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VAEConfig

CACHE_T = 2  # input frames before its own that a causal 3x3x3 conv sees
ENCODE_FRAMES = 4  # video frames per encoder pass after the first frame (diffusers' grouping)


class CausalConv3d(nn.Conv3d):
    """A 3D convolution padded in time on the past side only: output frame t sees input frames up
    to t, and zeros before the video's start. `_padding` is in F.pad's order (width, height, time)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0):
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=padding)
        t, h, w = self.padding
        self._padding = (w, w, h, h, 2 * t, 0)
        self.padding = (0, 0, 0)  # forward pads instead, time on one side

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """history: the input frames just before x (zeros stand in for any the past padding lacks)."""
        w, _, h, _, past, _ = self._padding
        if history is not None and past:
            x = torch.cat([history, x], dim=2)
            past -= history.shape[2]
        return super().forward(F.pad(x, (w, w, h, h, past, 0)))


class EncoderCache:
    """The encoder's state between frame groups: per causal conv, its last CACHE_T input frames;
    per time-downsampling resample, the last frame its time conv was given. A fresh cache starts a
    video."""

    def __init__(self):
        self.frames: dict[nn.Module, torch.Tensor] = {}

    def conv(self, conv: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        """conv over x, continuing the frames it saw before."""
        history = self.frames.get(conv)
        seen = x if history is None or x.shape[2] >= CACHE_T else torch.cat([history, x], dim=2)
        self.frames[conv] = seen[:, :, -CACHE_T:].clone()
        return conv(x, history)

    def downsample_time(self, resample: Resample, x: torch.Tensor) -> torch.Tensor:
        """Halve x's frame rate with the resample's stride-2 time conv. The first group (a video's
        first frame) passes through as is; each later pair of frames joins the frame before it
        (kernel 3, no padding)."""
        before = self.frames.get(resample)
        self.frames[resample] = x[:, :, -1:].clone()
        if before is None:
            return x
        return resample.time_conv(torch.cat([before, x], dim=2))


class ChannelRMSNorm(nn.Module):
    """x / RMS over channels, times a learned per-channel gain (fp16/bf16 normalise in float32).
    frames: the input is video (B, C, T, H, W), else images (N, C, H, W)."""

    def __init__(self, dim: int, frames: bool = True):
        super().__init__()
        self.scale = dim**0.5  # F.normalize divides by the L2 norm, sqrt(dim) x the RMS
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1) if frames else torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = F.normalize(x.float() if x.element_size() < 4 else x, dim=1).to(x.dtype)
        return normalized * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """(norm, SiLU, causal 3x3x3 conv) twice, plus the input (through a 1x1x1 conv when the width changes)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.nonlinearity = nn.SiLU()
        self.norm1 = ChannelRMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = ChannelRMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: EncoderCache) -> torch.Tensor:
        h = cache.conv(self.conv1, self.nonlinearity(self.norm1(x)))
        h = cache.conv(self.conv2, self.nonlinearity(self.norm2(h)))
        return h + self.conv_shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention among each frame's pixels (not across frames), plus the input."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChannelRMSNorm(dim, frames=False)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        qkv = self.to_qkv(frames).reshape(b * t, 1, 3 * c, h * w).permute(0, 1, 3, 2).contiguous()  # (N, 1, HW, 3C)
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        out = self.proj(out).view(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return out + x


class Resample(nn.Module):
    """Per frame a 2x spatial resampling; the "3d" modes also change the frame rate 2x with a
    causal time conv.

    downsample2d/3d: a stride-2 3x3 conv (padded right and bottom), then for 3d a stride-2 time conv.
    upsample2d/3d: for 3d first a causal time conv whose two channel halves are each input
    frame's two output frames (wan_decoder interleaves them), then nearest 2x and a 3x3 conv to
    half the channels.
    """

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            upsample = nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact")
            self.resample = nn.Sequential(upsample, nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: EncoderCache) -> torch.Tensor:
        """The encoder's downsampling (the decoder's upsampling is WanChunkDecoder's)."""
        b, c, t, h, w = x.shape
        frames = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        x = frames.view(b, t, *frames.shape[1:]).permute(0, 2, 1, 3, 4)
        return cache.downsample_time(self, x) if self.mode == "downsample3d" else x


class MidBlock(nn.Module):
    """At the lowest resolution: residual block, attention, residual block."""

    def __init__(self, dim: int):
        super().__init__()
        self.attentions = nn.ModuleList([AttentionBlock(dim)])
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])

    def forward(self, x: torch.Tensor, cache: EncoderCache) -> torch.Tensor:
        x = self.resnets[0](x, cache)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x), cache)
        return x


class Encoder(nn.Module):
    """Video (B, 3, T, H, W) -> (B, 2 z_dim, T', H/8, W/8): per level, residual blocks then a 2x
    downsampling (in time too where temperal_downsample says), then the mid block."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        self.nonlinearity = nn.SiLU()
        self.conv_in = CausalConv3d(config.in_channels, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(config.temperal_downsample):
                layers.append(Resample(out_dim, "downsample3d" if config.temperal_downsample[level] else "downsample2d"))
        self.down_blocks = nn.ModuleList(layers)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = ChannelRMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: EncoderCache) -> torch.Tensor:
        x = cache.conv(self.conv_in, x)
        for layer in self.down_blocks:
            x = layer(x, cache)
        x = self.mid_block(x, cache)
        return cache.conv(self.conv_out, self.nonlinearity(self.norm_out(x)))


class UpBlock(nn.Module):
    """num_res_blocks + 1 residual blocks, then (except at the last level) a 2x upsampling."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res_blocks + 1)])
        self.upsamplers = nn.ModuleList([Resample(out_dim, upsample)]) if upsample else None


class Decoder(nn.Module):
    """Latents (B, z_dim, t, h, w) -> video (B, 3, T, 8h, 8w): the mid block, then per level
    residual blocks and a 2x upsampling, each halving the channels. Run by
    wan_decoder.WanChunkDecoder, a whole chunk of frames per layer call."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        base = config.decoder_base_dim or config.base_dim
        dims = [base * m for m in (config.dim_mult[-1], *reversed(config.dim_mult))]
        temporal_upsample = config.temperal_downsample[::-1]
        self.nonlinearity = nn.SiLU()
        self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:
                in_dim //= 2  # the previous level's upsampling conv halved the channels
            upsample = None
            if level < len(temporal_upsample):
                upsample = "upsample3d" if temporal_upsample[level] else "upsample2d"
            blocks.append(UpBlock(in_dim, out_dim, config.num_res_blocks, upsample))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = ChannelRMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], config.out_channels, 3, padding=1)


class WanAutoencoder(nn.Module):
    """The Wan-2.1 VAE: encoder and quant_conv give a diagonal Gaussian over the latents (mean and
    log-variance halves), post_quant_conv and the decoder map latents back to video."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)

    @property
    def device(self) -> torch.device:
        return self.quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def encode_moments(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, 2 z_dim, 1 + (T - 1) // 4, H/8, W/8): the posterior's mean and
        log-variance. The first frame passes alone, then 4 frames at a time (a last group of
        fewer is dropped, as diffusers drops it)."""
        cache = EncoderCache()
        starts = range(1, 1 + (video.shape[2] - 1) // ENCODE_FRAMES * ENCODE_FRAMES, ENCODE_FRAMES)
        groups = [video[:, :, :1]] + [video[:, :, i : i + ENCODE_FRAMES] for i in starts]
        return self.quant_conv(torch.cat([self.encoder(group, cache) for group in groups], dim=2))

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents sampled from the posterior: mean + std * noise, the noise drawn on the
        generator's device in the model's dtype, as diffusers draws it, so a seed gives diffusers' latents."""
        mean, logvar = self.encode_moments(video).chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        source = mean.device if generator is None else generator.device
        noise = torch.randn(mean.shape, generator=generator, device=source, dtype=mean.dtype).to(mean.device)
        return mean + std * noise
