"""The chunked, pyramid sampler as a step-wise state machine.

A `Generation` is one request in flight, driven one call at a time by its `Session`
(session.py), the one loop every front end uses:

    gen.begin_chunk()                     # draws the chunk's noise, picks its prompt
    while not gen.chunk_denoised:
        gen.step()                        # one denoising step (stage changes happen inside)
    chunk = gen.end_chunk()               # latents of the chunk; history updated

`step()` stops a generation that `cancel()` was called on, or whose request's `timeout_s` has
run out since it was created, by raising `GenerationCancelled` / `GenerationTimeout`; the
state is left as it was, so no half-done step is ever visible.

Random numbers are drawn from the request's generator in the reference pipelines' order (VAE
posterior samples and conditioning noise at the start; per chunk the chunk noise; per pyramid
stage after the first the block noise), so equal seeds give equal latents. The sampler keeps
only the history frames the transformer reads (the last sum(history_sizes) latent frames and
the first-frame prefix), so its state does not grow with the video's length.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import PipelineConfig, SchedulerConfig
from .errors import GenerationCancelled, GenerationTimeout, RequestError
from .parallel import ParallelGroups, cfg_branches
from .request import LATENT_STRIDE, Plan
from .schedule import calculate_shift, image_seq_len, renoise_coefficients, single_stage_schedule, stage_layout, stage_schedule
from .schedulers import make_stepper
from .transformer import FramePositions, HeliosTransformer, History


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Normal noise drawn on the generator's device (so a CPU seed gives the same noise anywhere)."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


def rand(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=source).to(device)


def block_noise(shape, gamma: float, patch_hw: tuple[int, int], generator, device) -> torch.Tensor:
    """Noise correlated within each (ph x pw) block: covariance (1 + gamma) I - gamma 11^T.

    At the released gamma = 1/3 the covariance is singular up to the 1e-8 jitter; the factor is
    taken in float64, where the jitter keeps it positive definite (fp32 Cholesky fails there).
    """
    b, c, t, h, w = shape
    ph, pw = patch_hw
    n = ph * pw
    cov = torch.eye(n, dtype=torch.float64) * (1 + gamma) - torch.ones(n, n, dtype=torch.float64) * gamma
    chol = torch.linalg.cholesky(cov + torch.eye(n, dtype=torch.float64) * 1e-8).float().to(device, non_blocking=True)
    z = randn((b * c * t * (h // ph) * (w // pw), n), generator, device)
    noise = (z @ chol.T).view(b, c, t, h // ph, w // pw, ph, pw)
    return noise.permute(0, 1, 2, 3, 5, 4, 6).reshape(b, c, t, h, w)


def resize_frames(latents: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize each latent frame (B, C, T, h, w) spatially."""
    b, c, t, h, w = latents.shape
    x = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    x = F.interpolate(x, size=size, mode=mode)
    return x.reshape(b, t, c, *size).permute(0, 2, 1, 3, 4)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, zero_star: bool) -> torch.Tensor:
    """Classifier-free guidance; CFG-Zero* first rescales the unconditional branch by s* = <c,u>/|u|^2."""
    if not zero_star:
        return uncond + scale * (cond - uncond)
    b = cond.shape[0]
    c, u = cond.reshape(b, -1).float(), uncond.reshape(b, -1).float()
    s = (c * u).sum(1, keepdim=True) / ((u**2).sum(1, keepdim=True) + 1e-8)
    s = s.view(b, *([1] * (cond.ndim - 1))).to(cond.dtype)
    return uncond * s + scale * (cond - uncond * s)


def interpolated_prompt(embeds: torch.Tensor, starts: list[int], chunk: int, steps: list[int]) -> torch.Tensor:
    """Interactive mode: a new prompt, scheduled or live, blends in from the previous one over its `steps` chunks.

    Upstream lerps with weights linspace(0, 1, steps), so a prompt's own start chunk still shows
    only the old prompt; here the weight is (p + 1) / steps for the p-th chunk of the prompt, so
    the new prompt acts from the chunk it was scheduled at and is whole `steps - 1` chunks later
    (vLLM-Omni's transition_chunks count the same way). steps[j] is prompt j's blend length.
    """
    j = max(i for i, s in enumerate(starts) if s <= chunk)
    into = chunk - starts[j]
    if j == 0 or into >= steps[j] - 1:
        return embeds[j : j + 1]
    return torch.lerp(embeds[j - 1 : j], embeds[j : j + 1], (into + 1) / steps[j])


