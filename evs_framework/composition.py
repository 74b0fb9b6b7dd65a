"""Compositions: which model denoises which part of the trajectory, as data or as a planner function.

As data, a composition is a list of stages, then `per_window` stages repeated once for each entry of the
`stable_steps` setting, then a `cycle` of stages repeated until its `until` model has run to its end. A value
written `$name` is read from the spec's settings (`$plugin.name` from a plugin's settings), so one
composition file serves every config. A plugin may instead register a composition with a `planner`: a function
given an `evs_framework.planner.PlanBuilder` that emits the stages itself (loops, branches, anything), and is planned,
counted and checked exactly as data is.

A composition declares its `roles`: each a name that a spec's `models` maps to a registry model, with the type of
model it takes (`t2i`, frames one by one; `t2v`, the whole clip). A file without `roles` takes its stages' models
as roles of any type.

Each stage says:
- `model`: the role that denoises;
- `enter`: the transfer strategy that moves the latent onto this model's noise level (`random`,
  `ddim_inversion`, `ddim_renoise`, or `ddim`, which means inversion from a clean latent and re-noising
  with the predicted noise mid-trajectory);
- `start`: a strength in (0, 1] (the fraction of the model's schedule to run, as in img2img), `resume`
  to continue where this model last stopped, or `current` to start at the model's first level at or below
  the trajectory's present noise level;
- how far to go: `steps: N` steps (0: the transfer alone), or `stop: window` (until `stable_steps[k]` steps of this model remain,
  k counting the windows used so far; to the end once none are left) or `stop: end`;
- `latent`: the named latent it works on (default `main`, the trajectory from the input);
- optionally `ops`: latent ops (`{name: upscale, params: {factor: 2}}`) applied to the clean estimate before
  the transfer, `transfer_params`: parameters of the `enter` transfer, and `guidance`: the stage's own
  classifier-free guidance scale.

Between stages, the trajectory can branch and join: `{fork: [a, b]}` replaces the present latent by copies (with its
noise level and prediction) under the names given (one may keep its name), stages with `latent: a` work on a copy, and `{merge: [a, b]}` (into
`main` unless `into` says otherwise; the mean unless `weights` are given) joins copies at one noise level into one
latent. Copies cost no model call; each branch's stages cost what they would on the trajectory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import attrs
from evs_framework.convert import CONVERTER, structure
from evs_framework.datafile import read_data_file
from evs_framework.errors import SpecError, did_you_mean, short_repr

ROLE_TYPES = ("t2i", "t2v")
ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,63}")
MAIN = "main"  # the latent the trajectory starts with: the input, encoded
STOPS = ("window", "end")
STARTS = ("resume", "current")


@attrs.frozen
class StageOp:
    """A latent op (`register_latent_ops`) by name, with its parameters."""

    name: str
    params: dict[str, float | int | str] = attrs.field(factory=dict)


@attrs.frozen
class Stage:
    model: str
    enter: str
    start: float | str
    stop: str | None = None
    steps: int | str | None = None
    ops: tuple[StageOp, ...] = ()
    transfer_params: dict[str, float | int | str] = attrs.field(factory=dict)
    guidance: float | str | None = None  # this stage's classifier-free guidance, instead of the model's
    latent: str = MAIN  # the named latent the stage works on


@attrs.frozen
class Fork:
    """The present latent replaced by copies under these names."""

    fork: tuple[str, ...]


@attrs.frozen
class Merge:
    """The named latents, all at one noise level, joined into `into`: their weighted mean (`weights` sum to 1;
    default equal), of the latents and of their clean estimates and noise predictions alike."""

    merge: tuple[str, ...]
    into: str = MAIN
    weights: tuple[float, ...] | None = None


Step = Stage | Fork | Merge


def _structure_step(value, _):
    if isinstance(value, dict) and "fork" in value:
        return CONVERTER.structure(value, Fork)
    if isinstance(value, dict) and "merge" in value:
        return CONVERTER.structure(value, Merge)
    return CONVERTER.structure(value, Stage)


CONVERTER.register_structure_hook(Step, _structure_step)


@attrs.frozen
class Cycle:
    """Stages repeated until the `until` model has run to its end (a cycle's `steps` are cut to what remains)."""

    until: str
    stages: tuple[Step, ...]


@attrs.frozen
class Composition:
    name: str = "inline"
    description: str = ""
    roles: dict[str, str] = attrs.field(factory=dict)  # role -> the model type it takes; empty: the stages' models
    stages: tuple[Step, ...] = ()
    per_window: tuple[Step, ...] = ()
    cycle: Cycle | None = None
    # a function of an evs_framework.planner.PlanBuilder that emits the stages instead (for plugins; not in YAML)
    planner: Callable | None = attrs.field(default=None, eq=False)

    @property
    def all_stages(self) -> tuple[Step, ...]:
        return self.stages + self.per_window + (self.cycle.stages if self.cycle else ())

    @property
    def model_stages(self) -> tuple[Stage, ...]:
        """The stages that run a model (not the forks and merges)."""
        return tuple(s for s in self.all_stages if isinstance(s, Stage))

    @property
    def role_names(self) -> tuple[str, ...]:
        """The declared roles, else the roles its stages name, in order of first use."""
        if self.roles:
            return tuple(self.roles)
        return tuple(dict.fromkeys(s.model for s in self.model_stages if not s.model.startswith("$")))


def check_composition(composition: Composition, path: str = "$") -> list[str]:
    """Problems in the composition's own shape (values that come from settings are checked by the planner)."""
    problems = []
    if not NAME.fullmatch(composition.name):
        problems.append(f"{path}.name: {short_repr(composition.name)} goes into output file names; use letters, digits "
                        f"and _ . + - only")
    for role, kind in composition.roles.items():
        if not ROLE_NAME.fullmatch(str(role)):
            problems.append(f"{path}.roles.{role}: a role is a name of letters, digits and _ that a spec's `models` "
                            f"maps to a model")
        if kind not in ROLE_TYPES:
            problems.append(f"{path}.roles.{role}: {short_repr(kind)} is not a model type; use one of "
                            f"{', '.join(ROLE_TYPES)}")
    if composition.planner is not None:
        if composition.all_stages:
            problems.append(f"{path}: a composition has a planner or stages, not both")
        return problems
    if not composition.stages:
        problems.append(f"{path}.stages: a composition needs at least one stage")
    groups = [("stages", composition.stages), ("per_window", composition.per_window)]
    if composition.cycle is not None:
        groups.append(("cycle.stages", composition.cycle.stages))
        if not composition.cycle.stages:
            problems.append(f"{path}.cycle.stages: a cycle needs at least one stage")
        if composition.cycle.until not in {s.model for s in composition.cycle.stages if isinstance(s, Stage)}:
            problems.append(f"{path}.cycle.until: {composition.cycle.until!r} must be the model of one of the cycle's "
                            f"stages, or the cycle could never end")
    for group, stages in groups:
        for i, stage in enumerate(stages):
            problems += check_step(stage, f"{path}.{group}[{i}]", composition.roles)
    return problems


def check_step(step: Step, where: str, roles: dict[str, str]) -> list[str]:
    """Problems in one stage's, fork's or merge's shape."""
    if isinstance(step, Stage):
        return check_stage(step, where, roles)
    names = step.fork if isinstance(step, Fork) else step.merge
    key = "fork" if isinstance(step, Fork) else "merge"
    problems = [f"{where}.{key}: {short_repr(name)} is not a latent name; use letters, digits and _"
                for name in names if not ROLE_NAME.fullmatch(name)]
    if len(set(names)) != len(names):
        problems.append(f"{where}.{key}: {list(names)} names a latent twice")
    if isinstance(step, Merge):
        if len(names) < 2:
            problems.append(f"{where}.merge: {list(names)}; a merge joins at least two latents")
        if step.weights is not None and (len(step.weights) != len(names) or any(w < 0 for w in step.weights)
                                         or abs(sum(step.weights) - 1) > 1e-6):
            problems.append(f"{where}.weights: {list(step.weights)}; give one non-negative weight per merged latent, "
                            f"summing to 1")
    elif not names:
        problems.append(f"{where}.fork: give the names of the copies")
    return problems


def check_stage(stage: Stage, where: str, roles: dict[str, str]) -> list[str]:
    """Problems in one stage's shape; `roles`: the composition's declared ones (empty: any role name)."""
    problems = [] if ROLE_NAME.fullmatch(stage.latent) else [
        f"{where}.latent: {short_repr(stage.latent)} is not a latent name; use letters, digits and _"]
    if roles and stage.model not in roles and not stage.model.startswith("$"):
        problems.append(f"{where}.model: {stage.model!r} is not a role of this composition"
                        f"{did_you_mean(stage.model, roles, list_all=False)}; use one of {', '.join(roles)}")
    elif not roles and not ROLE_NAME.fullmatch(stage.model.removeprefix("$")):
        problems.append(f"{where}.model: {short_repr(stage.model)} is not a role name; use letters, digits and _")
    if (stage.stop is None) == (stage.steps is None):
        problems.append(f"{where}: give exactly one of `stop` ({' or '.join(STOPS)}) and `steps`")
    if stage.stop is not None and stage.stop not in STOPS:
        problems.append(f"{where}.stop: {stage.stop!r} is not one of {', '.join(STOPS)}")
    if isinstance(stage.start, str) and stage.start not in STARTS and not stage.start.startswith("$"):
        problems.append(f"{where}.start: use a strength in (0, 1], `resume`, `current`, or a `$setting`")
    return problems


def parse_composition(data: dict, name: str, source: str, path: str = "$") -> Composition:
    if not isinstance(data, dict):
        raise SpecError([f"{path}: a composition is a mapping with `stages` (and optionally `per_window`, `cycle`)"],
                        source)
    if "planner" in data:
        raise SpecError([f"{path}.planner: a planner is a Python function a plugin registers (register_compositions); "
                         f"a composition file gives `stages`"], source)
    composition = structure({"name": name, **data}, Composition, source, path)
    problems = check_composition(composition, path)
    if problems:
        raise SpecError(problems, source)
    return composition


def load_composition_file(file: Path) -> Composition:
    return parse_composition(read_data_file(file, "composition"), Path(file).stem, str(file))
