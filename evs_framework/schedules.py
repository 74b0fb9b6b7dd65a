"""Noise schedules in sigma space.

A latent at noise level sigma is `x = x0 + sigma * eps` (the variance-exploding form of k-diffusion). Every
model keeps its own schedule: SD1.5 fine-tunes train on `scaled_linear` betas, AnimateDiff motion modules on
`linear` ones, flow-matching models (SD3, Wan) on straight paths `x_t = (1 - t) x0 + t eps`, so the same
timestep means a different sigma. Models meet only through sigma.

A schedule (the `NoiseSchedule` shape below) says where each of its timesteps sits in sigma, which timestep a
sigma is, what the model's input is divided by at a sigma, and how a run of n steps spaces its timesteps. Kinds are
registered by plugins (hook `register_noise_schedules`); `betas` and `flow_matching` are built in.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Protocol

import attrs
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace", "lcm")
# where the schedule's own last level would be pure noise (zero terminal SNR, flow matching's t = 1), sigma is
# infinite; it stops here instead, as diffusers' samplers clamp the final alpha_cumprod to 2**-24
TERMINAL_ALPHA_CUMPROD = 2.0**-24


class NoiseSchedule(Protocol):
    train_steps: int

    def sigma_at(self, timestep: float) -> float:
        """The sigma of a (training) timestep."""

    def timestep_at(self, sigma: float) -> float:
        """The (fractional) timestep the model is evaluated at for a latent at `sigma`."""

    def input_divisor(self, sigma: float) -> float:
        """d(sigma): the model sees `x / d` (sqrt(1 + sigma^2) for variance-preserving betas, 1 + sigma for flow
        matching)."""

    def sampling_timesteps(self, steps: int, spacing: str, steps_offset: int, original_steps: int) -> list[float]:
        """The descending timesteps of a `steps`-step run."""


@attrs.frozen
class BetaSchedule:
    """A discrete schedule of betas, as DDPM-family models (SD1.5, AnimateDiff, SDXL, CogVideoX) train on.

    `zero_terminal_snr` rescales the betas so that the last timestep is pure noise (Lin et al. 2023, as v-prediction
    models such as CogVideoX do); its sigma is then large but finite (TERMINAL_ALPHA_CUMPROD).
    """

    beta_schedule: str = attrs.field(validator=attrs.validators.in_(BETA_SCHEDULES))
    beta_start: float = 0.00085
    beta_end: float = 0.012
    train_steps: int = 1000
    zero_terminal_snr: bool = False

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        n = self.train_steps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        elif self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        else:  # squaredcos_cap_v2: the cosine schedule of Nichol & Dhariwal, betas capped at 0.999
            def alpha_bar(t):
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                                 dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if self.zero_terminal_snr:
            root = alphas_cumprod.sqrt()
            first, last = root[0].clone(), root[-1].clone()
            root = (root - last) * first / (first - last)
            alphas_cumprod = (root**2).clamp(min=TERMINAL_ALPHA_CUMPROD)
        return alphas_cumprod

    @cached_property
    def sigmas(self) -> torch.Tensor:
        """sigma for each training timestep t = 0 .. train_steps-1 (float64, increasing)."""
        ac = self.alphas_cumprod
        return ((1 - ac) / ac).sqrt()

    def sigma_at(self, timestep: float) -> float:
        return float(self.sigmas[int(timestep)])

    def timestep_at(self, sigma: float) -> float:
        """The (fractional) timestep whose sigma this is, interpolating log-sigma between table entries."""
        log_sigmas = self.sigmas.log()
        log_sigma = math.log(max(sigma, float(self.sigmas[0])))
        high = int(torch.searchsorted(log_sigmas, torch.tensor(log_sigma, dtype=torch.float64)).clamp(1, self.train_steps - 1))
        low = high - 1
        weight = (log_sigma - float(log_sigmas[low])) / float(log_sigmas[high] - log_sigmas[low])
        return low + min(max(weight, 0.0), 1.0)

    def input_divisor(self, sigma: float) -> float:
        return math.sqrt(sigma**2 + 1.0)

    def sampling_timesteps(self, steps: int, spacing: str = "leading", steps_offset: int = 0,
                           original_steps: int = 50) -> list[int]:
        return sampling_timesteps(steps, self.train_steps, spacing, steps_offset, original_steps)


@attrs.frozen
class FlowMatchingSchedule:
    """Rectified flow, `x_t = (1 - t) x0 + t eps` with t in [0, 1] (SD3, Flux, Wan): sigma = t / (1 - t), the model's
    timestep is t * train_steps. A run of n steps takes t evenly from 1 down (1, 1 - 1/n, ..., 1/n), each bent by
    `shift` towards the noisy end (t' = shift t / (1 + (shift - 1) t)), as diffusers' flow schedulers do; t = 1 itself
    stops at TERMINAL_ALPHA_CUMPROD's sigma, like the betas' pure-noise end."""

    shift: float = 1.0
    train_steps: int = 1000

    @property
    def max_t(self) -> float:
        return 1.0 / (1.0 + math.sqrt(TERMINAL_ALPHA_CUMPROD))  # t whose sigma is the betas' terminal sigma

    def sigma_at(self, timestep: float) -> float:
        t = min(timestep / self.train_steps, self.max_t)
        return t / (1.0 - t)

    def timestep_at(self, sigma: float) -> float:
        return sigma / (1.0 + sigma) * self.train_steps

    def input_divisor(self, sigma: float) -> float:
        return 1.0 + sigma

    def sampling_timesteps(self, steps: int, spacing: str = "trailing", steps_offset: int = 0,
                           original_steps: int = 50) -> list[float]:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        ts = [1.0 - i / steps for i in range(steps)]
        return [self.shift * t / (1.0 + (self.shift - 1.0) * t) * self.train_steps for t in ts]


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


def start_level(steps: int, strength: float) -> int:
    """The level an img2img run of `steps` steps at this strength starts at: int(steps * strength) steps run, the
    float product truncated as diffusers' img2img and AnimateDiff video-to-video pipelines truncate it (50 steps at
    0.58 run 28, not 29)."""
    return steps - min(int(steps * strength), steps)


@attrs.frozen
class ModelSchedule:
    """A model's sampling schedule: its `steps` timesteps and their sigmas, plus a final level at sigma 0.

    Level i (0 <= i < steps) is the noise level before step i; level `steps` is the clean latent.
    """

    train: NoiseSchedule
    steps: int
    spacing: str = "leading"
    steps_offset: int = 0
    original_steps: int = 50  # "lcm" spacing only; AnimateLCM samples with 100

    @cached_property
    def timesteps(self) -> tuple[float, ...]:
        return tuple(self.train.sampling_timesteps(self.steps, self.spacing, self.steps_offset, self.original_steps))

    @cached_property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.train.sigma_at(t) for t in self.timesteps) + (0.0,)

    def start_level(self, strength: float) -> int:
        return start_level(self.steps, strength)

    def level_at_or_below(self, sigma: float) -> int:
        """The first level whose sigma is at most `sigma` (the clean level, `steps`, when none is)."""
        return next(i for i, level in enumerate(self.levels) if level <= sigma * (1 + 1e-9))

    def timestep_of_level(self, level: int) -> float | None:
        return None if level >= self.steps else float(self.timesteps[level])
