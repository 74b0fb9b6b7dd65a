"""Sigma tables and one sampler step against diffusers' own schedulers."""

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from evs_framework.denoiser import Prediction
from evs_framework.schedules import ModelSchedule, BetaSchedule, sampling_timesteps
from evs_framework.sampler import single_step
from evs_plugins.samplers import EULER

BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_sigma_table_matches_diffusers(beta_schedule):
    ddim = DDIMScheduler(beta_schedule=beta_schedule, **BETAS)
    ours = BetaSchedule(beta_schedule)
    expected = ((1 - ddim.alphas_cumprod) / ddim.alphas_cumprod).sqrt().double()
    # diffusers builds its table in float32; ours is float64, so agreement is to float32 precision
    torch.testing.assert_close(ours.sigmas, expected, rtol=1e-4, atol=0)
    euler_scheduler = EulerDiscreteScheduler(beta_schedule=beta_schedule, **BETAS)
    torch.testing.assert_close(ours.sigmas.flip(0).float(), euler_scheduler.sigmas[:-1].float(), rtol=1e-4, atol=0)


def test_the_two_schedules_differ_at_the_same_timestep():
    assert BetaSchedule("scaled_linear").sigma_at(500) == pytest.approx(1.62, abs=0.01)
    assert BetaSchedule("linear").sigma_at(500) == pytest.approx(2.29, abs=0.01)


@pytest.mark.parametrize("spacing,steps,offset", [("leading", 50, 1), ("trailing", 8, 0), ("linspace", 25, 0), ("leading", 8, 0)])
def test_sampling_timesteps_match_diffusers(spacing, steps, offset):
    ddim = DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing=spacing, steps_offset=offset, **BETAS)
    ddim.set_timesteps(steps)
    assert sampling_timesteps(steps, 1000, spacing, offset) == ddim.timesteps.tolist()


def test_lightning_levels_are_the_trained_ones():
    assert ModelSchedule(BetaSchedule("linear"), 8, "trailing").timesteps == (999, 874, 749, 624, 499, 374, 249, 124)


def test_timestep_at_inverts_sigma_at():
    train = BetaSchedule("linear")
    for t in (0, 1, 124, 381, 999):
        assert train.timestep_at(train.sigma_at(t)) == pytest.approx(t, abs=1e-6)
    between = train.timestep_at((train.sigma_at(100) * train.sigma_at(101)) ** 0.5)
    assert 100 < between < 101


def test_start_level_follows_img2img_strength():
    schedule = ModelSchedule(BetaSchedule("scaled_linear"), 50, "leading", 1)
    assert schedule.start_level(0.4) == 30  # 20 of 50 steps run
    assert schedule.start_level(1.0) == 0
    assert ModelSchedule(BetaSchedule("linear"), 10, "trailing").start_level(0.7) == 3  # 0.7 * 10 is 6.999... in floats


def _fake_eps(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_one_sigma_step_equals_ddim_step():
    ddim = DDIMScheduler(beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False, clip_sample=False, **BETAS)
    ddim.set_timesteps(50)
    train = BetaSchedule("scaled_linear")
    t, t_prev = int(ddim.timesteps[30]), int(ddim.timesteps[31])
    x_vp, eps = _fake_eps((2, 4, 8, 8), 0), _fake_eps((2, 4, 8, 8), 1)
    expected = ddim.step(eps, t, x_vp).prev_sample

    sigma, sigma_prev = train.sigma_at(t), train.sigma_at(t_prev)
    x = x_vp * (1 + sigma**2) ** 0.5  # variance-preserving -> sigma form
    x_next, _ = single_step(EULER, lambda x, s: Prediction(x - s * eps, eps), x, sigma, sigma_prev)
    torch.testing.assert_close(x_next / (1 + sigma_prev**2) ** 0.5, expected, atol=1e-5, rtol=0)


def test_one_sigma_step_equals_euler_discrete_step():
    sched = EulerDiscreteScheduler(beta_schedule="linear", timestep_spacing="trailing", **BETAS)
    sched.set_timesteps(8)
    x, eps = _fake_eps((1, 4, 8, 8), 2).float(), _fake_eps((1, 4, 8, 8), 3).float()
    t = sched.timesteps[5]
    expected = sched.step(eps, t, x).prev_sample
    schedule = ModelSchedule(BetaSchedule("linear"), 8, "trailing")
    sigma, sigma_next = schedule.levels[5], schedule.levels[6]
    x_next, _ = single_step(EULER, lambda x, s: Prediction(x - s * eps, eps), x, sigma, sigma_next)
    torch.testing.assert_close(x_next, expected, atol=1e-5, rtol=0)
