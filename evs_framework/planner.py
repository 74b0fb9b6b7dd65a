"""Planning: a spec and a composition become a plan (evs_framework.plan), every problem found at once.

A composition given as data is compiled to the same calls a planner function makes through a `PlanBuilder`:
one stage at a time, each checked, counted and turned into ops by the same code.
"""

from __future__ import annotations

import functools

import attrs

from evs_framework.composition import MAIN, Composition, Fork, Merge, Stage, Step, check_composition, check_step
from evs_framework.context_windows import Context
from evs_framework.convert import structure_fields
from evs_framework.errors import EVSError, PlanError, did_you_mean, unknown_parameters
from evs_framework.latent_space import VAE_ROUND_TRIP, converter_between
from evs_framework.plan import (ConvertOp, DenoiseOp, ForkOp, LatentOp, MergeOp, Plan, PlannedModel, TransferOp,
                                calls_per_evaluation, untrained_timesteps)
from evs_framework.plugins import Catalogue, Plugins
from evs_framework.registry import Registry
from evs_framework.spec import EVERY_ROLE, ContextChoice, Spec

# what each named latent carries of the trajectory: its noise level, prediction, latent space, size and where each
# model stopped on it
LATENT_STATE = ("sigma", "has_prediction", "space", "scale", "size_before_source", "resume")
# a later stage entering above this multiple of the first stage's level is reported (the example config's
# T2V window enters at 1.3x)
RENOISE_WARNING = 1.5


def resolve_composition(spec: Spec, catalogue: Catalogue) -> Composition:
    if isinstance(spec.composition, Composition):
        return spec.composition
    try:
        composition = catalogue.get("compositions", spec.composition)
    except EVSError as exc:
        raise PlanError(f"$.composition: unknown composition {spec.composition!r}: {exc}") from None
    problems = check_composition(composition, f"composition {spec.composition!r}")  # a plugin's, never checked yet
    if problems or composition.name != spec.composition.split(":", 1)[-1]:  # `plugin:name` reaches `name`
        raise PlanError(problems or [f"composition {spec.composition!r} calls itself {composition.name!r}; the plugin "
                                     f"that registers it must use one name"])
    return composition


def setting_path(reference: str) -> str:
    """Where a composition's `$name` reference is set in a spec: `$.settings.name`, `$.plugin_settings.ns.name`."""
    name = reference.removeprefix("$")
    return f"$.plugin_settings.{name}" if "." in name else f"$.settings.{name}"


