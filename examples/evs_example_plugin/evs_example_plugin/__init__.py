"""An EVS plugin written as a third party would write one, using only EVS's public contracts.

It provides:
- `midpoint`, a sampler of two model evaluations a step (one into sigma 0), declared so plans count it;
- `shared_noise`, a transfer that re-noises with one noise tensor drawn once per video (kept in the video's
  state, not in a module global), so every hand-over of a video lands on the same noise;
- `every_k`, a composition planned by a function: the T2I in pieces of `every_k.k` steps with one T2V step at
  the present level between them, entered with `shared_noise` (`plugin_settings: {every_k: {k: 4}}` in a spec);
- `prompt_prefix`, a backend kind over an SD1.5 base that reads each prompt with a fixed prefix;
- `karras`, a noise schedule kind: a model's betas, sampled at Karras et al.'s sigmas instead of evenly spaced
  timesteps;
- a registry file naming a model of each.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import math

import attrs

from evs_framework import BetaSchedule, Composition, Prediction, Sampler, Stage, Transfer, fresh_noise, hookimpl

PLUGIN = "evs_example"


def midpoint(denoise, x, ctx):
    """Second-order step: the slope at the step's geometric middle (the last step, to sigma 0, is Euler's)."""
    first = denoise(x, ctx.sigma)
    if ctx.sigma_next == 0:
        return first.x0, first
    sigma_mid = (ctx.sigma * ctx.sigma_next) ** 0.5
    second = denoise(first.x0 + sigma_mid * first.eps, sigma_mid)
    x_next = x + (ctx.sigma_next - ctx.sigma) * second.eps
    return x_next, Prediction(x_next - ctx.sigma_next * second.eps, second.eps)


def midpoint_evaluations(sigma, sigma_next, params) -> int:
    return 1 if sigma_next == 0 else 2


def shared_noise(ctx):
    """The clean estimate plus the video's one noise tensor (drawn at its first hand-over) at the target level."""
    mine = ctx.video_state.setdefault(PLUGIN, {})
    if mine.get("noise") is None or mine["noise"].shape != ctx.clean.shape:
        mine["noise"] = fresh_noise(ctx.clean, ctx.generator)
    return ctx.clean + ctx.sigma_to * mine["noise"]


def every_k(builder) -> None:
    k = builder.setting("every_k.k")
    builder.stage(Stage("idm", "random", builder.setting("idm_inverse_strength"), steps=k), fit=True)
    while builder.remaining("idm") and not builder.failed:
        builder.stage(Stage("vdm", "shared_noise", "current", steps=1), fit=True)
        builder.stage(Stage("idm", "ddim", "resume", steps=k), fit=True)


@attrs.frozen
class PromptPrefixBackend:
    """The backend of the model it builds on (`base` in its registry entry), reading every prompt with a prefix (the
    negative prompt, empty or not, as it is); everything else is the base backend's."""

    base: object
    prefix: str

    def __getattr__(self, name):
        return getattr(self.base, name)

    def encode_prompts(self, prompts):
        negative, *positive = prompts
        return self.base.encode_prompts([negative, *(f"{self.prefix} {p}" for p in positive)])


def load_prompt_prefix(entry, context) -> PromptPrefixBackend:
    return PromptPrefixBackend(context.load(context.registry.get(entry.base)), entry.options["prefix"])


@attrs.frozen
class KarrasSchedule:
    """Betas as trained, but a run of n steps goes through sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) -
    max^(1/rho)))^rho (Karras et al. 2022), at the fractional timesteps those sigmas have."""

    betas: BetaSchedule
    rho: float = 7.0

    @property
    def train_steps(self) -> int:
        return self.betas.train_steps

    def sigma_at(self, timestep: float) -> float:
        low = min(int(timestep), self.train_steps - 2)
        weight = timestep - low
        sigmas = self.betas.sigmas
        return math.exp((1 - weight) * math.log(sigmas[low]) + weight * math.log(sigmas[low + 1]))

    def timestep_at(self, sigma: float) -> float:
        return self.betas.timestep_at(sigma)

    def input_divisor(self, sigma: float) -> float:
        return self.betas.input_divisor(sigma)

    def sampling_timesteps(self, steps, spacing, steps_offset, original_steps) -> list[float]:
        low, high = float(self.betas.sigmas[0]) ** (1 / self.rho), float(self.betas.sigmas[-1]) ** (1 / self.rho)
        ramp = [i / max(steps - 1, 1) for i in range(steps)]
        return [self.betas.timestep_at((high + r * (low - high)) ** self.rho) for r in ramp]


def karras(preset) -> KarrasSchedule:
    unknown = set(preset.schedule_params) - {"rho"}
    if unknown:
        raise ValueError(f"schedule 'karras' takes no parameter {', '.join(map(repr, sorted(unknown)))}; it takes rho")
    betas = BetaSchedule(preset.beta_schedule, preset.beta_start, preset.beta_end, preset.train_steps)
    return KarrasSchedule(betas, float(preset.schedule_params.get("rho", 7.0)))


@hookimpl
def register_noise_schedules(register):
    register("karras", karras)


@hookimpl
def register_samplers(register):
    register("midpoint", Sampler("midpoint", midpoint, evaluations=midpoint_evaluations,
                                 description=midpoint.__doc__))


@hookimpl
def register_transfers(register):
    register("shared_noise", Transfer("shared_noise", shared_noise, description=shared_noise.__doc__))


@attrs.frozen
class EveryK:
    """every_k's settings (`plugin_settings: {every_k: {k: 4}}`)."""

    k: int = 3  # T2I steps between two T2V steps

    def problems(self) -> list[str]:
        return [] if self.k >= 1 else [f"k: {self.k}; give at least 1 T2I step between T2V steps"]


@hookimpl
def register_settings(register):
    register("every_k", EveryK)


@hookimpl
def register_compositions(register):
    register("every_k", Composition("every_k", "T2I in pieces of every_k.k steps, a T2V step between them",
                                    planner=every_k))


@hookimpl
def register_backends(register):
    register("prompt_prefix", load_prompt_prefix)


@hookimpl
def required_models(entry, context):
    if entry.kind != "prompt_prefix":
        return None
    return [context.registry.get(entry.base)]


@hookimpl
def registry_files():
    return [Path(str(files(__package__) / "models.yaml"))]
