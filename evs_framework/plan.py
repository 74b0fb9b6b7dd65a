"""What a plan is: the explicit list of ops a spec becomes (evs_framework.planner makes it), checked before any
weight loads, and the models it uses.

Ops, in order of execution:
- `ConvertOp`: carry the clean latent from one latent space into another (decode with one model's VAE, encode
  with the next's, or a plugin's converter) when the next model does not share the present model's space;
- `LatentOp`: an operation on the clean latent (upscale when the trajectory first enters a model that asks for
  it, or one a stage names);
- `TransferOp`: move the latent onto a model's noise level with a transfer strategy;
- `DenoiseOp`: run a model's sampler over consecutive levels of its own schedule;
- `ForkOp`, `MergeOp`: replace the present latent by copies under new names, and join named latents into one.
Each op works on a named latent (`latent`; `main` unless the composition branches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from evs_framework.composition import MAIN
from evs_framework.registry import ModelEntry
from evs_framework.schedules import ModelSchedule
from evs_framework.spec import ModelChoice

if TYPE_CHECKING:
    from evs_framework.context_windows import Context


def calls_per_evaluation(guidance: float) -> int:
    """UNet calls one model evaluation costs: classifier-free guidance runs both halves, except at 1 (the prompt
    alone) and 0 (the negative prompt alone)."""
    return 1 if guidance in (0.0, 1.0) else 2


@attrs.frozen
class PlannedModel:
    role: str
    entry: ModelEntry
    choice: ModelChoice
    schedule: ModelSchedule
    guidance: float
    sampler: str  # the spec's choice, else the registry preset's
    sampler_params: dict  # the sampler's defaults, overridden by the spec
    context: Context | None = None  # frames per evaluation and their overlap (a motion model); None: frame-wise

    @property
    def calls_per_step(self) -> int:
        return calls_per_evaluation(self.guidance)


@attrs.frozen
class ConvertOp:
    stage: int
    model: str  # the role whose latent space the latent enters
    source_model: str  # the role whose latent space it leaves
    converter: str  # a registered converter's name, or VAE_ROUND_TRIP
    source_space: str
    target_space: str
    cost: str  # in words, for `evs plan`
    latent: str = MAIN


@attrs.frozen
class LatentOp:
    stage: int
    model: str
    name: str
    params: dict
    latent: str = MAIN


@attrs.frozen
class TransferOp:
    stage: int
    model: str
    strategy: str
    level: int
    sigma_from: float
    sigma_to: float
    # target schedule levels from clean up to sigma_to, ascending (what an inversion walks through)
    levels: tuple[float, ...]
    unet_calls: int
    params: dict = attrs.Factory(dict)  # the transfer's parameters
    evaluations: int = 0  # model evaluations (inversion steps) before guidance doubles them
    windows: int = 1  # context windows each evaluation runs (evs_framework.context_windows); in unet_calls
    latent: str = MAIN


@attrs.frozen
class DenoiseOp:
    stage: int
    model: str
    sampler: str
    first_level: int
    stop_level: int
    sigmas: tuple[float, ...]
    timesteps: tuple[int, ...]
    unet_calls: int
    sampler_params: dict = attrs.Factory(dict)
    guidance: float | None = None  # the stage's guidance; None: the model's
    windows: int = 1  # context windows each evaluation runs (evs_framework.context_windows); in unet_calls
    latent: str = MAIN

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def off_grid(self) -> bool:
        """Whether its first step is evaluated at a sigma between its model's levels (`start: current`)."""
        return self.steps > self.stop_level - self.first_level


@attrs.frozen
class ForkOp:
    stage: int
    model: str  # the role whose latent space the latent is in
    latent: str  # the one copied (and replaced by the copies)
    copies: tuple[str, ...]
    sigma: float  # the noise level it is at


@attrs.frozen
class MergeOp:
    stage: int
    model: str
    merged: tuple[str, ...]
    latent: str  # the one the mean goes into
    weights: tuple[float, ...]
    sigma: float


@attrs.frozen
class PlanExtra:
    """Work a plugin adds to a plan outside its ops (e.g. a capture pass over the source), with its cost."""

    name: str
    detail: str
    unet_calls: dict[str, int] = attrs.Factory(dict)
    memory_bytes: int | None = None  # what it holds while the video runs; None when it cannot be known yet


@attrs.frozen
class Plan:
    composition: str
    models: dict[str, PlannedModel]
    ops: tuple[ConvertOp | LatentOp | TransferOp | DenoiseOp | ForkOp | MergeOp, ...]
    notes: tuple[str, ...]
    inversion_guidance: float
    extras: tuple[PlanExtra, ...] = ()
    frames: int | None = None  # the clip length the calls are counted for when a model runs in windows

    @property
    def source_model(self) -> str:
        """The role whose VAE encodes the input video: the first model the trajectory enters."""
        return self.ops[0].model

    @property
    def output_model(self) -> str:
        """The role whose VAE decodes the result: the model that owns the latent at the end."""
        return self.ops[-1].model

    @property
    def branches(self) -> bool:
        return any(isinstance(op, ForkOp) for op in self.ops)

    def totals(self) -> dict[str, dict[str, int]]:
        """Per model role: denoising steps, transfer (inversion) steps and UNet calls (plugins' extras included)."""
        totals = {role: {"steps": 0, "inversion_steps": 0, "unet_calls": 0} for role in self.models}
        for extra in self.extras:
            for role, calls in extra.unet_calls.items():
                totals[role]["unet_calls"] += calls
        for op in self.ops:
            if isinstance(op, DenoiseOp):
                totals[op.model]["steps"] += op.steps
                totals[op.model]["unet_calls"] += op.unet_calls
            elif isinstance(op, TransferOp):
                totals[op.model]["inversion_steps"] += op.evaluations
                totals[op.model]["unet_calls"] += op.unet_calls
        return totals


def untrained_timesteps(preset, timesteps) -> tuple[int, ...]:
    """The timesteps a distilled model (one with `trained_timesteps`) was not trained on; empty for other models."""
    if not preset.trained_timesteps:
        return ()
    return tuple(t for t in timesteps if t not in preset.trained_timesteps)
