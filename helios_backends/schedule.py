"""Schedule math for Helios flow matching, as pure functions of the scheduler config.

A pyramid scheduler splits the training sigma range into `stages` pieces (stage_range); each
stage denoises at its own resolution over its own timestep range, and the start sigma of every
stage after the first is corrected for the re-noising done at upsampling (gamma). Values are
float64, computed with the same operations as the reference schedulers so they agree to the bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import SchedulerConfig


@dataclass(frozen=True)
class Schedule:
    """One stage's timesteps (N,) and sigmas (N+1,), the last sigma being the stage's end."""

    timesteps: torch.Tensor
    sigmas: torch.Tensor


@dataclass(frozen=True)
class StageLayout:
    ori_start_sigmas: tuple[float, ...]
    start_sigmas: tuple[float, ...]
    end_sigmas: tuple[float, ...]
    stage_timesteps: tuple[torch.Tensor, ...]  # the 1000-point timestep grid of each stage


def calculate_shift(image_seq_len: int, config: SchedulerConfig) -> float:
    """mu for dynamic shifting: linear in the token count between base and max sequence lengths."""
    m = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    return image_seq_len * m + (config.base_shift - m * config.base_image_seq_len)


def time_shift(kind: str, mu: float, t):
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)
    return mu / (mu + (1 / t - 1) ** 1.0)


def train_sigmas(config: SchedulerConfig) -> torch.Tensor:
    """The descending training sigmas (num_train_timesteps,), shifted by the static shift."""
    n, shift = config.num_train_timesteps, config.shift
    sigmas = 1.0 - np.linspace(1, 1 / n, n + 1)
    sigmas = np.flip(shift * sigmas / (1 + (shift - 1) * sigmas))[:-1].copy()
    return torch.from_numpy(sigmas)


def renoise_coefficients(ori_start_sigma: float, gamma: float) -> tuple[float, float]:
    """(a, b) of x = a * upsampled + b * block_noise when entering a stage.

    The nearest upsample makes 2x2 blocks identical; correlated block noise with covariance
    (1+g)I - g*11^T restores the per-pixel noise level of the stage's start sigma.
    """
    ori = 1 - ori_start_sigma
    a = 1 / (math.sqrt(1 + (1 / gamma)) * (1 - ori) + ori)
    return a, a * (1 - ori) / math.sqrt(gamma)


def stage_layout(config: SchedulerConfig) -> StageLayout:
    sigmas = train_sigmas(config)
    timesteps = sigmas * config.num_train_timesteps
    n = config.num_train_timesteps
    ori, start, end, distance = [], [], [], []
    for s in range(config.stages):
        i0 = max(int(config.stage_range[s] * n), 0)
        i1 = min(int(config.stage_range[s + 1] * n), n)
        s0 = sigmas[i0].item()
        s1 = sigmas[i1].item() if i1 < n else 0.0
        ori.append(s0)
        if s != 0:
            kept = 1 - s0
            s0 = 1 - renoise_coefficients(s0, config.gamma)[0] * kept
        start.append(s0)
        end.append(s1)
        distance.append(s0 - s1)
    total = sum(distance)
    grids = []
    for s in range(config.stages):
        r0 = 0.0 if s == 0 else sum(distance[:s]) / total
        r1 = 0.9999999999999999 if s == config.stages - 1 else sum(distance[: s + 1]) / total
        t_max = min(timesteps[int(r0 * n)], 999)
        t_min = timesteps[min(int(r1 * n), n - 1)]
        grid = np.linspace(t_max, t_min, n + 1)[:-1]  # numpy returns a tensor when t_max is one
        grids.append(grid if isinstance(grid, torch.Tensor) else torch.from_numpy(grid))
    return StageLayout(tuple(ori), tuple(start), tuple(end), tuple(grids))


def _dmd_trim(timesteps: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DMD plans one extra point and drops it: the last step jumps straight to sigma 0."""
    return timesteps[:-1], torch.cat([sigmas[:-2], sigmas[-1:]])


def num_schedule_points(config: SchedulerConfig, steps: int, amplify: bool) -> int:
    if config.kind != "dmd":
        return steps
    return steps * 2 + 1 if amplify else steps + 1


def stage_schedule(
    config: SchedulerConfig, layout: StageLayout, stage: int, steps: int, mu: float, amplify: bool = False
) -> Schedule:
    """Timesteps and sigmas of one pyramid stage (stages > 1)."""
    n = num_schedule_points(config, steps, amplify)
    grid = layout.stage_timesteps[stage]
    timesteps = torch.from_numpy(np.linspace(grid[0].item(), grid[-1].item(), n))
    stage_sigmas = np.linspace(0.999, 0, config.num_train_timesteps + 1)[:-1]
    sigmas = torch.cat([torch.from_numpy(np.linspace(stage_sigmas[0].item(), stage_sigmas[-1].item(), n)), torch.zeros(1)])
    if config.kind == "dmd":
        timesteps, sigmas = _dmd_trim(timesteps, sigmas)
    if config.use_dynamic_shifting:
        sigmas = time_shift(config.time_shift_type, mu, sigmas)
        timesteps = grid.min() + sigmas[:-1] * (grid.max() - grid.min())
    return Schedule(timesteps, sigmas)


def single_stage_schedule(
    config: SchedulerConfig, steps: int, mu: float, amplify: bool = False, sigmas: np.ndarray | None = None
) -> Schedule:
    """Timesteps and sigmas of a one-stage scheduler (Helios-Base).

    Base samples sigmas linspace(0.999, 0, N+1)[:-1] shifted by mu, as upstream's pipeline passes them.
    """
    n_train = config.num_train_timesteps
    if sigmas is None:
        n = num_schedule_points(config, steps, amplify)
        sigmas = np.linspace(0.999, 0.0, n + 1)[:-1]
    timesteps = torch.from_numpy((sigmas * n_train).copy())
    sig = torch.cat([torch.from_numpy(sigmas), torch.zeros(1)])
    if config.kind == "dmd":
        timesteps, sig = _dmd_trim(timesteps, sig)
    if config.use_dynamic_shifting:
        sig = time_shift(config.time_shift_type, mu, sig)
        timesteps = sig[:-1] * n_train
    elif config.shift != 1.0:
        sig = time_shift("exponential", config.shift, sig)
        timesteps = sig[:-1] * n_train
    return Schedule(timesteps, sig)


def image_seq_len(frames: int, height: int, width: int, patch_size: tuple[int, int, int]) -> int:
    return frames * height * width // math.prod(patch_size)
