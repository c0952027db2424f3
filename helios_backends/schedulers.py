"""Samplers that advance one stage's latents step by step: UniPC (bh1/bh2), Euler and DMD.

Each stepper is built fresh for every stage of every chunk (its history starts empty there, as
the reference schedulers reset on set_timesteps) and is driven with `step(flow, sample)`.
"""

from __future__ import annotations

import torch

from .config import SchedulerConfig
from .schedule import Schedule


class EulerStepper:
    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.index = 0

    def step(self, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        s, s_next = self.schedule.sigmas[self.index], self.schedule.sigmas[self.index + 1]
        self.index += 1
        return (sample.to(torch.float32) + (s_next - s) * flow).to(flow.dtype)


def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return 1 - sigma, torch.clamp(sigma, min=1e-8)


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    alpha, sigma = _alpha_sigma(sigma)
    return torch.log(alpha) - torch.log(sigma)


class UniPCStepper:
    """UniPC multistep (predictor UniP + corrector UniC) on flow-matching x0 predictions."""

    def __init__(self, schedule: Schedule, config: SchedulerConfig):
        self.schedule = schedule
        self.order = config.solver_order
        self.bh1 = config.solver_type == "bh1"
        self.lower_order_final = config.lower_order_final
        self.disable_corrector = set(config.disable_corrector)
        self.x0_history: list[torch.Tensor | None] = [None] * self.order
        self.last_sample: torch.Tensor | None = None
        self.lower_order_nums = 0
        self.this_order = 0
        self.index = 0

    def _coefficients(self, h: torch.Tensor, rks: list, order: int):
        """R and b of the UniPC linear system, and (h*phi_1, B(h)), on the CPU like the schedule:
        the step's only device transfer is the solved rhos, non-blocking (no GPU drain)."""
        rks = torch.tensor([*rks, 1.0])
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.bh1 else torch.expm1(hh)
        R, b, factorial = [], [], 1
        for i in range(1, order + 1):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return torch.stack(R), torch.tensor(b), h_phi_1, b_h

    def _differences(self, i_s0: int, lambda_s0, h, order: int):
        m0 = self.x0_history[-1]
        rks, d1s = [], []
        for k in range(1, order):
            rk = (_lambda(self.schedule.sigmas[i_s0 - k]) - lambda_s0) / h
            rks.append(rk)
            d1s.append((self.x0_history[-(k + 1)] - m0) / rk)
        return rks, (torch.stack(d1s, dim=1) if d1s else None)

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        i = self.index
        sig_t, sig_s0 = self.schedule.sigmas[i + 1], self.schedule.sigmas[i]
        alpha_t, sigma_t = _alpha_sigma(sig_t)
        _, sigma_s0 = _alpha_sigma(sig_s0)
        lambda_s0 = _lambda(sig_s0)
        h = _lambda(sig_t) - lambda_s0
        rks, d1s = self._differences(i, lambda_s0, h, order)
        R, b, h_phi_1, b_h = self._coefficients(h, rks, order)
        m0 = self.x0_history[-1]
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if d1s is not None:
            rhos = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
            rhos = rhos.to(x.device, x.dtype, non_blocking=True)
            x_t = x_t - alpha_t * b_h * torch.einsum("k,bkc...->bc...", rhos, d1s)
        return x_t.to(x.dtype)

    def _correct(self, x0: torch.Tensor, last: torch.Tensor, x: torch.Tensor, order: int) -> torch.Tensor:
        i = self.index
        sig_t, sig_s0 = self.schedule.sigmas[i], self.schedule.sigmas[i - 1]
        alpha_t, sigma_t = _alpha_sigma(sig_t)
        _, sigma_s0 = _alpha_sigma(sig_s0)
        lambda_s0 = _lambda(sig_s0)
        h = _lambda(sig_t) - lambda_s0
        # The corrector's extra points sit one step further back than the predictor's.
        rks, d1s = self._differences(i - 1, lambda_s0, h, order)
        R, b, h_phi_1, b_h = self._coefficients(h, rks, order)
        rhos = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)
        rhos = rhos.to(x.device, last.dtype, non_blocking=True)
        m0 = self.x0_history[-1]
        out = sigma_t / sigma_s0 * last - alpha_t * h_phi_1 * m0
        corr = torch.einsum("k,bkc...->bc...", rhos[:-1], d1s) if d1s is not None else 0
        out = out - alpha_t * b_h * (corr + rhos[-1] * (x0 - m0))
        return out.to(last.dtype)

    def step(self, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self.index
        x0 = sample - self.schedule.sigmas[i] * flow
        if i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None:
            sample = self._correct(x0, self.last_sample, sample, self.this_order)
        self.x0_history = [*self.x0_history[1:], x0]
        n_steps = len(self.schedule.timesteps)
        order = min(self.order, n_steps - i) if self.lower_order_final else self.order
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        prev = self._predict(sample, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.order)
        self.index += 1
        return prev


class DMDStepper:
    """Distribution-matching distillation: predict x0, then re-noise it toward the stage's start latents."""

    def __init__(self, schedule: Schedule, start: torch.Tensor):
        self.schedule = schedule
        self.start = start
        self.index = 0
        # Device copies made once per stage (non-blocking: the CPU tensors are pageable, so the
        # copy is staged at once), so a step never waits for the GPU to drain.
        self.timesteps = schedule.timesteps.to(start.device, non_blocking=True)
        self.sigmas = schedule.sigmas.to(start.device, non_blocking=True)

    def _sigma_at(self, t, batch: int) -> torch.Tensor:
        t = torch.full((batch,), t, dtype=torch.long, device=self.timesteps.device)
        return torch.argmin((self.timesteps.double().unsqueeze(0) - t.unsqueeze(1)).abs(), dim=1)

    def step(self, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        b = flow.shape[0]
        i = self.index
        timesteps, sigmas = self.schedule.timesteps, self.sigmas
        idx = self._sigma_at(timesteps[i], b)
        x0 = (sample.double() - sigmas.double()[idx].reshape(-1, 1, 1, 1, 1) * flow.double()).to(flow.dtype)
        self.index += 1
        if i >= len(timesteps) - 1:
            return x0
        sigma = sigmas[self._sigma_at(timesteps[i + 1], b)].reshape(-1, 1, 1, 1, 1)
        return ((1 - sigma) * x0 + sigma * self.start).type_as(self.start)


def make_stepper(config: SchedulerConfig, schedule: Schedule, start: torch.Tensor):
    """The stepper for a stage; `start` is the stage's starting latents (DMD re-noises toward them)."""
    if config.kind == "dmd":
        return DMDStepper(schedule, start)
    if config.kind == "euler":
        return EulerStepper(schedule)
    return UniPCStepper(schedule, config)
