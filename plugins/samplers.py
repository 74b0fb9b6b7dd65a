"""Built-in samplers, one step at a time in sigma space (x = x0 + sigma * eps).

`euler` is DDIM with eta 0; `ddim` adds eta's fresh noise (Euler ancestral in k-diffusion's terms); `heun` is
k-diffusion's second-order Heun; `dpmpp_2m` is DPM-Solver++(2M), multistep, with its history kept per op;
`lcm` is the Latent Consistency Model step. Each returns a prediction that agrees with its new latent (see
evs_framework.sampler).
"""

from __future__ import annotations

import math

from evs_framework.denoiser import Prediction
from evs_framework.hookspecs import hookimpl
from evs_framework.sampler import Sampler
from evs_framework.transfer import fresh_noise

# LCMScheduler's defaults (diffusers): the boundary-condition scalings' timestep_scaling and sigma_data
LCM_TIMESTEP_SCALING = 10.0
LCM_SIGMA_DATA = 0.5


def landed(x_next, x0, sigma_next: float, eps) -> tuple:
    """`x_next` with the prediction that agrees with it: the clean estimate `x0` and the noise x_next holds over it;
    at sigma 0, where none is left, the model's `eps`."""
    return x_next, Prediction(x0, (x_next - x0) / sigma_next if sigma_next > 0 else eps)


def euler(denoise, x, ctx):
    """x0 + sigma_next * eps. For noise-predicting models this is both DDIM (eta 0) and Euler's method."""
    prediction = denoise(x, ctx.sigma)
    return prediction.x0 + ctx.sigma_next * prediction.eps, prediction


def ddim(denoise, x, ctx):
    """DDIM with `eta`: of the noise at sigma_next, the part eta * sigma_next * sqrt(1 - sigma_next^2 / sigma^2)
    is fresh (DDIMScheduler's variance, written in sigma space), the rest the predicted noise. eta 0 is `euler`,
    eta 1 is ancestral sampling."""
    prediction = denoise(x, ctx.sigma)
    sigma, sigma_next, eta = ctx.sigma, ctx.sigma_next, float(ctx.params["eta"])
    fresh = eta * sigma_next * math.sqrt(max(0.0, 1 - sigma_next**2 / sigma**2))
    x_next = prediction.x0 + math.sqrt(sigma_next**2 - fresh**2) * prediction.eps
    if fresh > 0:
        x_next = x_next + fresh * fresh_noise(x, ctx.generator)
    return landed(x_next, prediction.x0, sigma_next, prediction.eps)


def heun(denoise, x, ctx):
    """Euler, then the average of the slopes at both ends (Karras et al. 2022, Algorithm 1 without churn); the
    last step to sigma 0 is Euler's alone."""
    first = denoise(x, ctx.sigma)
    x_euler = first.x0 + ctx.sigma_next * first.eps
    if ctx.sigma_next == 0:
        return x_euler, first
    second = denoise(x_euler, ctx.sigma_next)
    x_next = x + (ctx.sigma_next - ctx.sigma) * (first.eps + second.eps) / 2
    return x_next, Prediction(x_next - ctx.sigma_next * second.eps, second.eps)


def heun_evaluations(sigma, sigma_next, params) -> int:
    return 1 if sigma_next == 0 else 2


def dpmpp_2m(denoise, x, ctx):
    """DPM-Solver++(2M) (Lu et al. 2022, as k-diffusion's sample_dpmpp_2m): a first-order step at the op's start
    and into sigma 0, else a second-order step that extrapolates from the previous step's clean estimate."""
    prediction = denoise(x, ctx.sigma)
    sigma, sigma_next = ctx.sigma, ctx.sigma_next
    previous = ctx.state.get("dpmpp_2m")
    if sigma_next == 0:
        x_next = prediction.x0
    else:
        h = math.log(sigma) - math.log(sigma_next)
        x0 = prediction.x0
        if previous is not None:
            r = (math.log(previous["sigma"]) - math.log(sigma)) / h
            x0 = (1 + 1 / (2 * r)) * prediction.x0 - (1 / (2 * r)) * previous["x0"]
        x_next = (sigma_next / sigma) * x - math.expm1(-h) * x0
    ctx.state["dpmpp_2m"] = {"x0": prediction.x0, "sigma": sigma}
    return landed(x_next, prediction.x0, sigma_next, prediction.eps)


def lcm(denoise, x, ctx):
    """Latent Consistency Model step (diffusers' LCMScheduler.step): the boundary-conditioned clean estimate
    plus fresh noise at sigma_next (none when sigma_next is 0).

    Returns x0 = the consistency-corrected estimate, and as eps the fresh noise it added (into sigma 0, the noise
    (x - x0) / sigma the step removed).
    """
    sigma, sigma_next = ctx.sigma, ctx.sigma_next
    prediction = denoise(x, sigma)
    scaled_t = denoise.timestep(sigma) * LCM_TIMESTEP_SCALING
    c_skip = LCM_SIGMA_DATA**2 / (scaled_t**2 + LCM_SIGMA_DATA**2)
    c_out = scaled_t / math.sqrt(scaled_t**2 + LCM_SIGMA_DATA**2)
    # LCMScheduler mixes in the variance-preserving sample x / sqrt(1 + sigma^2), not our x
    denoised = c_out * prediction.x0 + c_skip * (x / math.sqrt(1.0 + sigma**2))
    eps = (x - denoised) / sigma if sigma > 0 else prediction.eps
    x_next = denoised if sigma_next == 0 else denoised + sigma_next * fresh_noise(x, ctx.generator)
    return landed(x_next, denoised, sigma_next, eps)


EULER = Sampler("euler", euler, description=euler.__doc__)
DDIM = Sampler("ddim", ddim, parameters={"eta": 0.0}, description=ddim.__doc__.split("\n")[0])
HEUN = Sampler("heun", heun, evaluations=heun_evaluations, description=heun.__doc__.split("\n")[0])
DPMPP_2M = Sampler("dpmpp_2m", dpmpp_2m, description=dpmpp_2m.__doc__.split("\n")[0])
LCM = Sampler("lcm", lcm, description=lcm.__doc__.split("\n")[0])


@hookimpl
def register_samplers(register):
    for sampler in (EULER, DDIM, HEUN, DPMPP_2M, LCM):
        register(sampler.name, sampler)
