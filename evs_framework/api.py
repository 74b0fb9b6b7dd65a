"""EVS from Python: load the models of a spec once, then compose frames held in memory.

    from evs_framework.api import Composer

    composer = Composer("configs/native/enhance.yaml")            # or a Spec; weights load here, once
    result = composer(frames, "a red car on a coastal road")      # (T, H, W, 3) numpy or torch, uint8 or [0, 1]
    result.frames                                                 # the same kind of array, same value range
    result.record["unet_calls"], result.record["ops"]             # the plan and what the run did

Settings overrides (`composer(frames, prompt, settings={"idm_inverse_strength": 0.5})`) and another composition
(`composition="IDM_VDM"`) re-plan without reloading a weight; `composer.planned(...)` is that plan without running
it. The spec's inputs are not read (a mapping needs none): the frames given are the video.

For files, as `evs run` does it: `job = prepare_job("job.yaml")`, then `runner.run_job(job.spec, job.plan,
job.context)`. The CLI is these functions behind its flags.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import attrs
import numpy as np
import torch

from evs_framework.errors import EVSError, PlanError, SpecError, VideoError
from evs_framework.identity import derived_seed
from evs_framework.io.video_io import fit_frames
from evs_framework.loading import DTYPES, LoadContext, WeightSettings, default_weight_folders
from evs_framework.paths import resolved
from evs_framework.plan import Plan
from evs_framework.plan_text import format_plan
from evs_framework.planner import make_plan, model_problems, resolve_composition, video_plans
from evs_framework.plugins import load_plugins
from evs_framework.preflight import clip_problems, input_problems, parse_device, weight_problems
from evs_framework.registry import load_registry
from evs_framework.runner import load_backends, synthesize
from evs_framework.sharding import process_device_name
from evs_framework.spec import (ParsedSpec, Spec, load_spec, overridden_settings, parse_spec, read_spec,
                                settings_problems)


@attrs.frozen
class Result:
    frames: np.ndarray | torch.Tensor  # (T, H, W, 3), of the kind and value range given
    record: dict  # composition, plan (as `evs plan` prints it), seed, seconds, unet_calls, ops


def load_context(plugins=None, registry=None, *, device: str | torch.device | None = None, dtype=None, vae_dtype=None,
                 compile: tuple[str, ...] = (), weights_dirs=(), allow_pickle: bool = False,
                 offload: bool = False) -> LoadContext:
    """Where and how models load. `device` defaults to cuda when there is one (in a launched job, this process's
    GPU), else cpu; `dtype` and `vae_dtype` (torch dtypes or their names) to float16 on a GPU, float32 elsewhere;
    `weights_dirs` are searched before $EVS_WEIGHTS_DIR and ./pretrained_models."""
    plugins = plugins or load_plugins()
    registry = registry or load_registry([], plugins)
    if not isinstance(device, torch.device):
        device = parse_device(process_device_name(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    half = torch.float16 if device.type == "cuda" else torch.float32
    dtype, vae_dtype = (DTYPES[d] if isinstance(d, str) else d or half for d in (dtype, vae_dtype))
    return LoadContext(plugins, registry, WeightSettings(default_weight_folders(list(weights_dirs))), device, dtype,
                       vae_dtype, allow_pickle, offload, tuple(compile))


# the parts of a spec that planning the stages reads; a problem in one of them leaves the stages unplanned
STAGE_SECTIONS = frozenset({"settings", "composition", "plugin_settings"})


@attrs.frozen
class Job:
    spec: Spec
    plan: Plan
    context: LoadContext
    missing: tuple[str, ...]  # missing input videos and weight files (only when they were allowed)
    plans: dict = attrs.Factory(dict)  # the plan each video runs, by its settings (planner.video_plans)


def prepare_job(spec: str | Path | ParsedSpec, *, plugins=None, registry=None, output_dir: Path | None = None,
                allow_missing: bool = False, source: str | None = None, **context_options) -> Job:
    """A spec file (or a parsed spec), its plan and the machine checked in one round, before any weight loads: every
    problem in one SpecError named after `source` (default: the file). `context_options` are load_context's."""
    plugins = plugins or load_plugins()
    registry = registry or load_registry([], plugins)
    parsed = spec if isinstance(spec, ParsedSpec) else read_spec(Path(spec))
    source = source or str(spec)
    spec = parsed.spec
    if output_dir:
        spec = attrs.evolve(spec, output=attrs.evolve(spec.output, dir=resolved(output_dir)))
    problems = list(parsed.problems)
    try:
        context = load_context(plugins, registry, **context_options)
    except EVSError as exc:
        problems.append(str(exc))
        context = load_context(plugins, registry, **{**context_options, "device": "cpu"})  # weights are looked for
    plan, plans, found, tainted = None, {}, [], parsed.tainted
    try:
        if tainted & STAGE_SECTIONS:  # the stages would compute with a bad value: the composition and models alone
            found += model_problems(spec, registry, plugins, parsed.unplannable_roles)
            if "composition" not in tainted:
                resolve_composition(spec, plugins.catalogue)
        else:
            plan = make_plan(spec, registry, plugins, context, parsed.unplannable_roles, extras=not problems)
            plans = video_plans(_without_bad_settings(spec, tainted), plan, registry, plugins, context)
    except PlanError as exc:
        found += exc.problems
    except EVSError as exc:
        found.append(str(exc))
    entries = [m.entry for m in plan.models.values()] if plan else \
        [registry.entries[c.name] for c in spec.models.values() if c.name in registry.entries]
    missing = input_problems(spec, plan, sized="video" not in tainted) + weight_problems(entries, context)
    if missing and not allow_missing:
        found += missing
    problems += parsed.as_written(found)
    if problems:
        raise SpecError(problems, source, _missing_hint(missing) if missing and not allow_missing else "")
    return Job(spec, plan, context, tuple(missing), plans)