@dataclass(frozen=True)
class Chunk:
    """One finished chunk: its index and latents (B, 16, T, h, w)."""

    index: int
    latents: torch.Tensor


class Generation:
    def __init__(
        self,
        plan: Plan,
        transformer: HeliosTransformer,
        pipeline: PipelineConfig,
        scheduler: SchedulerConfig,
        text: torch.Tensor,
        negative_text: torch.Tensor | None,
        generator: torch.Generator | None,
        image_latents: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
        prefix_latents: torch.Tensor | None = None,
        parallel: ParallelGroups | None = None,
    ):
        """text: (B, S, D) prompt states, or (P, S, D) for an interactive schedule of P prompts.

        image_latents: the first-frame prefix (I2V/V2V); history: initial history frames (I2V's fake
        latent, V2V's noised video latents); prefix_latents: the conditioning frames the reference
        pipeline counts as generated before chunk 0 (kept for latent output only).
        parallel: the caller's process groups; with a cfg group each rank runs one guidance branch.
        """
        self.cfg_parallel = parallel is not None and parallel.cfg is not None
        if self.cfg_parallel and not plan.do_cfg:
            raise RequestError("guidance_scale", f"cfg_parallel needs guidance_scale > 1 (CFG on), got {plan.guidance_scale}")
        if parallel is not None and plan.timeout_s is not None:
            raise RequestError("timeout_s", "is not available with parallel groups: each rank's clock would stop it at a different step")
        self.parallel = parallel
        self.plan = plan
        self.transformer = transformer
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.generator = generator
        self.device = transformer.device
        self.dtype = transformer.dtype
        self.text = text.to(self.device, self.dtype)
        # The prompts in chunk order: the schedule's, or the request's (one row per video), and
        # later the live changes (set_prompt). One prompt keeps one context for every chunk.
        self.prompt_starts = [s.start_chunk for s in plan.prompt_schedule] if plan.prompt_schedule else [0]
        self.prompt_text = self.text
        self.prompt_steps = [plan.interpolation_steps] * len(self.prompt_starts)  # each prompt's blend length
        self._live_prompt: tuple[torch.Tensor, int] | None = None
        self._prompt_lock = threading.Lock()
        with torch.no_grad():
            self.context = transformer.encode_text(self.text) if len(self.prompt_starts) == 1 else None
            self.negative_context = None if negative_text is None else transformer.encode_text(negative_text.to(self.device, self.dtype))
        self.image_latents = image_latents
        self.prefix_latents = prefix_latents
        self.stages = scheduler.stages if pipeline.is_pyramid else 1
        self.layout = stage_layout(scheduler) if self.stages > 1 else None
        self.positions = FramePositions.helios(plan.history_sizes, plan.chunk_frames, plan.keep_first_frame)

        b = plan.batch_size
        self.latent_hw = (plan.height // LATENT_STRIDE, plan.width // LATENT_STRIDE)
        sizes = list(plan.history_sizes)
        if not plan.keep_first_frame:
            sizes[-1] += 1  # without the first-frame prefix the short view takes two recent frames
        self.history_split = sizes
        self.window = sum(sizes)
        buffer = torch.zeros(b, transformer.config.in_channels, self.window, *self.latent_hw, device=self.device)
        if history is not None:
            history = history.to(self.device, torch.float32).expand(b, -1, -1, -1, -1)
            keep = max(self.window - history.shape[2], 0)
            buffer = torch.cat([buffer[:, :, :keep], history[:, :, -self.window :]], dim=2)
        self.history_buffer = buffer

        self._rope: dict[tuple[int, int], object] = {}  # RoPE per latent size: frame indices are fixed
        self.chunk = -1
        self.steps_done = 0
        self.total_steps = plan.total_steps(scheduler.kind)
        self._latents: torch.Tensor | None = None
        self._denoised = False
        self._cancelled = False
        self._closed = False
        self.deadline = None if plan.timeout_s is None else time.monotonic() + plan.timeout_s

    # -- progress ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.chunk == self.plan.num_chunks - 1 and self._latents is None

    @property
    def in_chunk(self) -> bool:
        """A chunk has begun and not yet ended."""
        return self._latents is not None

    @property
    def chunk_denoised(self) -> bool:
        return self._denoised

    def cancel(self) -> None:
        """Stop at the next step; safe to call from another thread (a server's cancel handler, say)."""
        if self.parallel is not None:
            raise RuntimeError("cancel: not available with parallel groups: the ranks would stop at different steps")
        self._cancelled = True

    def set_prompt(self, text: torch.Tensor, transition_chunks: int | None = None) -> None:
        """A live prompt change: `text` (1, S, D) takes over at the next chunk to begin, blending in
        from the current prompt over `transition_chunks` chunks (default: the request's
        interpolation_steps) as a scheduled prompt does; 0 or 1 switch at once.
        Safe to call from another thread; a second call before that chunk replaces the first."""
        if self.plan.batch_size != 1:
            raise RequestError("prompt", f"a live prompt change needs a request of one video, this one makes {self.plan.batch_size}")
        if text.shape[0] != 1 or text.shape[1:] != self.text.shape[1:]:
            raise ValueError(f"set_prompt: text must be (1, {', '.join(map(str, self.text.shape[1:]))}), got {tuple(text.shape)}")
        steps = self.plan.interpolation_steps if transition_chunks is None else transition_chunks
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise RequestError("transition_chunks", f"must be an integer >= 0, got {transition_chunks!r}")
        with self._prompt_lock:
            self._live_prompt = (text.to(self.device, self.dtype), steps)

    def _take_live_prompt(self, chunk: int) -> None:
        """Enter a pending live prompt into the prompt list as starting at `chunk`."""
        with self._prompt_lock:
            live, self._live_prompt = self._live_prompt, None
        if live is None:
            return
        text, steps = live
        keep = [i for i, s in enumerate(self.prompt_starts) if s < chunk]  # a prompt starting here too is replaced
        later = [i for i, s in enumerate(self.prompt_starts) if s > chunk]
        self.prompt_starts = [self.prompt_starts[i] for i in keep] + [chunk] + [self.prompt_starts[i] for i in later]
        self.prompt_text = torch.cat([self.prompt_text[keep], text, self.prompt_text[later]])
        self.prompt_steps = [self.prompt_steps[i] for i in keep] + [steps] + [self.prompt_steps[i] for i in later]
        self.context = None  # each chunk encodes its own prompt from now on; frees the graph text slot

    def close(self) -> None:
        """Drop what the request holds on the device for its steps: text contexts (freeing their
        CUDA-graph text slots), history views, RoPE tables. The generation cannot step afterwards."""
        self._closed = True
        self.context = self.negative_context = self._context = None
        self._history = self._stepper = None
        self._rope.clear()

    def _check_running(self) -> None:
        if self._closed:
            raise RuntimeError("step: the generation is closed")
        if self._cancelled:
            raise GenerationCancelled(f"cancelled after {self.steps_done} of {self.total_steps} steps")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise GenerationTimeout(
                f"timeout_s: still running after {self.plan.timeout_s:g} s ({self.steps_done} of {self.total_steps} steps done)"
            )

    # -- chunk ------------------------------------------------------------------------------------

    @torch.no_grad()
    def begin_chunk(self) -> None:
        if self._closed:
            raise RuntimeError("begin_chunk: the generation is closed")
        if self._latents is not None or self.done:
            raise RuntimeError("begin_chunk: the previous chunk is not finished, or the request is done")
        self.chunk += 1
        k, plan = self.chunk, self.plan
        b, c = plan.batch_size, self.transformer.config.in_channels

        long, mid, one = self.history_buffer[:, :, -self.window :].split(self.history_split, dim=2)
        if plan.keep_first_frame:
            prefix = self.image_latents if self.image_latents is not None else torch.zeros_like(one[:, :, :1])
            short = torch.cat([prefix.expand(b, -1, -1, -1, -1).to(one.dtype), one], dim=2)
        else:
            short = one
        self._history = History(short.to(self.dtype), mid.to(self.dtype), long.to(self.dtype))
        self._take_live_prompt(k)
        if self.context is None:  # prompts change over the chunks: each chunk encodes its own
            self.chunk_text = interpolated_prompt(self.prompt_text, self.prompt_starts, k, self.prompt_steps)
            self._context = None  # the last chunk's context is freed first: its graph slot is reused
            self._context = self.transformer.encode_text(self.chunk_text.expand(b, -1, -1))
        else:
            self.chunk_text = self.text
            self._context = self.context

        latents = randn((b, c, plan.chunk_frames, *self.latent_hw), self.generator, self.device)
        h, w = self.latent_hw
        for _ in range(self.stages - 1):
            h, w = h // 2, w // 2
            latents = resize_frames(latents, (h, w), "bilinear") * 2
        self._latents = latents
        self._denoised = False
        self._begin_stage(0)

    def _begin_stage(self, stage: int) -> None:
        plan, cfg = self.plan, self.scheduler
        latents = self._latents
        mu = calculate_shift(image_seq_len(*latents.shape[2:], self.transformer.config.patch_size), cfg)
        amplify = plan.is_amplify_first_chunk and self.chunk == 0
        if self.stages > 1:
            schedule = stage_schedule(cfg, self.layout, stage, plan.steps[stage], mu, amplify)
        else:
            schedule = single_stage_schedule(cfg, plan.steps[stage], mu, amplify)
        if stage > 0:
            h, w = latents.shape[-2] * 2, latents.shape[-1] * 2
            latents = resize_frames(latents, (h, w), "nearest")
            a, b = renoise_coefficients(self.layout.ori_start_sigmas[stage], cfg.gamma)
            noise = block_noise(latents.shape, cfg.gamma, self.transformer.config.patch_size[1:], self.generator, self.device)
            latents = a * latents + b * noise.to(self.dtype)
        self._latents = latents
        self.stage = stage
        self.step_in_stage = 0
        self._schedule = schedule
        self._stepper = make_stepper(cfg, schedule, latents)

    def _rope_for(self, hw: tuple[int, int]):
        if hw not in self._rope:
            self._rope[hw] = self.transformer.rope_for(self.positions, hw, self.latent_hw, self.device)
        return self._rope[hw]

    def _predict(self) -> torch.Tensor:
        t = self._schedule.timesteps[self.step_in_stage]
        b = self._latents.shape[0]
        timestep = t.expand(b).to(self.device, non_blocking=True)  # pageable: staged at once, no GPU drain
        if self.pipeline.is_pyramid:
            timestep = timestep.to(torch.int64)
        x = self._latents.to(self.dtype)
        rope = self._rope_for(tuple(x.shape[-2:]))
        if self.cfg_parallel:
            context = self._context if self.parallel.cfg_rank == 0 else self.negative_context
            cond, uncond = cfg_branches(self.transformer(x, timestep, context, self._history, rope), self.parallel)
        else:
            cond = self.transformer(x, timestep, self._context, self._history, rope)
            if not self.plan.do_cfg:
                return cond
            uncond = self.transformer(x, timestep, self.negative_context, self._history, rope)
        zero_star = self.pipeline.is_pyramid and self.pipeline.is_cfg_zero_star
        if zero_star and self.plan.use_zero_init and self.stage == 0 and self.step_in_stage <= self.plan.zero_steps:
            return cond * 0.0
        return guide(cond, uncond, self.plan.guidance_scale, zero_star)

    @torch.no_grad()
    def step(self) -> None:
        """One denoising step of the current chunk; enters the next pyramid stage when one ends."""
        self._check_running()
        if self._latents is None or self._denoised:
            raise RuntimeError("step: no chunk is being denoised (call begin_chunk)")
        flow = self._predict()
        self._latents = self._stepper.step(flow, self._latents)
        self.step_in_stage += 1
        self.steps_done += 1
        if self.step_in_stage == len(self._schedule.timesteps):
            if self.stage + 1 < self.stages:
                self._begin_stage(self.stage + 1)
            else:
                self._denoised = True

    def end_chunk(self) -> Chunk:
        if not self._denoised:
            raise RuntimeError("end_chunk: the chunk is not fully denoised")
        latents, self._latents = self._latents, None
        plan, k = self.plan, self.chunk
        if plan.keep_first_frame and ((k == 0 and self.image_latents is None) or (plan.is_skip_first_chunk and k == 1)):
            self.image_latents = latents[:, :, 0:1]
        self.history_buffer = torch.cat([self.history_buffer, latents.float()], dim=2)[:, :, -self.window :]
        return Chunk(k, latents)

    def frames_to_keep(self, chunk: int) -> int:
        """Decoded frames of `chunk` that belong to the video (the last chunk is trimmed to 4k+1)."""
        per = self.plan.video_frames_per_chunk
        return min(per, self.plan.output_frames - chunk * per)
