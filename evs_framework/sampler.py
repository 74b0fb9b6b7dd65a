"""Samplers: one denoising step in sigma space, with the model evaluations it will cost declared up front.

A sampler's `step(denoise, x, ctx)` moves the latent `x` from `ctx.sigma` to `ctx.sigma_next`, calling
`denoise(x, sigma)` (an `evs_framework.denoiser.Denoiser`) as often as it needs, and returns the new latent with
the prediction the trajectory should carry on with: its clean estimate x0 and the noise eps that the new latent
holds over it, x_next = x0 + sigma_next * eps (so re-noising with eps to sigma_next gives x_next back).
`evaluations(sigma, sigma_next, params)` says how many calls that step makes, before guidance doubles them; a
sampler whose count depends on the step's place in the op (a multistep method that starts with a single-step one, a
corrector every k-th step) gives `step_evaluations(step, sigmas, params)` instead, with what its `StepContext` will
hold. The planner sums it over the schedule, so `evs plan` shows what a run will do, and the runner reports any step
that did otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import attrs
import torch


@attrs.frozen
class StepContext:
    """What a step knows beyond its latent. `state` is new for each op of each video (a multistep sampler keeps its
    history there); `video_state` lives for the whole video and is shared by every sampler and transfer, so key
    it by your plugin's name."""

    step: int  # counts from 0 within the op
    sigmas: tuple[float, ...]  # the op's levels, descending; this step goes from sigmas[step] to sigmas[step + 1]
    op: object  # the evs_framework.plan.DenoiseOp being run
    params: Mapping[str, object]  # the sampler's parameters: its defaults, overridden by the spec
    state: dict
    video_state: dict
    generator: torch.Generator

    @property
    def sigma(self) -> float:
        return self.sigmas[self.step]

    @property
    def sigma_next(self) -> float:
        return self.sigmas[self.step + 1]


def one_evaluation(sigma: float, sigma_next: float, params: Mapping[str, object]) -> int:
    return 1


@attrs.frozen
class Sampler:
    name: str
    step: Callable  # (denoise, x, ctx: StepContext) -> (x_next, Prediction)
    evaluations: Callable[[float, float, Mapping[str, object]], int] = one_evaluation
    parameters: Mapping[str, float] = attrs.field(factory=dict)  # every parameter it reads, with its default
    description: str = ""
    # (step within the op, the op's sigmas, params) -> evaluations; when given, it counts instead of `evaluations`
    step_evaluations: Callable[[int, tuple[float, ...], Mapping[str, object]], int] | None = None

    def calls(self, sigmas: tuple[float, ...], params: Mapping[str, object]) -> int:
        """Model evaluations over a run of consecutive levels (one op's), before guidance doubles them."""
        if self.step_evaluations is not None:
            return sum(self.step_evaluations(step, sigmas, params) for step in range(len(sigmas) - 1))
        return sum(self.evaluations(a, b, params) for a, b in zip(sigmas, sigmas[1:]))


def single_step(sampler: Sampler, denoise, x: torch.Tensor, sigma: float, sigma_next: float,
                generator: torch.Generator | None = None, params: Mapping[str, object] | None = None):
    """One step of `sampler` outside a plan (in a notebook, a test), with a fresh context and its default
    parameters overridden by `params`."""
    context = StepContext(0, (sigma, sigma_next), None, {**sampler.parameters, **(params or {})}, {}, {}, generator)
    return sampler.step(denoise, x, context)
