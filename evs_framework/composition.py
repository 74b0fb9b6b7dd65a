"""Compositions: which model denoises which part of the trajectory, as data.

A composition is a list of stages, then `per_window` stages repeated once for each entry of the
`stable_steps` setting. A value written `$name` is read from the spec's settings, so one composition file
serves every config.

Each stage says:
- `model`: the role that denoises (`idm`, the T2I model on frames; `vdm`, the T2V model on the clip);
- `enter`: the transfer strategy that moves the latent onto this model's noise level (`random`,
  `ddim_inversion`, `ddim_renoise`, or `ddim`, which means inversion from a clean latent and re-noising
  with the predicted noise mid-trajectory);
- `start`: a strength in (0, 1] (the fraction of the model's schedule to run, as in img2img), or `resume`
  to continue where this model last stopped;
- how far to go: `steps: N` steps, or `stop: window` (until `stable_steps[k]` steps of this model remain,
  k counting the windows used so far; to the end once none are left) or `stop: end`.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
from evs_framework.convert import structure
from evs_framework.datafile import read_data_file
from evs_framework.errors import SpecError, short_repr

ROLES = ("idm", "vdm")
NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,63}")
STOPS = ("window", "end")


@attrs.frozen
class Stage:
    model: str
    enter: str
    start: float | str
    stop: str | None = None
    steps: int | str | None = None


@attrs.frozen
class Composition:
    name: str = "inline"
    description: str = ""
    stages: tuple[Stage, ...] = ()
    per_window: tuple[Stage, ...] = ()

    @property
    def switches_models(self) -> bool:
        return len({s.model for s in self.stages + self.per_window}) > 1


def check_composition(composition: Composition, path: str = "$") -> list[str]:
    """Problems in the composition's own shape (values that come from settings are checked by the planner)."""
    problems = []
    if not NAME.fullmatch(composition.name):
        problems.append(f"{path}.name: {short_repr(composition.name)} goes into output file names; use letters, digits "
                        f"and _ . + - only")
    if not composition.stages:
        problems.append(f"{path}.stages: a composition needs at least one stage")
    for group in ("stages", "per_window"):
        for i, stage in enumerate(getattr(composition, group)):
            where = f"{path}.{group}[{i}]"
            if stage.model not in ROLES and not stage.model.startswith("$"):
                problems.append(f"{where}.model: {stage.model!r} is not a role; use one of {', '.join(ROLES)}")
            if (stage.stop is None) == (stage.steps is None):
                problems.append(f"{where}: give exactly one of `stop` ({' or '.join(STOPS)}) and `steps`")
            if stage.stop is not None and stage.stop not in STOPS:
                problems.append(f"{where}.stop: {stage.stop!r} is not one of {', '.join(STOPS)}")
            if isinstance(stage.start, str) and stage.start != "resume" and not stage.start.startswith("$"):
                problems.append(f"{where}.start: use a strength in (0, 1], `resume`, or a `$setting`")
    return problems


def parse_composition(data: dict, name: str, source: str, path: str = "$") -> Composition:
    if not isinstance(data, dict):
        raise SpecError([f"{path}: a composition is a mapping with `stages` (and optionally `per_window`)"], source)
    composition = structure({"name": name, **data}, Composition, source, path)
    problems = check_composition(composition, path)
    if problems:
        raise SpecError(problems, source)
    return composition


def load_composition_file(file: Path) -> Composition:
    return parse_composition(read_data_file(file, "composition"), Path(file).stem, str(file))