class _Planner:
    """Walks the stages once, collecting ops and every problem found."""

    def __init__(self, spec: Spec, registry: Registry, catalogue: Catalogue, broken_roles=frozenset()):
        self.spec, self.registry, self.catalogue = spec, registry, catalogue
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.ops: list = []
        self.models: dict[str, PlannedModel] = {}
        self.role_types: dict[str, str] = {}  # the composition's declared roles and the model type each takes
        self.plugin_records: dict[str, object] = {}  # namespace -> the spec's plugin settings as its record
        self.failed: set[str] = set(broken_roles)  # roles whose model or a stage already had a problem
        # the trajectory so far
        self.sigma, self.has_prediction = 0.0, False
        self.space: PlannedModel | None = None  # the model whose latent space the latent is in (None: not encoded yet)
        self.start_sigma: float | None = None  # where the first transfer put the trajectory
        self.resume: dict[str, int] = {}  # role -> the level where it stopped
        self.scale = 1.0  # the latents' size relative to the source clip's
        self.size_before_source: float | None = None  # the size to go back to once a source_size model hands over
        self.used_windows = 0
        self.latent = MAIN  # the named latent the fields above describe
        self.latents: dict[str, dict] = {}  # the other named latents' state (LATENT_STATE), kept for later stages
        self.steps_planned = 0  # stages, forks and merges, as their messages number them

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def provides(self, section: str, name: str, where: str, missing: str) -> bool:
        """Whether a loaded plugin provides `name`; if not, a problem at `where`: that two plugins give it, or
        `missing`."""
        if self.catalogue.has(section, name):
            return True
        self.problem(where + (self.catalogue.ambiguity(section, name) or missing))
        return False

    def setting(self, value, where: str):
        """`value`, or the setting it names when it is `$name` (`$namespace.name` for a plugin's)."""
        if not (isinstance(value, str) and value.startswith("$")):
            return value
        name = value[1:]
        if "." in name:
            namespace, key = name.split(".", 1)
            if not self.catalogue.has("settings", namespace):
                self.problem(f"{where}: {value!r} names settings namespace {namespace!r}, which no loaded plugin "
                             f"registers (known: {', '.join(self.catalogue.names('settings')) or 'none'})")
                return None
            settings = self.plugin_records.get(namespace)
            if settings is None:  # its record had a problem, already reported
                return None
            fields = attrs.fields_dict(type(settings))
            if key not in fields:
                self.problem(f"{where}: unknown setting {value!r}; {namespace} has no {key!r}{did_you_mean(key, fields)}")
                return None
            return getattr(settings, key)
        if not hasattr(self.spec.settings, name):
            self.problem(f"{where}: unknown setting {value!r}{did_you_mean(name, attrs.fields_dict(type(self.spec.settings)))}")
            return None
        return getattr(self.spec.settings, name)

    def check_plugin_settings(self) -> None:
        """The spec's `plugin_settings`: known namespaces, each structured as its plugin's record (types, `$.path`
        errors) and checked by the record's own `problems()`."""
        for namespace in self.catalogue.names("settings"):
            record = settings_record(namespace, self.catalogue.get("settings", namespace))
            where = f"$.plugin_settings.{namespace}"
            values, problems = structure_fields(self.spec.plugin_settings.get(namespace, {}), record, where)
            self.problems.extend(problems)
            if problems:
                continue
            settings = record(**values)
            self.problems.extend(f"{where}.{problem}" for problem in getattr(settings, "problems", lambda: [])())
            self.plugin_records[namespace] = settings
        for namespace in self.spec.plugin_settings:
            if not self.catalogue.has("settings", namespace):
                self.problem(f"$.plugin_settings.{namespace}: no loaded plugin registers settings {namespace!r} (known: "
                             f"{', '.join(self.catalogue.names('settings')) or 'none'}); install it or drop the key")

    def plan_step(self, composition: str, step: Step, plan) -> bool:
        """Check one stage, fork or merge of `composition` and, when its shape is right, `plan(index, where)` it;
        False when it had a problem."""
        index = self.steps_planned
        self.steps_planned += 1
        kind = step.model if isinstance(step, Stage) else "fork" if isinstance(step, Fork) else "merge"
        where = f"{composition} stage {index + 1} ({kind})"
        before = len(self.problems)
        self.problems.extend(check_step(step, where, self.role_types))
        if len(self.problems) == before:
            plan(index, where)
        if len(self.problems) > before and isinstance(step, Stage):
            self.failed.add(step.model)
        return len(self.problems) == before

    def stage_on_latent(self, index: int, stage: Stage, where: str, fit: bool, first_level: int | None) -> None:
        """The ops of a stage on the latent it names."""
        if not self.work_on(stage.latent, where):
            return
        first_op = len(self.ops)
        self.stage_ops(index, stage, where, fit, first_level)
        self.ops[first_op:] = [attrs.evolve(op, latent=self.latent) for op in self.ops[first_op:]]

    def take_windows(self) -> tuple[int, ...]:
        """The spec's `stable_steps`, all marked used (a planner placing its windows itself)."""
        windows = tuple(self.spec.settings.stable_steps)
        self.used_windows = len(windows)
        return windows

    def latent_state(self) -> dict:
        return {name: dict(getattr(self, name)) if name == "resume" else getattr(self, name) for name in LATENT_STATE}

    def work_on(self, name: str, where: str) -> bool:
        """Make `name` the latent the next ops work on; False (with a problem) when no fork made it."""
        if name == self.latent:
            return True
        if name not in self.latents:
            self.problem(f"{where}: latent {name!r} does not exist at this point; make it with `{{fork: [{name}]}}` "
                         f"(present: {', '.join([self.latent, *self.latents])})")
            return False
        self.latents[self.latent] = self.latent_state()
        for field, value in self.latents.pop(name).items():
            setattr(self, field, value)
        self.latent = name
        return True

    def fork(self, index: int, copies: tuple[str, ...], where: str) -> None:
        if self.space is None:
            self.problem(f"{where}: a fork copies the present latent, and no model has taken it yet; fork after a "
                         f"stage")
            return
        taken = [name for name in copies if name in self.latents]
        if taken:
            self.problem(f"{where}: latent {taken[0]!r} exists already; fork under another name or merge it first")
            return
        forked = self.latent
        for name in copies[1:]:
            self.latents[name] = self.latent_state()
        self.latent = copies[0]  # the fields describe the first copy now; `forked` is gone unless a copy is named so
        self.ops.append(ForkOp(index, self.space.role, forked, copies, self.sigma))

    def merge(self, index: int, step: Merge, where: str) -> None:
        missing = [name for name in step.merge if name != self.latent and name not in self.latents]
        if missing:
            self.problem(f"{where}: latent {missing[0]!r} does not exist at this point; fork it first")
            return
        if step.into not in step.merge and (step.into == self.latent or step.into in self.latents):
            self.problem(f"{where}: merging into {step.into!r} would drop that latent; merge it too, or merge into "
                         f"another name")
            return
        here = self.latent_state()
        states = {name: here if name == self.latent else self.latents[name] for name in step.merge}
        levels = {name: state["sigma"] for name, state in states.items()}
        if max(levels.values()) - min(levels.values()) > 1e-9 * max(1.0, max(levels.values())):
            self.problem(f"{where}: the latents merged are at different noise levels "
                         f"({', '.join(f'{n} at sigma {v:.4g}' for n, v in levels.items())}); merge them where their "
                         f"stages end at one level")
            return
        spaces = {(state["space"].entry.preset.latent_space.name, state["scale"]) for state in states.values()}
        if len(spaces) > 1:
            self.problem(f"{where}: the latents merged are in different latent spaces or sizes; merge them before a "
                         f"model of another space or size takes one")
            return
        if self.latent not in step.merge:
            self.latents[self.latent] = here
        for name in step.merge:
            self.latents.pop(name, None)
        first = states[step.merge[0]]
        for field, value in first.items():
            setattr(self, field, value)
        self.has_prediction = all(state["has_prediction"] for state in states.values())
        self.latent = step.into
        weights = step.weights or tuple(1 / len(step.merge) for _ in step.merge)
        self.ops.append(MergeOp(index, self.space.role, step.merge, step.into, tuple(weights), self.sigma))

    def model(self, role: str, where: str) -> PlannedModel | None:
        if role in self.models or role in self.failed or EVERY_ROLE <= self.failed:
            return self.models.get(role)
        self.failed.add(role)
        choice = self.spec.models.get(role)
        if choice is None:
            close = did_you_mean(role, self.spec.models, list_all=False) if self.spec.models else ""
            self.problem(f"{where}: the composition uses the {role} model but the spec names none{close}; add "
                         f"models.{role}")
            return None
        try:
            entry = self.registry.get(choice.name)
        except EVSError as exc:
            self.problem(f"$.models.{role}.name: {exc}")
            return None
        needed = self.role_types.get(role)
        if needed is not None and entry.type != needed:
            self.problem(f"$.models.{role}.name: {entry.name!r} is a {entry.type} model but the {role} role needs a "
                         f"{needed} model")
        self.provides("backends", entry.kind, f"$.models.{role}.name: ",
                      f"model {entry.name!r} needs backend {entry.kind!r}, which no loaded plugin provides; install its "
                      f"plugin (`evs plugins` lists what is loaded)")
        sampler_name = choice.sampler or entry.preset.sampler
        where_sampler = f"$.models.{role}.sampler: " if choice.sampler else f"$.models.{role}.name: "
        if not self.provides("samplers", sampler_name, where_sampler,
                             ("" if choice.sampler else f"model {entry.name!r} needs ")
                             + f"sampler {sampler_name!r}, which no loaded plugin provides; use one of "
                             f"{', '.join(self.catalogue.names('samplers'))} or install its plugin (`evs plugins` lists "
                             f"what is loaded)"):
            return None
        sampler = self.catalogue.get("samplers", sampler_name)
        problems = unknown_parameters(f"sampler {sampler_name!r}", sampler.parameters, choice.sampler_params,
                                      f"$.models.{role}.sampler_params")
        if problems:
            self.problems.extend(problems)
            return None
        preset = entry.preset
        for section, name, what in (("noise_schedules", preset.schedule, "noise schedule"),
                                    ("prediction_types", preset.prediction, "prediction type")):
            if not self.provides(section, name, f"$.models.{role}.name: ",
                                 f"model {entry.name!r} needs {what} {name!r}, which no loaded plugin provides; use one "
                                 f"of {', '.join(self.catalogue.names(section))} or install its plugin"):
                return None
        try:
            noise_schedule = self.catalogue.get("noise_schedules", preset.schedule)(preset)
        except ValueError as exc:
            self.problem(f"$.models.{role}.name: model {entry.name!r}'s preset: {exc}")
            return None
        try:
            schedule = preset.sampling(noise_schedule, choice.steps)
            schedule.levels  # noqa: B018 - computing it validates the step count
        except ValueError as exc:
            self.problem(f"$.models.{role}.steps: {exc}")
            return None
        guidance = choice.guidance if choice.guidance is not None else entry.preset.guidance
        context = self.context(role, entry, choice.context)
        self.models[role] = PlannedModel(role, entry, choice, schedule, guidance, sampler_name,
                                         {**sampler.parameters, **choice.sampler_params}, context)
        self.failed.discard(role)
        return self.models[role]

    def context(self, role: str, entry, choice: ContextChoice) -> Context | None:
        """The windows a motion model runs long clips in; None for a model that sees frames one by one."""
        preset, where = entry.preset, f"$.models.{role}.context"
        if preset.frame_window is None:
            if choice != ContextChoice():
                self.problem(f"{where}: {entry.name} sees frames one by one, so it needs no context windows; drop it")
            return None
        if preset.latent_space.temporal > 1:
            self.problem(f"{where}: {entry.name}'s latents pack {preset.latent_space.temporal} frames each; context "
                         f"windows work on frame-wise latents only")
            return None
        frames = choice.frames or preset.context_frames or preset.frame_window
        if frames > preset.frame_window:
            self.problem(f"{where}.frames: {frames}, but {entry.name}'s motion module sees at most "
                         f"{preset.frame_window} frames at once; give {preset.frame_window} or fewer")
            return None
        overlap = choice.overlap if choice.overlap is not None else frames // 4
        if overlap >= frames:
            self.problem(f"{where}.overlap: {overlap} is not less than the window's {frames} frames; give fewer")
            return None
        return Context(frames, overlap)

    def check_models(self) -> None:
        for role in self.spec.models:
            self.model(role, f"$.models.{role}")

    def plan(self, composition: Composition) -> Plan:
        self.role_types = dict(composition.roles)
        self.check_plugin_settings()
        if self.problems:  # the stages would be planned from settings the spec did not set: only the models are checked
            self.check_models()
            raise PlanError(self.problems)
        builder = PlanBuilder(self, composition.name)
        if composition.planner is not None:
            composition.planner(builder)
        else:
            compile_stages(composition, builder)

        windows = self.spec.settings.stable_steps
        planned = not self.failed and not self.problems  # else these would only echo the problems found
        if planned and not self.steps_planned:
            self.problem(f"{composition.name}: the planner emitted no stage")
        if planned and self.latents:
            self.problem(f"{composition.name}: latent(s) {', '.join(self.latents)} are never merged; merge every "
                         f"branch back, or drop its fork")
        if planned and self.sigma != 0.0:
            self.problem(f"{composition.name}: the last stage stops at sigma {self.sigma:.4g} with noise left; "
                         f"let the last stage run to `stop: end`")
        if planned and self.used_windows < len(windows):
            if any(s.stop == "window" for s in composition.model_stages) or self.used_windows:
                self.problem(f"$.settings.stable_steps: {len(windows)} windows given but composition {composition.name} "
                             f"switches models at {self.used_windows}; drop the extra entries")
            else:
                self.notes.append(f"stable_steps {list(windows)} unused: composition {composition.name} has no window")
        if self.problems:
            raise PlanError(self.problems)
        return Plan(composition.name, self.models, tuple(self.ops), tuple(self.notes), self.spec.settings.inversion_guidance)

    def stage_ops(self, index: int, stage: Stage, where: str, fit: bool = False, first_level: int | None = None) -> None:
        """The ops of one stage. `fit` (as in a cycle): a `steps: N` beyond what the model has left runs to its end,
        and a `start: current` stage whose model has no level left is skipped with a note."""
        model = self.model(stage.model, where)
        enter, start, steps = (self.setting(v, where) for v in (stage.enter, stage.start, stage.steps))
        if model is None or enter is None or start is None:
            return
        schedule, total = model.schedule, model.schedule.steps

        if first_level is not None:
            if not 0 <= first_level < total:
                self.problem(f"{where}: level {first_level} is not one of the model's levels 0..{total - 1}")
                return
            first = first_level
        elif start == "resume":
            if stage.model not in self.resume:
                if stage.model not in self.failed:
                    self.problem(f"{where}: starts with `resume` but the {stage.model} model has not run yet")
                return
            first = self.resume[stage.model]
        elif start == "current":
            if not self.has_prediction:
                self.problem(f"{where}: `start: current` continues at the trajectory's noise level, but no model has "
                             f"run yet; give a strength")
                return
            first = schedule.level_at_or_below(self.sigma)
        elif isinstance(start, (int, float)) and 0 < start <= 1:
            first = schedule.start_level(start)
        else:
            self.problem(f"{where}: start {start!r} must be a strength in (0, 1], `resume` or `current`")
            return
        if first == total and fit and start == "current":
            self.notes.append(f"{where}: skipped: {model.entry.name} has no level at or below sigma {self.sigma:.4g}")
            return
        if first == total:
            if isinstance(start, (int, float)):
                fix = f"raise it to at least {1 / total:.3g}"
            elif start == "resume" and self.used_windows:
                fix = (f"the model has already run to its end: $.settings.stable_steps[{self.used_windows - 1}]="
                       f"{self.spec.settings.stable_steps[self.used_windows - 1]} leaves it no step after the window; "
                       f"give at least 1")
            else:
                fix = "the model has already run to its end"
            self.problem(f"{where}: start {start!r} leaves none of the model's {total} steps to run; {fix}")
            return
        # `current` between two of the model's levels: its first step is evaluated at the present sigma itself
        entry = self.sigma if (start == "current" and first_level is None
                               and schedule.levels[first] < self.sigma * (1 - 1e-9)) else None
        extra = 0 if entry is None else 1  # that step comes before the model's level `first`

        windows = self.spec.settings.stable_steps
        if steps == 0:  # a transfer alone: the trajectory moves to the level, no model step follows
            self.enter(index, model, enter, first, stage, where, entry)
            self.sigma, self.has_prediction = schedule.levels[first] if entry is None else entry, False
            return
        if steps is not None:
            stop = first + steps - extra if isinstance(steps, int) else -1
            if fit and stop > total:
                stop = total
            if stop - first + extra < 1 or stop > total:
                asked = f"{setting_path(stage.steps)}={steps}" if isinstance(stage.steps, str) else str(steps)
                self.problem(f"{where}: {asked} steps, but only {total - first + extra} of the model's {total} "
                             f"steps remain from level {first} (t={schedule.timesteps[first]}); lower it or raise the strength")
                return
        elif stage.stop == "window" and self.used_windows < len(windows):
            k = self.used_windows
            self.used_windows += 1
            stop = total - windows[k]
            if stop - first + extra < 1:
                if start == "resume":
                    self.problem(f"{where}: windows overlap: $.settings.stable_steps[{k}]={windows[k]} leaves no step "
                                 f"after the previous window (stable_steps[{k - 1}]={windows[k - 1]}); list stable_steps in strictly "
                                 f"decreasing order")
                else:
                    self.problem(f"{where}: $.settings.stable_steps[{k}]={windows[k]} must be smaller than the {total - first} "
                                 f"steps the model runs ({total} steps x strength {start}); lower it")
                return
        else:
            stop = total

        self.enter(index, model, enter, first, stage, where, entry)
        # a resumed model picks up at its own next level, and `current` at the present one, by design
        if start not in ("resume", "current") and first_level is None and self.ops and isinstance(self.ops[-1], TransferOp):
            self.note_level_jump(where, model, self.ops[-1].sigma_to)
        sigmas = schedule.levels[first:stop + 1]
        timesteps = schedule.timesteps[first:stop]
        if entry is not None:
            sigmas, timesteps = (entry, *sigmas), (schedule.train.timestep_at(entry), *timesteps)
        if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
            self.problem(f"{where}: sigma does not decrease over levels {first}..{stop} ({sigmas}); "
                         f"use fewer steps or another spacing")
        guidance = None if stage.guidance is None else self.setting(stage.guidance, where)
        if guidance is not None and not isinstance(guidance, (int, float)):
            self.problem(f"{where}: guidance {guidance!r} must be a number")
            return
        sampler = self.catalogue.get("samplers", model.sampler)
        per_call = model.calls_per_step if guidance is None else calls_per_evaluation(guidance)
        calls = sampler.calls(tuple(sigmas), model.sampler_params) * per_call
        self.ops.append(DenoiseOp(index, stage.model, model.sampler, first, stop, tuple(sigmas), tuple(timesteps), calls,
                                  model.sampler_params, None if guidance is None else float(guidance)))
        off_trained = untrained_timesteps(model.entry.preset, timesteps)
        if off_trained:
            self.notes.append(f"{where}: {model.entry.name} steps at t={list(off_trained)} are not among the timesteps it "
                              f"was distilled on ({list(model.entry.preset.trained_timesteps)}); expect weaker results, "
                              f"or use its default step count")
        self.resume[stage.model] = stop
        self.sigma, self.has_prediction = sigmas[-1], True

    def enter(self, index: int, model: PlannedModel, mode: str, first: int, stage: Stage, where: str,
              entry: float | None = None) -> None:
        """Ops that bring the trajectory onto `model`'s level `first` (or to sigma `entry`, above it, where the model
        enters off its grid): a conversion when it leaves another latent space, a resize to the size it works at
        (evs_framework.spec.ModelChoice) and the stage's latent ops, then a transfer."""
        converted = self.convert_to(index, model, where)
        upscaled = self.resize_for(index, model, where)
        for op in stage.ops:
            self.provides("latent_ops", op.name, f"{where}: ",
                          f"unknown latent op {op.name!r}; use one of {', '.join(self.catalogue.names('latent_ops'))} "
                          f"or install its plugin")
            self.ops.append(LatentOp(index, model.role, op.name, {k: self.setting(v, where) for k, v in op.params.items()}))
        # a latent op or a conversion replaces the clean estimate: the noise prediction is gone
        changed = upscaled or bool(stage.ops) or converted
        has_prediction = self.has_prediction and not changed
        if mode == "ddim":  # the original configs' word: invert from a clean latent, else re-use the predicted noise
            mode = "ddim_renoise" if has_prediction else "ddim_inversion"
            if upscaled and self.has_prediction and not converted and not stage.ops:
                self.notes.append(f"{where}: the latents are resized for {model.entry.name}, which discards the noise "
                                  f"prediction, so invert mode ddim is a DDIM inversion here (a model call per level); "
                                  f"random costs no call")
        if not self.provides("transfers", mode, f"{where}: ", f"unknown transfer (invert mode) {mode!r}; use ddim or "
                             f"one of {', '.join(self.catalogue.names('transfers'))}"):
            return
        transfer = self.catalogue.get("transfers", mode)
        if transfer.needs_noise_prediction and not has_prediction:
            why = ("it was left in another latent space" if converted else
                   "the latent was just changed by a latent op, which discards it" if changed else "no model has run yet")
            self.problem(f"{where}: transfer {mode!r} needs a noise prediction but {why}; use random or ddim_inversion")
        given = {k: self.setting(v, where) for k, v in stage.transfer_params.items()}
        self.problems.extend(unknown_parameters(f"transfer {mode!r}", transfer.parameters, given, f"{where}: transfer_params"))
        schedule = model.schedule
        levels = tuple(reversed(schedule.levels[first:])) + (() if entry is None else (entry,))
        params = {**transfer.parameters, **given}
        guidance = self.spec.settings.inversion_guidance if params.get("guidance") is None else params["guidance"]
        sigma_from = 0.0 if changed else self.sigma  # the executor hands a changed latent over as clean
        evaluations = transfer.evaluations(levels, sigma_from, params)
        self.ops.append(TransferOp(index, model.role, mode, first, sigma_from, levels[-1], levels,
                                   evaluations * calls_per_evaluation(guidance), params, evaluations))

    def resize_for(self, index: int, model: PlannedModel, where: str) -> bool:
        """An `upscale` latent op when `model` works at another size than the latents have: its own `upscale` on its
        first stage, the source size for a `source_size` model, and the size the trajectory had before a
        `source_size` model took over for the next model; True when added."""
        choice = model.choice
        if choice.source_size:
            self.size_before_source = self.scale if self.size_before_source is None else self.size_before_source
            target = 1.0
        else:
            base = self.scale if self.size_before_source is None else self.size_before_source
            self.size_before_source = None
            target = base * (choice.upscale if model.role not in self.resume else 1.0)
        if abs(target - self.scale) < 1e-9:
            return False
        factor, self.scale = target / self.scale, target
        self.ops.append(LatentOp(index, model.role, "upscale", {"factor": factor, "mode": choice.upscale_mode}))
        self.provides("latent_ops", "upscale", f"{where}: ",
                      "resizing latents needs latent op 'upscale', which no loaded plugin provides")
        return True

    def convert_to(self, index: int, model: PlannedModel, where: str) -> bool:
        """A ConvertOp when `model` works in another latent space than the one the latent is in; True when added."""
        present, self.space = self.space, model
        if present is None:
            return False
        source, target = present.entry.preset.latent_space, model.entry.preset.latent_space
        if source.name == target.name:
            return False
        converter = converter_between(self.catalogue, source.name, target.name)
        if converter is None:
            name, cost = VAE_ROUND_TRIP, f"decode with {present.entry.name}'s VAE, encode with {model.entry.name}'s"
        else:
            name, cost = converter.name, converter.cost
        self.ops.append(ConvertOp(index, model.role, present.role, name, source.name, target.name, cost))
        return True

    def note_level_jump(self, where: str, model: PlannedModel, sigma_to: float) -> None:
        """Hand-overs that are legal but probably not meant: below the current level, or far above the start."""
        if self.start_sigma is None:
            self.start_sigma = sigma_to
            return
        if sigma_to < self.sigma:
            self.notes.append(f"{where}: warning: {model.entry.name} enters at sigma {sigma_to:.4f}, below the current "
                              f"{self.sigma:.4f}, so the hand-over removes noise without a model step; raise the stage's "
                              f"strength if that is not meant")
        elif sigma_to > RENOISE_WARNING * self.start_sigma:
            self.notes.append(f"{where}: warning: {model.entry.name} re-noises to sigma {sigma_to:.4f}, "
                              f"{sigma_to / self.start_sigma:.1f}x the level the trajectory started at "
                              f"({self.start_sigma:.4f}), discarding more of the source than the first stage did; "
                              f"lower the stage's strength if that is not meant")


