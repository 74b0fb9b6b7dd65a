"""A model seen as a denoiser in sigma space: D(x, sigma) -> (x0, eps).

The backend evaluates on its own timestep scale; this wrapper converts sigma to that model's (fractional)
timestep through its own noise schedule, scales the input to the form the model was trained on, applies
classifier-free guidance, and reads the output through the model's prediction type. Switching models is calling
another Denoiser.
"""

from __future__ import annotations

from typing import Callable

import attrs
import torch

from evs_framework.context_windows import Context, blended
from evs_framework.predictions import from_epsilon
from evs_framework.schedules import NoiseSchedule


@attrs.frozen
class Prediction:
    x0: torch.Tensor
    eps: torch.Tensor


@attrs.define
class Denoiser:
    """`conditioning` is what the backend's `encode_prompts` made of the negative and the positive prompt (two rows:
    a tensor, or an object sliced by rows); `prediction` converts the model's output (evs_framework.predictions);
    `prepare`, when given, runs before each evaluation (it brings offloaded weights onto the compute device);
    `context`, when given, evaluates a clip longer than its frames window by window (evs_framework.context_windows),
    each window counting its own calls."""

    backend: object
    schedule: NoiseSchedule
    conditioning: object
    guidance: float
    prediction: Callable = from_epsilon
    prepare: Callable[[], None] | None = None
    context: Context | None = None
    calls: int = 0

    def timestep(self, sigma: float) -> float:
        t = self.schedule.timestep_at(sigma)
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
        divisor = self.schedule.input_divisor(sigma)
        if self.context is None:
            return Prediction(*self._predict(x, sigma, t, divisor, guidance))
        return Prediction(*blended(self.context, x, lambda window: self._predict(window, sigma, t, divisor, guidance)))

    def _predict(self, x: torch.Tensor, sigma: float, t: float, divisor: float, guidance: float):
        """(x0, eps) of one model evaluation on latents x, guided."""
        x_in = (x / divisor)[None]
        if guidance in (0.0, 1.0):  # one half of the guidance alone: the positive prompt at 1, the negative at 0
            row = int(guidance)
            output = self.backend.predict(x_in, t, self.conditioning[row:row + 1])[0]
            self.calls += 1
        else:
            uncond, cond = self.backend.predict(torch.cat([x_in, x_in]), t, self.conditioning).unbind(0)
            output = uncond + guidance * (cond - uncond)
            self.calls += 2
        return self.prediction(output, x, sigma, 1.0 / divisor)
