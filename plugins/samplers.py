"""Built-in samplers, one step at a time in sigma space."""

from __future__ import annotations

import math

from evs_framework.denoiser import Prediction
from evs_framework.hookspecs import hookimpl
from evs_framework.transfer import fresh_noise

# LCMScheduler's defaults (diffusers): the boundary-condition scalings' timestep_scaling and sigma_data
LCM_TIMESTEP_SCALING = 10.0
LCM_SIGMA_DATA = 0.5


def euler(denoise, x, sigma, sigma_next, generator):
    """x0 + sigma_next * eps. For noise-predicting models this is both DDIM (eta 0) and Euler's method."""
    prediction = denoise(x, sigma)
    return prediction.x0 + sigma_next * prediction.eps, prediction


def lcm(denoise, x, sigma, sigma_next, generator):
    """Latent Consistency Model step (diffusers' LCMScheduler.step): the boundary-conditioned clean estimate
    plus fresh noise at sigma_next (none when sigma_next is 0).

    Returns x0 = the consistency-corrected estimate and eps = (x - x0) / sigma, so that x = x0 + sigma * eps
    holds and a later ddim_renoise re-noises from the same estimate the trajectory carries.
    """
    prediction = denoise(x, sigma)
    scaled_t = denoise.timestep(sigma) * LCM_TIMESTEP_SCALING
    c_skip = LCM_SIGMA_DATA**2 / (scaled_t**2 + LCM_SIGMA_DATA**2)
    c_out = scaled_t / math.sqrt(scaled_t**2 + LCM_SIGMA_DATA**2)
    # LCMScheduler mixes in the variance-preserving sample x / sqrt(1 + sigma^2), not our x
    denoised = c_out * prediction.x0 + c_skip * (x / math.sqrt(1.0 + sigma**2))
    eps = (x - denoised) / sigma if sigma > 0 else prediction.eps
    x_next = denoised if sigma_next == 0 else denoised + sigma_next * fresh_noise(x, generator)
    return x_next, Prediction(denoised, eps)


@hookimpl
def register_samplers(register):
    register("euler", euler)
    register("lcm", lcm)