def _without_bad_settings(spec: Spec, tainted: frozenset[str]) -> Spec:
    """`spec` without the own settings of the inputs that had a problem (they are reported, not planned)."""
    inputs = tuple(attrs.evolve(item, settings=None) if f"inputs[{i}]" in tainted else item
                   for i, item in enumerate(spec.inputs))
    return attrs.evolve(spec, inputs=inputs)


def _missing_hint(missing: list[str]) -> str:
    return (f"{len(missing)} of them: input videos or weight files missing; `evs plan --allow-missing` shows the plan "
            f"without them (`allow_missing=True` from Python)")


class Composer:
    """A spec's models, loaded once (`device`, `dtype`, `vae_dtype`, `compile` as the CLI's flags; `weights_dirs`
    searched first, then the usual folders; `registry_files` as `--registry`)."""

    def __init__(self, spec: Spec | dict | str | Path, *, device: str | None = None, dtype: torch.dtype | None = None,
                 vae_dtype: torch.dtype | None = None, compile: tuple[str, ...] = (), weights_dirs=(),
                 registry_files=()):
        if isinstance(spec, dict):
            spec = _spec_without_inputs(spec)
        self.spec = spec if isinstance(spec, Spec) else load_spec(spec)
        self.plugins = load_plugins()
        self.registry = load_registry(list(registry_files), self.plugins)
        self.context = load_context(self.plugins, self.registry, device=device, dtype=dtype, vae_dtype=vae_dtype,
                                    compile=compile, weights_dirs=weights_dirs)
        self.plan = make_plan(self.spec, self.registry, self.plugins, self.context)
        self.backends = load_backends(self.plan, self.context)

    def planned(self, *, settings: dict | None = None, composition: str | None = None) -> tuple[Spec, Plan]:
        """The spec and plan a call with these overrides runs, planned without loading or running anything: `settings`
        override the spec's composition settings, `composition` names another composition (`evs plugins` lists them).
        A bad setting raises a SpecError, a schedule that cannot run a PlanError."""
        if not settings and composition is None:
            return self.spec, self.plan
        spec = self.spec
        if settings:
            merged, problems = overridden_settings(spec.settings, settings, "settings")
            problems += settings_problems(merged, "settings") if merged is not None else []
            if problems:
                raise SpecError(problems, "Composer call")
            spec = attrs.evolve(spec, settings=merged)
        if composition is not None:
            spec = attrs.evolve(spec, composition=composition)
        return spec, make_plan(spec, self.registry, self.plugins, self.context)

    def _backends(self, plan: Plan) -> dict:
        """The backends of the roles `plan` runs, loading any the spec's own plan left out (once: the context keeps
        them)."""
        if not plan.models.keys() <= self.backends.keys():
            self.backends = {**self.backends, **load_backends(plan, self.context)}
        return {role: self.backends[role] for role in plan.models}

    def __call__(self, frames, prompt: str, *, seed: int | None = None, negative_prompt: str | None = None,
                 settings: dict | None = None, composition: str | None = None) -> Result:
        """Compose `frames` (T, H, W, 3) for `prompt`. `seed` defaults to one made from the spec's seed and the frames'
        content; `settings` and `composition` override the spec's for this call (see `planned`)."""
        started = time.perf_counter()
        spec, plan = self.planned(settings=settings, composition=composition)
        video, to_output = _as_video(frames)
        video = video[::spec.video.stride][:spec.video.max_frames]
        video, notes = fit_frames(video, "the frames given", fit=spec.video.fit, size=spec.video.size)
        problems = clip_problems(plan, "the frames given", *video.shape[:1], *video.shape[-2:])
        if problems:
            raise VideoError("; ".join(problems))
        seed = derived_seed(spec.seed, hashlib.sha256(video.numpy().tobytes()).hexdigest()) if seed is None else seed
        made = synthesize(spec, plan, self._backends(plan), self.context, video, prompt,
                          spec.negative_prompt if negative_prompt is None else negative_prompt, seed)
        record = {"composition": plan.composition, "plan": format_plan(made.plan), "seed": seed, "input_notes": list(notes),
                  "seconds": round(time.perf_counter() - started, 3), "unet_calls": made.unet_calls,
                  "ops": [attrs.asdict(r) for r in made.records]}
        return Result(to_output(made.frames), record)


