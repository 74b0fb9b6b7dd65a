"""Noise schedules in sigma space.

A latent at noise level sigma is `x = x0 + sigma * eps` (the variance-exploding form of k-diffusion). Every
model keeps its own table: SD1.5 fine-tunes train on `scaled_linear` betas, AnimateDiff motion modules on
`linear` ones, so the same timestep means a different sigma. Models meet only through sigma.
"""

from __future__ import annotations

import math
from functools import cached_property

import attrs
import torch

BETA_SCHEDULES = ("linear", "scaled_linear")
SPACINGS = ("leading", "trailing", "linspace", "lcm")


@attrs.frozen
class TrainSchedule:
    """The discrete noise schedule a model was trained with."""

    beta_schedule: str = attrs.field(validator=attrs.validators.in_(BETA_SCHEDULES))
    beta_start: float = 0.00085
    beta_end: float = 0.012
    train_steps: int = 1000

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, self.train_steps, dtype=torch.float64)
        else:
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, self.train_steps, dtype=torch.float64) ** 2
        return torch.cumprod(1.0 - betas, dim=0)

    @cached_property
    def sigmas(self) -> torch.Tensor:
        """sigma for each training timestep t = 0 .. train_steps-1 (float64, increasing)."""
        ac = self.alphas_cumprod
        return ((1 - ac) / ac).sqrt()

    def sigma_at(self, timestep: int) -> float:
        return float(self.sigmas[timestep])

    def timestep_at(self, sigma: float) -> float:
        """The (fractional) timestep whose sigma this is, interpolating log-sigma between table entries."""
        log_sigmas = self.sigmas.log()
        log_sigma = math.log(max(sigma, float(self.sigmas[0])))
        high = int(torch.searchsorted(log_sigmas, torch.tensor(log_sigma, dtype=torch.float64)).clamp(1, self.train_steps - 1))
        low = high - 1
        weight = (log_sigma - float(log_sigmas[low])) / float(log_sigmas[high] - log_sigmas[low])
        return low + min(max(weight, 0.0), 1.0)


def sampling_timesteps(steps: int, train_steps: int = 1000, spacing: str = "leading", steps_offset: int = 0,
                       original_steps: int = 50) -> list[int]:
    """The descending timesteps of a `steps`-step run, spaced as diffusers' schedulers space them.

    `original_steps` is used by "lcm" spacing only (LCMScheduler's `original_inference_steps`).
    """
    if steps < 1 or steps > train_steps:
        raise ValueError(f"steps must be in 1..{train_steps}, got {steps}")
    if spacing == "leading":
        ratio = train_steps // steps
        ts = [i * ratio + steps_offset for i in range(steps)]
    elif spacing == "trailing":
        ratio = train_steps / steps
        ts = [round(train_steps - i * ratio) - 1 for i in range(steps)][::-1]
    elif spacing == "linspace":
        ts = [round(v) for v in torch.linspace(0, train_steps - 1, steps, dtype=torch.float64).tolist()]
    elif spacing == "lcm":
        ts = lcm_timesteps(steps, train_steps, original_steps)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    if max(ts) >= train_steps or min(ts) < 0:
        raise ValueError(f"{steps} steps with {spacing} spacing (offset {steps_offset}) reach timestep {max(ts)}, beyond "
                         f"the model's {train_steps} training timesteps; use fewer steps")
    return sorted(ts, reverse=True)


def lcm_timesteps(steps: int, train_steps: int = 1000, original_steps: int = 50) -> list[int]:
    """LCMScheduler.set_timesteps at strength 1: `steps` evenly spaced picks from the distillation schedule
    k-1, 2k-1, ..., original_steps*k - 1 (k = train_steps // original_steps), largest first."""
    if not steps <= original_steps <= train_steps:
        raise ValueError(f"lcm spacing needs steps <= original_steps <= train_steps, got {steps}, {original_steps}, {train_steps}")
    k = train_steps // original_steps
    origin = [i * k - 1 for i in range(original_steps, 0, -1)]
    # numpy's linspace(0, n, steps, endpoint=False) is i * (n / steps); floor it the same way
    return [origin[math.floor(i * (original_steps / steps))] for i in range(steps)]


@attrs.frozen
class ModelSchedule:
    """A model's sampling schedule: its `steps` timesteps and their sigmas, plus a final level at sigma 0.

    Level i (0 <= i < steps) is the noise level before step i; level `steps` is the clean latent.
    """

    train: TrainSchedule
    steps: int
    spacing: str = "leading"
    steps_offset: int = 0
    original_steps: int = 50  # "lcm" spacing only; AnimateLCM samples with 100

    @cached_property
    def timesteps(self) -> tuple[int, ...]:
        return tuple(sampling_timesteps(self.steps, self.train.train_steps, self.spacing, self.steps_offset,
                                        self.original_steps))

    @cached_property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.train.sigma_at(t) for t in self.timesteps) + (0.0,)

    def start_level(self, strength: float) -> int:
        """The level an img2img run of this strength starts at (diffusers: int(steps * strength) steps run)."""
        # The epsilon guards against 0.7 * 10 == 6.999...; diffusers truncates the same product.
        run = min(int(self.steps * strength + 1e-9), self.steps)
        return self.steps - run

    def level_at_or_below(self, sigma: float) -> int:
        """The first level whose sigma is at most `sigma` (the clean level, `steps`, when none is)."""
        return next(i for i, level in enumerate(self.levels) if level <= sigma * (1 + 1e-9))

    def timestep_of_level(self, level: int) -> float | None:
        return None if level >= self.steps else float(self.timesteps[level])
