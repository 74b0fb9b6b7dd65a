"""What a model's output means (its prediction type), turned into the clean estimate and the noise in sigma space.

Every conversion gets the model's raw `output`, the latent `x = x0 + sigma * eps` it was asked about, `sigma`, and
`scale`, the factor a(sigma) its input was multiplied by (1 / the schedule's `input_divisor`), so that the model saw
`a x = a x0 + s eps` with `s = a sigma`. It returns `(x0, eps)`. Kinds are registered by plugins (hook
`register_prediction_types`); the four below are built in.
"""

from __future__ import annotations

import torch


def from_epsilon(output: torch.Tensor, x: torch.Tensor, sigma: float, scale: float):
    return x - sigma * output, output


def from_sample(output: torch.Tensor, x: torch.Tensor, sigma: float, scale: float):
    return output, (x - output) / sigma


def from_v(output: torch.Tensor, x: torch.Tensor, sigma: float, scale: float):
    """v = a eps - s x0 (Salimans & Ho), for variance-preserving schedules (a^2 + s^2 = 1)."""
    s = scale * sigma
    x_in = scale * x
    return scale * x_in - s * output, s * x_in + scale * output


def from_flow(output: torch.Tensor, x: torch.Tensor, sigma: float, scale: float):
    """velocity = eps - x0 of a straight path x_t = (1 - t) x0 + t eps (a = 1 - t, s = t)."""
    t = scale * sigma
    x_in = scale * x
    return x_in - t * output, x_in + (1.0 - t) * output


PREDICTION_TYPES = {"epsilon": from_epsilon, "sample": from_sample, "v_prediction": from_v, "flow": from_flow}
