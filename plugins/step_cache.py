"""Step caching (`models.<role>.cache: {interval, depth}`), after DeepCache (Ma et al., CVPR 2024): adjacent
denoising steps change a UNet's deep features little, so most steps reuse them.

Within each denoising op of a cached role, step i runs the whole UNet when i is a multiple of `interval` (the op's
first step always does), and keeps its deep features (evs_plugins.unet_split) when the next step will reuse them; the
steps between run only the outer `depth` down- and up-blocks on the kept features. A shallow step is still one model
evaluation, so the plan's call counts hold; `evs plan` and the sidecar (`plugins.step_cache`) say how many steps were
shallow. Features are kept per (video, role, op) and by the place of the call in its step (a second-order sampler's
second call, a context window); they are dropped when another op starts (a transfer, a model switch, a latent op: the
trajectory jumps) and at the op's end, and a call whose input shape differs from the kept one (another guidance batch)
runs in full. Calls outside denoising steps (inversions, capture passes) always run in full.
"""

from __future__ import annotations

import json

import attrs
import torch

from evs_framework.errors import EVSError, PlanError
from evs_framework.hookspecs import hookimpl
from evs_framework.plan import DenoiseOp, PlanExtra
from evs_framework.spec import StepCacheChoice
from evs_plugins.sd15 import unet_config_folder
from evs_plugins.unet_split import full_pass, shallow_pass, split_problem

NAME = "step_cache"
SD15_KINDS = ("sd15", "sd15_lora", "animatediff")  # kinds whose UNet config can be read before loading


def shallow_step(step: int, interval: int) -> bool:
    return step % interval != 0


def planned_shallow(plan, role: str, interval: int) -> tuple[int, int]:
    """(shallow steps, steps) of `role`'s denoising ops."""
    steps = [i for op in plan.ops if isinstance(op, DenoiseOp) and op.model == role for i in range(op.steps)]
    return sum(shallow_step(i, interval) for i in steps), len(steps)


@attrs.frozen
class Kept:
    """Deep features of one call, with the shapes of the inputs they were made from."""

    sample_shape: torch.Size
    text_shape: torch.Size
    deep: torch.Tensor

    def fits(self, sample: torch.Tensor, text: torch.Tensor) -> bool:
        return sample.shape == self.sample_shape and text.shape == self.text_shape


@attrs.define
class RoleCache:
    """One role's step cache in one video: the features kept in the op now running, by the call's place in its step,
    and what was done."""

    role: str
    choice: StepCacheChoice
    unet: torch.nn.Module
    forward: CachedForward
    op: object | None = None  # the op the kept features belong to
    kept: dict[int, Kept] = attrs.Factory(dict)
    steps: int = 0
    shallow_steps: int = 0
    shallow_unet_calls: int = 0
    full_passes: int = 0
    shallow_passes: int = 0

    def drop(self) -> None:
        self.kept.clear()
        self.op = None


@attrs.define
class ActiveStep:
    """A denoising step of a cached role while it runs: whether it reuses kept features, whether it keeps its own
    (the op's next step is shallow), and its calls so far."""

    cache: RoleCache
    shallow: bool
    keep: bool
    unet_calls_before: int
    calls: int = 0
    all_shallow: bool = True


@attrs.define
class CachedForward:
    """Stands in for a UNet's forward while a video runs; outside a cached role's step it is the UNet's own."""

    unet: torch.nn.Module
    original: object  # the UNet's own forward, a bound method
    step: ActiveStep | None = None

    def __call__(self, sample, timestep, encoder_hidden_states, **options):
        step = self.step
        if step is None:
            return self.original(sample, timestep, encoder_hidden_states, **options)
        cache, position = step.cache, step.calls
        step.calls += 1
        depth = cache.choice.depth
        kept = cache.kept.get(position) if step.shallow and not options else None
        if kept is not None and kept.fits(sample, encoder_hidden_states):
            cache.shallow_passes += 1
            return shallow_pass(self.unet, depth, sample, timestep, encoder_hidden_states, kept.deep)
        step.all_shallow = False
        cache.full_passes += 1
        output, deep = full_pass(self.original, self.unet, depth, step.keep, sample, timestep, encoder_hidden_states,
                                 **options)
        if deep is not None:
            cache.kept[position] = Kept(sample.shape, encoder_hidden_states.shape, deep)
        return output


