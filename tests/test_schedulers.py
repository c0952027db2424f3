"""Schedule math and steppers equal diffusers' HeliosScheduler / HeliosDMDScheduler."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import HeliosDMDScheduler, HeliosScheduler

from helios_backends.config import SchedulerConfig
from helios_backends.schedule import calculate_shift, single_stage_schedule, stage_layout, stage_schedule
from helios_backends.schedulers import make_stepper

CONFIGS = {
    "unipc-3-exponential": (HeliosScheduler, dict(stages=3, use_dynamic_shifting=True, time_shift_type="exponential")),
    "unipc-3-linear-bh1": (HeliosScheduler, dict(stages=3, use_dynamic_shifting=True, time_shift_type="linear", solver_type="bh1")),
    "euler-3-exponential": (HeliosScheduler, dict(stages=3, use_dynamic_shifting=True, scheduler_type="euler")),
    "unipc-3-static": (HeliosScheduler, dict(stages=3, use_dynamic_shifting=False)),
    "dmd-3-linear": (HeliosDMDScheduler, dict(stages=3, use_dynamic_shifting=True, time_shift_type="linear")),
    "unipc-1-exponential": (HeliosScheduler, dict(stages=1, stage_range=[0, 1], use_dynamic_shifting=True)),
    "euler-1-exponential": (HeliosScheduler, dict(stages=1, stage_range=[0, 1], use_dynamic_shifting=True, scheduler_type="euler")),
}


def ours_config(ref, tmp_path) -> SchedulerConfig:
    ref.save_config(tmp_path)
    return SchedulerConfig.from_json(tmp_path / "scheduler_config.json")


def reference_schedule(ref, stage, steps, mu, amplify):
    if ref.config.stages == 1:
        import numpy as np

        ref.set_timesteps(steps, sigmas=np.linspace(0.999, 0.0, steps + 1)[:-1], mu=mu)
    else:
        ref.set_timesteps(steps, stage, mu=mu, is_amplify_first_chunk=amplify)
    return ref.timesteps.clone(), ref.sigmas.clone()


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("steps", [1, 3, 20])
def test_timesteps_and_sigmas_equal_diffusers(name, steps, tmp_path):
    cls, kwargs = CONFIGS[name]
    ref = cls(**kwargs)
    cfg = ours_config(ref, tmp_path)
    layout = stage_layout(cfg) if cfg.stages > 1 else None
    for stage in range(cfg.stages):
        for amplify in (False, True):
            mu = calculate_shift(540 * 4 ** stage, cfg)
            t_ref, s_ref = reference_schedule(ref, stage, steps, mu, amplify)
            if cfg.stages == 1:
                ours = single_stage_schedule(cfg, steps, mu)
            else:
                ours = stage_schedule(cfg, layout, stage, steps, mu, amplify)
            torch.testing.assert_close(ours.timesteps.double(), t_ref.double(), rtol=0, atol=1e-9)
            torch.testing.assert_close(ours.sigmas.double(), s_ref.double(), rtol=0, atol=1e-12)
    if layout is not None:
        assert layout.ori_start_sigmas == tuple(ref.ori_start_sigmas[s] for s in range(cfg.stages))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_stepping_equals_diffusers(name, tmp_path):
    cls, kwargs = CONFIGS[name]
    ref = cls(**kwargs)
    cfg = ours_config(ref, tmp_path)
    layout = stage_layout(cfg) if cfg.stages > 1 else None
    g = torch.Generator().manual_seed(0)
    stage = cfg.stages - 1
    mu = 0.9
    t_ref, _ = reference_schedule(ref, stage, 5, mu, False)
    schedule = single_stage_schedule(cfg, 5, mu) if cfg.stages == 1 else stage_schedule(cfg, layout, stage, 5, mu)
    start = torch.randn(2, 16, 3, 4, 4, generator=g)
    stepper = make_stepper(cfg, schedule, start)
    x_ref = x_ours = start
    for i, t in enumerate(t_ref):
        flow = torch.randn(start.shape, generator=g)
        if cfg.kind == "dmd":
            x_ref = ref.step(flow, t, x_ref, return_dict=False, cur_sampling_step=i, dmd_noisy_tensor=start,
                             dmd_sigmas=ref.sigmas, dmd_timesteps=ref.timesteps, all_timesteps=t_ref)[0]
        else:
            x_ref = ref.step(flow, t, x_ref, return_dict=False)[0]
        x_ours = stepper.step(flow, x_ours)
        torch.testing.assert_close(x_ours, x_ref, rtol=1e-6, atol=1e-6)


def test_scheduler_config_reads_the_dmd_class_and_scheduler_type(tmp_path):
    HeliosDMDScheduler().save_config(tmp_path)
    assert SchedulerConfig.from_json(tmp_path / "scheduler_config.json").kind == "dmd"
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    data.update(_class_name="HeliosScheduler", scheduler_type="dmd")
    (tmp_path / "scheduler_config.json").write_text(json.dumps(data))
    assert SchedulerConfig.from_json(tmp_path / "scheduler_config.json").kind == "dmd"


def test_mu_follows_the_token_count_at_384x640():
    cfg = SchedulerConfig()
    assert calculate_shift(8640, cfg) == pytest.approx(1.91925, abs=1e-4)
    assert calculate_shift(540, cfg) == pytest.approx(0.54814, abs=1e-4)


@pytest.mark.parametrize("stages", [1, 3])
def test_dmd_amplified_first_chunk_doubles_the_steps_of_every_stage_kind(stages):
    cfg = SchedulerConfig(kind="dmd", stages=stages, stage_range=(0.0, 1.0) if stages == 1 else (0.0, 1 / 3, 2 / 3, 1.0))
    for amplify, expected in ((False, 3), (True, 6)):
        if stages == 1:
            schedule = single_stage_schedule(cfg, 3, 0.8, amplify)
        else:
            schedule = stage_schedule(cfg, stage_layout(cfg), 0, 3, 0.8, amplify)
        assert len(schedule.timesteps) == expected and len(schedule.sigmas) == expected + 1