def settings_record(namespace: str, registered) -> type:
    """The attrs record a plugin registered for its settings; a dict of scalar defaults (the short form) becomes
    one with a field of each default's type."""
    if attrs.has(registered):
        return registered
    return _shorthand_record(namespace, tuple(registered.items()))


@functools.cache
def _shorthand_record(namespace: str, defaults: tuple) -> type:
    return attrs.make_class(f"{namespace}_settings", {name: attrs.field(default=value, type=type(value))
                                                      for name, value in defaults}, frozen=True)


MAX_CYCLES = 10_000  # a cycle that has not finished by then is a bug in the composition


class PlanBuilder:
    """What a composition's planner function works with: the spec's settings, where the trajectory is, and
    `stage()`, which plans one stage exactly as a stage of a composition file (same checks, same counts)."""

    def __init__(self, planner: _Planner, composition: str):
        self._planner, self.composition = planner, composition

    @property
    def settings(self):
        return self._planner.spec.settings

    def setting(self, name: str):
        """A setting by name, as `$name` reads it in a composition file (`plugin.key` for a plugin's)."""
        return self._planner.setting(f"${name}", f"{self.composition}: setting")

    def windows(self) -> tuple[int, ...]:
        """The spec's `stable_steps` (steps left when each window opens), for a planner that places windows itself;
        asking marks them used."""
        return self._planner.take_windows()

    @property
    def sigma(self) -> float:
        """The trajectory's noise level now (0.0 before the first stage)."""
        return self._planner.sigma

    def total_steps(self, role: str) -> int | None:
        model = self._planner.model(role, f"{self.composition}: {role}")
        return None if model is None else model.schedule.steps

    def remaining(self, role: str) -> int | None:
        """Steps the role's model has left after where it last stopped; None before it has run."""
        stop = self._planner.resume.get(role)
        total = self.total_steps(role)
        return None if stop is None or total is None else total - stop

    @property
    def failed(self) -> bool:
        """True once a problem was found (a planner may stop early then; the problems are reported either way)."""
        return bool(self._planner.problems)

    def problem(self, text: str) -> None:
        self._planner.problem(f"{self.composition}: {text}")

    def levels(self, role: str) -> tuple[float, ...]:
        """The role's model's noise levels, from its first step's down to 0.0 (empty when it cannot be planned)."""
        model = self._planner.model(role, f"{self.composition}: {role}")
        return () if model is None else model.schedule.levels

    def step(self, step: Step, fit: bool = False) -> bool:
        """Plan a stage, a fork or a merge of a composition file; False when it had a problem."""
        if isinstance(step, Stage):
            return self.stage(step, fit)
        return self.fork(*step.fork) if isinstance(step, Fork) else self.merge(*step.merge, into=step.into,
                                                                              weights=step.weights)

    def fork(self, *copies: str) -> bool:
        """Copies of the present latent under these names, for stages with `latent=` to work on."""
        return self._planner.plan_step(self.composition, Fork(copies),
                                       lambda index, where: self._planner.fork(index, copies, where))

    def merge(self, *merged: str, into: str = MAIN, weights: tuple[float, ...] | None = None) -> bool:
        """The named latents (at one noise level) joined into `into`: their mean, or weighted by `weights`."""
        step = Merge(merged, into, None if weights is None else tuple(weights))
        return self._planner.plan_step(self.composition, step,
                                       lambda index, where: self._planner.merge(index, step, where))

    def stage(self, stage: Stage, fit: bool = False, first_level: int | None = None) -> bool:
        """Plan one stage; False when it had a problem. `fit`: fit the stage to what its model has left (`steps: N`
        past the model's end stops there; a `start: current` stage with no level left is skipped, with a note).
        `first_level` starts it at that level of its model's schedule, whatever `start` says. A stage of
        `steps: 0` is its transfer alone."""
        return self._planner.plan_step(self.composition, stage, lambda index, where: self._planner.stage_on_latent(
            index, stage, where, fit, first_level))


