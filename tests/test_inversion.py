"""DDIM inversion followed by denoising gives back the clean latent."""

import pytest
import torch

from evs_framework.denoiser import Denoiser
from evs_framework.schedules import ModelSchedule, BetaSchedule
from evs_framework.transfer import TransferContext
from evs_framework.io.vae import encode_frames
from evs_framework.testing.zoo import make_synthetic_clip
from evs_framework.sampler import single_step
from evs_plugins.samplers import EULER
from evs_plugins.schedules import betas
from evs_plugins.transfers import ddim_inversion, random_noise


class GaussianDataBackend:
    """The exact noise predictor for data drawn from N(0, std^2): smooth, so inversion error is discretisation only."""


    def __init__(self, train: BetaSchedule, std: float):
        self.train, self.std = train, std

    def predict(self, x, timestep, text):
        low = int(timestep)
        high = min(low + 1, self.train.train_steps - 1)
        sigma = float(torch.lerp(self.train.sigmas[low], self.train.sigmas[high], timestep - low))
        alpha = 1 / (1 + sigma**2)
        return x * (1 - alpha) ** 0.5 / (alpha * self.std**2 + 1 - alpha)


def round_trip(denoiser, schedule: ModelSchedule, clean, strength, transfer):
    first = schedule.start_level(strength)
    levels = tuple(reversed(schedule.levels[first:]))
    x = transfer(TransferContext(clean, None, 0.0, levels[-1], levels, denoiser, 1.0, torch.Generator().manual_seed(0)))
    for sigma, sigma_next in zip(schedule.levels[first:], schedule.levels[first + 1:]):
        x, _ = single_step(EULER, denoiser, x, sigma, sigma_next)
    return float((x - clean).norm() / clean.norm())


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_inversion_reconstructs_with_an_exact_denoiser(beta_schedule):
    train = BetaSchedule(beta_schedule)
    clean = 0.5 * torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    denoiser = Denoiser(GaussianDataBackend(train, std=0.5), train, torch.zeros(2, 1, 1), guidance=1.0)
    errors = [round_trip(denoiser, ModelSchedule(train, steps, "leading", 1), clean, 0.6, ddim_inversion) for steps in (25, 100)]
    # DDIM inversion is first order: stated tolerance 3% relative error at 100 steps (0.6 of a 100-step schedule),
    # and four times finer steps cut the error at least three times
    assert errors[1] < 3e-2, errors
    assert errors[0] > 3 * errors[1], errors
    assert round_trip(denoiser, ModelSchedule(train, 25, "leading", 1), clean, 0.6, random_noise) > 0.3


def test_inversion_beats_fresh_noise_with_a_real_unet(context, registry):
    """The tiny random UNet is not a smooth denoiser; inversion must still land far closer than SDEdit noise."""
    entry = registry.get("SD")
    backend = context.load(entry)
    clean = encode_frames(backend.vae, make_synthetic_clip(4, 64, 48), 4)
    schedule = entry.preset.sampling(betas(entry.preset), 50)
    denoiser = Denoiser(backend, schedule.train, backend.encode_prompts(["", "a red ball"]), guidance=1.0)
    inverted = round_trip(denoiser, schedule, clean, 0.4, ddim_inversion)
    noised = round_trip(denoiser, schedule, clean, 0.4, random_noise)
    assert inverted < noised / 4, (inverted, noised)
