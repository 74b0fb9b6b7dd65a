"""The `lcm` sampler (AnimateLCM) against diffusers' LCMScheduler."""

import pytest
import torch
from diffusers import LCMScheduler

from evs_framework.denoiser import Denoiser
from evs_framework.plugins import load_plugins
from evs_framework.schedules import ModelSchedule, BetaSchedule
from evs_framework.sampler import single_step
from evs_plugins.samplers import LCM

BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
TRAIN = BetaSchedule("linear")
ANIMATELCM = ModelSchedule(TRAIN, 8, "lcm", original_steps=100)


class FakeBackend:
    """A deterministic noise predictor that depends on both the input and the timestep."""


    def predict(self, x, timestep, text):
        return torch.tanh(x) * (0.5 + timestep / 2000) + 0.1 * torch.cos(3 * x)


def _denoiser():
    return Denoiser(FakeBackend(), TRAIN, torch.zeros(2, 1, 1), guidance=1.0)


def _scheduler(steps=8, **config):
    scheduler = LCMScheduler(beta_schedule="linear", original_inference_steps=100, **BETAS, **config)
    scheduler.set_timesteps(steps)
    return scheduler


def _latent(seed):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _compare_step(scheduler, sigma, sigma_next, t, x_vp, seed=7):
    """One lcm step from the VP latent x_vp at (sigma, timestep t), checked against scheduler.step."""
    model_output = FakeBackend().predict(x_vp[None], t, None)[0]
    expected = scheduler.step(model_output, t, x_vp, generator=torch.Generator().manual_seed(seed))

    x = x_vp * (1 + sigma**2) ** 0.5  # variance-preserving -> sigma form
    x_next, prediction = single_step(LCM, _denoiser(), x, sigma, sigma_next, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(x_next / (1 + sigma_next**2) ** 0.5, expected.prev_sample, atol=1e-5, rtol=0)
    torch.testing.assert_close(prediction.x0, expected.denoised, atol=1e-5, rtol=0)
    # the pair agrees with the latent the step returns: ddim_renoise to sigma_next gives it back
    torch.testing.assert_close(prediction.x0 + sigma_next * prediction.eps, x_next, atol=1e-4, rtol=1e-5)
    return expected


@pytest.mark.parametrize("index", [3, 7])  # a middle step (fresh noise added) and the last one (none)
def test_one_lcm_step_equals_lcm_scheduler_step(index):
    scheduler = _scheduler()
    t = int(scheduler.timesteps[index])
    assert t == ANIMATELCM.timesteps[index]
    sigma, sigma_next = ANIMATELCM.levels[index], ANIMATELCM.levels[index + 1]
    assert (sigma_next == 0) == (index == 7)
    expected = _compare_step(scheduler, sigma, sigma_next, t, _latent(index))
    if index == 7:
        torch.testing.assert_close(expected.prev_sample, expected.denoised, atol=0, rtol=0)
    else:
        assert (expected.prev_sample - expected.denoised).abs().max() > 0.1


@pytest.mark.parametrize("t", [1, 0])
def test_boundary_scalings_near_timestep_zero(t):
    # c_skip is negligible on AnimateLCM's own levels (t >= 9). At t = 1 it is 0.0025, so the constants show;
    # at t = 0 it is 1 (c_out 0), so the result is the variance-preserving sample x / sqrt(1 + sigma^2) itself
    scheduler = LCMScheduler(beta_schedule="linear", original_inference_steps=100, **BETAS)
    scheduler.set_timesteps(timesteps=[19, t])
    scheduler.set_begin_index(1)  # the last step: no noise
    sigma = TRAIN.sigma_at(t)
    assert _denoiser().timestep(sigma) == t
    x_vp = _latent(5 + t)
    expected = _compare_step(scheduler, sigma, 0.0, t, x_vp)
    # and the result is not the plain x0 estimate: the skip term contributes beyond the tolerance
    plain = x_vp - sigma / (1 + sigma**2) ** 0.5 * FakeBackend().predict(x_vp, t, None)
    assert (expected.denoised - plain).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [4, 8])
def test_lcm_spacing_matches_lcm_scheduler_with_100_original_steps(steps):
    assert list(ModelSchedule(TRAIN, steps, "lcm", original_steps=100).timesteps) == _scheduler(steps).timesteps.tolist()


def test_original_steps_100_differs_from_the_diffusers_default_50():
    default = LCMScheduler(beta_schedule="linear", **BETAS)
    default.set_timesteps(8)
    assert default.config.original_inference_steps == 50
    assert list(ANIMATELCM.timesteps) != default.timesteps.tolist()
    assert list(ModelSchedule(TRAIN, 8, "lcm").timesteps) == default.timesteps.tolist()


def test_last_step_is_deterministic():
    sigma = ANIMATELCM.levels[7]
    x = _latent(3) * (1 + sigma**2) ** 0.5
    results = [single_step(LCM, _denoiser(), x, sigma, 0.0, torch.Generator().manual_seed(seed))[0] for seed in (0, 1)]
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)
    # while a middle step does draw fresh noise from the generator
    noisy = [single_step(LCM, _denoiser(), x, sigma, ANIMATELCM.levels[6], torch.Generator().manual_seed(seed))[0] for seed in (0, 1)]
    assert not torch.equal(noisy[0], noisy[1])


def test_lcm_is_registered():
    assert load_plugins().catalogue.get("samplers", "lcm") is LCM