def compile_stages(composition: Composition, builder: PlanBuilder) -> None:
    """A composition file as a planner: its stages, its per-window stages once per `stable_steps` entry, then its
    cycle until the cycle's `until` model has run to its end."""
    windows = builder.settings.stable_steps
    stops = sum(isinstance(stage, Stage) and stage.stop == "window" for stage in composition.stages)
    if stops > len(windows):
        builder.problem(f"its stages switch models at {stops} windows but $.settings.stable_steps has {len(windows)} "
                        f"({list(windows)}); give {stops} entries, the steps left at each switch")
        return
    for step in composition.stages:
        builder.step(step)
    for _ in windows if composition.per_window else ():
        for step in composition.per_window:
            builder.step(step)
    cycle = composition.cycle
    if cycle is None:
        return
    for _ in range(MAX_CYCLES):
        left = builder.remaining(cycle.until)
        if left == 0 or builder.failed:
            return
        for step in cycle.stages:
            builder.step(step, fit=True)
        if builder.remaining(cycle.until) == left:
            builder.problem(f"the cycle does not advance the {cycle.until} model; give its stage in the cycle `steps`")
            return
    builder.problem(f"the cycle ran {MAX_CYCLES} times without the {cycle.until} model finishing")


def make_plan(spec: Spec, registry: Registry, plugins: Plugins, context=None, broken_roles=frozenset(),
              extras: bool = True) -> Plan:
    """The checked plan of `spec`, with what plugins add to it (`context`, a LoadContext, lets them read configs).

    `broken_roles` are roles whose model the spec could not name (already reported): they are not planned, and the
    plan, missing their stages, gets no extras. `extras=False` leaves the plugins' extras out (for a spec with
    problems, whose values they would compute with).
    """
    planner = _Planner(spec, registry, plugins.catalogue, broken_roles)
    plan = planner.plan(resolve_composition(spec, plugins.catalogue))
    if not extras or planner.failed:
        return plan
    found = [extra for extra in plugins.hook.plan_extras(spec=spec, plan=plan, context=context) if extra is not None]
    return attrs.evolve(plan, extras=tuple(found))


def model_problems(spec: Spec, registry: Registry, plugins: Plugins, broken_roles=frozenset()) -> list[str]:
    """The problems of the spec's models alone (names, backends, samplers, steps), for a spec whose stages cannot be
    planned because a setting they read is bad."""
    planner = _Planner(spec, registry, plugins.catalogue, broken_roles)
    planner.check_models()
    return planner.problems


def video_plans(spec: Spec, plan: Plan, registry: Registry, plugins: Plugins, context=None) -> dict:
    """The plan each video runs, by its settings: `plan` for the spec's own (key None), and the spec's plan with a
    video's settings for each video that has its own (a manifest's `settings`); every problem of those plans at
    once, each naming its video."""
    plans, problems = {None: plan}, []
    for item in spec.inputs:
        if item.settings is None or item.settings in plans:
            continue
        try:
            plans[item.settings] = make_plan(attrs.evolve(spec, settings=item.settings), registry, plugins, context)
        except PlanError as exc:
            problems += [f"video {item.video.name} (its own settings): {problem}" for problem in exc.problems]
    if problems:
        raise PlanError(problems)
    return plans
