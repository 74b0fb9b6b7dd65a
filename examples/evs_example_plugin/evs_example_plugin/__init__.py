"""An EVS plugin written as a third party would write one, using only EVS's public contracts.

It provides:
- `midpoint`, a sampler of two model evaluations a step (one into sigma 0), declared so plans count it;
- `shared_noise`, a transfer that re-noises with one noise tensor drawn once per video (kept in the video's
  state, not in a module global), so every hand-over of a video lands on the same noise;
- `every_k`, a composition planned by a function: the T2I in pieces of `every_k.k` steps with one T2V step at
  the present level between them, entered with `shared_noise` (`plugin_settings: {every_k: {k: 4}}` in a spec);
- `prompt_prefix`, a backend kind over an SD1.5 base that reads each prompt with a fixed prefix, and a registry
  file naming one such model.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import attrs

from evs_framework.composition import Composition, Stage
from evs_framework.denoiser import Prediction
from evs_framework.hookspecs import hookimpl
from evs_framework.sampler import Sampler
from evs_framework.transfer import Transfer, fresh_noise
from evs_plugins.sd15 import SD15Backend, frame_codec, sd15_parts

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
class PromptPrefixBackend(SD15Backend):
    """An SD1.5 backend that reads every prompt with a prefix (the negative prompt, empty or not, as it is)."""

    prefix: str = ""

    def encode_prompts(self, prompts):
        negative, *positive = prompts
        return super().encode_prompts([negative, *(f"{self.prefix} {p}" for p in positive)])


def load_prompt_prefix(entry, context) -> PromptPrefixBackend:
    parts = sd15_parts(context.registry.get(entry.base), context)
    return PromptPrefixBackend(parts, frame_codec(entry, parts), entry.options["prefix"])


@hookimpl
def register_samplers(register):
    register("midpoint", Sampler("midpoint", midpoint, evaluations=midpoint_evaluations,
                                 description=midpoint.__doc__))


@hookimpl
def register_transfers(register):
    register("shared_noise", Transfer("shared_noise", shared_noise, description=shared_noise.__doc__))


@hookimpl
def register_settings(register):
    register("every_k", {"k": 3})


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
