"""A model seen as a denoiser in sigma space: D(x, sigma) -> (x0, eps).

The backend predicts noise on its own timestep scale; this wrapper converts sigma to that model's
(fractional) timestep through its own training schedule, scales the input to the variance-preserving form
the UNet expects, and applies classifier-free guidance. Switching models is calling another Denoiser.
"""

from __future__ import annotations

import math
from typing import Callable

import attrs
import torch

from evs_framework.sigmas import TrainSchedule


@attrs.frozen
class Prediction:
    x0: torch.Tensor
    eps: torch.Tensor


@attrs.define
class Denoiser:
    """`text` holds the negative and positive prompt embeddings, shape (2, tokens, dim); `prepare`, when given,
    runs before each evaluation (it brings offloaded weights onto the compute device)."""

    backend: object
    train: TrainSchedule
    text: torch.Tensor
    guidance: float
    prepare: Callable[[], None] | None = None
    calls: int = 0

    def timestep(self, sigma: float) -> float:
        t = self.train.timestep_at(sigma)
        return float(round(t)) if abs(t - round(t)) < 1e-6 else t

    def __call__(self, x: torch.Tensor, sigma: float, *, timestep_sigma: float | None = None,
                 guidance: float | None = None) -> Prediction:
        """Predict for latents x (frames, channels, h, w) at noise level sigma.

        `timestep_sigma` evaluates the model at another level's timestep while scaling the input for `sigma`
        (DDIM inversion does this); `guidance` overrides the model's guidance scale for this call.
        """
        if self.prepare is not None:
            self.prepare()
        guidance = self.guidance if guidance is None else guidance
        t = self.timestep(sigma if timestep_sigma is None else timestep_sigma)
        x_in = (x / math.sqrt(sigma**2 + 1.0))[None]
        if guidance == 1.0:
            eps = self.backend.predict_noise(x_in, t, self.text[1:2])[0]
            self.calls += 1
        else:
            eps_uncond, eps_cond = self.backend.predict_noise(torch.cat([x_in, x_in]), t, self.text).unbind(0)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            self.calls += 2
        return Prediction(x - sigma * eps, eps)