def unet_config(entry, context) -> dict | None:
    """The UNet config of an SD1.5-family entry (a motion model's: its base's), read without loading weights or
    importing diffusers; None when it cannot be read."""
    base = context.registry.get(entry.base) if entry.kind == "animatediff" else entry
    try:
        return json.loads((unet_config_folder(base, context) / "unet" / "config.json").read_text(encoding="utf-8"))
    except (EVSError, OSError, ValueError):
        return None


def cached_roles(plan) -> dict[str, StepCacheChoice]:
    return {role: model.choice.cache for role, model in plan.models.items() if model.choice.cache is not None}


def every(interval: int) -> str:
    return {1: "every step", 2: "every 2nd step", 3: "every 3rd step"}.get(interval, f"every {interval}th step")


@hookimpl
def plan_extras(spec, plan, context):
    roles = cached_roles(plan)
    if not roles:
        return None
    compiled = [role for role in roles if role in getattr(context, "compile", ())]
    if compiled:
        raise PlanError(f"$.models.{compiled[0]}.cache: the {compiled[0]} UNet is compiled too (--compile), and compile "
                        f"does not follow a forward that switches between full and shallow passes; drop one of the two")
    parts = []
    for role, choice in roles.items():
        entry = plan.models[role].entry
        config = unet_config(entry, context) if context is not None and entry.kind in SD15_KINDS else None
        problem = config and split_problem(config["_class_name"], config, choice.depth)
        if problem:
            raise PlanError(f"$.models.{role}.cache.depth: {entry.name}: {problem}")
        blocks = f" of {len(config['up_block_types'])}" if config else ""
        shallow, steps = planned_shallow(plan, role, choice.interval)
        parts.append(f"{role} {entry.name} {shallow} of {steps} steps shallow ({every(choice.interval)} of an op in "
                     f"full, the others through the outer {choice.depth}{blocks} down/up blocks on kept deep features)")
    return PlanExtra(NAME, "; ".join(parts) + "; outputs approximate, shallow steps still counted as calls")


@hookimpl
def video_start(video):
    roles = cached_roles(video.plan)
    if not roles:
        return
    for role, choice in roles.items():
        unet = video.backends[role].unet
        problem = split_problem(type(unet).__name__, unet.config, choice.depth)
        if problem:
            raise PlanError(f"$.models.{role}.cache: {video.plan.models[role].entry.name}: {problem}")
    forwards: dict[int, CachedForward] = {}
    caches = {}
    for role, choice in roles.items():
        unet = video.backends[role].unet
        if id(unet) not in forwards:  # two roles over one UNet share its stand-in, each with a cache of its own
            forwards[id(unet)] = CachedForward(unet, unet.forward)
            unet.forward = forwards[id(unet)]
        caches[role] = RoleCache(role, choice, unet, forwards[id(unet)])
    video.state[NAME] = caches


@hookimpl
def step_start(video, op, step, sigma):
    caches = video.state.get(NAME)
    if caches is None:
        return
    for cache in caches.values():
        if cache.op is not None and cache.op is not op:  # the trajectory moved on: nothing carries over
            cache.drop()
    cache = caches.get(op.model)
    if cache is None:
        return
    cache.op, interval = op, cache.choice.interval
    next_shallow = step + 1 < op.steps and shallow_step(step + 1, interval)
    cache.forward.step = ActiveStep(cache, shallow_step(step, interval), next_shallow, video.denoisers[op.model].calls)


@hookimpl
def step_end(video, op, step, sigma, latents):
    cache = video.state.get(NAME, {}).get(op.model)
    if cache is None:
        return
    active, cache.forward.step = cache.forward.step, None
    cache.steps += 1
    if active.shallow and active.all_shallow and active.calls:
        cache.shallow_steps += 1
        cache.shallow_unet_calls += video.denoisers[op.model].calls - active.unet_calls_before
    if step == op.steps - 1:
        cache.drop()


@hookimpl
def video_end(video):
    caches = video.state.pop(NAME, None)
    if caches is None:
        return
    for cache in caches.values():
        cache.drop()
        if "forward" in vars(cache.unet):
            del cache.unet.forward
        video.report.setdefault(NAME, {})[cache.role] = {
            "interval": cache.choice.interval, "depth": cache.choice.depth, "steps": cache.steps,
            "shallow_steps": cache.shallow_steps, "planned_shallow_steps": planned_shallow(video.plan, cache.role, cache.choice.interval)[0],
            "shallow_unet_calls": cache.shallow_unet_calls, "full_passes": cache.full_passes,
            "shallow_passes": cache.shallow_passes}
