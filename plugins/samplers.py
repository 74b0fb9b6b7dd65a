"""Built-in samplers, one step at a time in sigma space."""

from __future__ import annotations

from evs_framework.hookspecs import hookimpl


def euler(denoise, x, sigma, sigma_next, generator):
    """x0 + sigma_next * eps. For noise-predicting models this is both DDIM (eta 0) and Euler's method."""
    prediction = denoise(x, sigma)
    return prediction.x0 + sigma_next * prediction.eps, prediction


@hookimpl
def register_samplers(register):
    register("euler", euler)