def _spec_without_inputs(data: dict) -> Spec:
    """A native spec given as a mapping, whose `inputs` may be left out: the frames come with each call."""
    parsed = parse_spec(data, "Composer spec")
    problems = [p for p in parsed.problems if "inputs" in data or not p.startswith("$.inputs")]
    if problems:
        raise SpecError(problems, "Composer spec")
    return parsed.spec


def _as_video(frames):
    """(T, H, W, 3) numpy or torch, uint8 or floats in [0, 1] -> ((T, 3, H, W) float32 in [-1, 1], a function turning
    such a tensor back into the kind given)."""
    is_torch = isinstance(frames, torch.Tensor)
    array = frames.detach().cpu() if is_torch else torch.from_numpy(np.asarray(frames))
    if array.dim() != 4 or array.shape[-1] != 3 or not len(array):
        raise VideoError(f"frames of shape {tuple(array.shape)}; give (frames, height, width, 3), at least one frame")
    integer = array.dtype == torch.uint8
    if not integer and not array.is_floating_point():
        raise VideoError(f"frames of dtype {array.dtype}; give uint8 (0..255) or floats in [0, 1]")
    if not integer and array.numel() and not (0 <= float(array.min()) and float(array.max()) <= 1):
        raise VideoError(f"float frames range over [{float(array.min()):.3g}, {float(array.max()):.3g}]; give them in "
                         f"[0, 1] (or as uint8)")
    video = (array.float() / 255 if integer else array.float()).permute(0, 3, 1, 2) * 2 - 1

    def to_output(result: torch.Tensor):
        unit = ((result.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
        out = (unit * 255).round().to(torch.uint8) if integer else unit
        return out if is_torch else out.numpy()

    return video.contiguous(), to_output
