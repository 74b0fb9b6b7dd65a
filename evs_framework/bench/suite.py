"""A bench suite file: which clips, which models, which compositions under which settings and seeds, and what to
summarise, checked as a spec is (every problem at once, each with its `$.path`) before anything is run.

```yaml
inputs: {toyworld: {clips: 32, kind: degraded}}   # or a list of {video, prompt}, or {manifest: clips.csv}
models: {idm: {name: toyI}, vdm: {name: toyV}}
compositions: [IDM, IDM_VDM_IDM]
settings: {stable_num: 2}                          # the base settings of every run
grid: {stable_num: [1, 2, 4]}                      # every combination; a list of mappings: one grid after another
seeds: [23, 24]
measures: [psnr, warp_error]                       # default: every measure the rows have
baseline: IDM                                      # a row label, or `source` (the inputs themselves)
```
"""

from __future__ import annotations

import itertools
from importlib.resources import files
from pathlib import Path
from typing import Any

import attrs

from evs_framework.convert import CONVERTER, TYPE_WORDS, structure_fields
from evs_framework.datafile import read_data_file
from evs_framework.errors import PlanError, SpecError, did_you_mean, written
from evs_framework.paths import resolved
from evs_framework.planner import make_plan
from evs_framework.spec import Settings, VideoOptions, overridden_settings, parse_spec, settings_problems

SHIPPED_SUITES = Path(str(files("evs_framework") / "data" / "suites"))  # a link to bench/suites in a checkout
TOY_KINDS = ("degraded", "vc2", "edit", "real_edit", "style")  # toyworld/experiment.py, toyworld/edits.py
SOURCE = "source"  # the label of the rows that measure the inputs themselves
GRID_SPEC_KEYS = {"using_attn": bool}  # spec keys a grid may vary beside the composition settings
PLACEHOLDER_INPUT = [{"video": "planned.mp4", "prompt": "planned"}]  # the plan does not read its videos


@attrs.frozen
class ToyworldSource:
    """Held-out toy-world clips: `degraded` ones with their truth, `vc2` ones drawn by toyVC without one, or clips
    with a change to make (`edit`, `real_edit`, `style`: toyworld/edits.py) measured against the changed clip."""

    clips: int = 32
    kind: str = "degraded"


@attrs.frozen
class SuiteFile:
    """The keys of a suite file; `inputs`, `settings` and `grid` are checked by hand (their shapes vary)."""

    inputs: Any
    models: dict[str, dict[str, Any]]
    compositions: tuple[str, ...]
    settings: dict[str, Any] = attrs.field(factory=dict)
    grid: Any = attrs.field(factory=dict)
    seeds: tuple[int, ...] = (23,)
    measures: tuple[str, ...] | None = None
    baseline: str | None = None
    using_attn: bool = False
    negative_prompt: str | None = None
    video: VideoOptions = VideoOptions()


@attrs.frozen
class Cell:
    """One row label of the results: a composition with the grid values it runs under."""

    label: str
    composition: str
    settings: dict[str, Any]


@attrs.frozen
class Suite:
    source: str  # where the suite came from, for messages
    toyworld: ToyworldSource | None  # None: `inputs` are real clips
    inputs: Any  # the inputs as a spec takes them (a list or a manifest mapping), relative to `folder`
    folder: Path
    base: dict  # spec data every run shares: models, settings, using_attn, negative_prompt, video
    cells: tuple[Cell, ...]
    seeds: tuple[int, ...]
    measures: tuple[str, ...] | None
    baseline: str


def load_suite(path, registry, plugins, overrides: dict | None = None) -> Suite:
    """The suite in file `path` with `overrides` (suite keys, as command-line flags give them) applied; SpecError
    lists every problem, the plan of every cell included, before any clip is made or model loaded."""
    path = Path(path)
    data = read_data_file(path, "suite")
    if isinstance(data, dict):
        data = {**data, **(overrides or {})}
    return parse_suite(data, registry, plugins, str(path), resolved(path.parent))


def parse_suite(data, registry, plugins, source: str = "suite", folder: Path | None = None) -> Suite:
    values, problems = structure_fields(data, SuiteFile)
    if problems:
        raise SpecError(problems, source)
    given = SuiteFile(**values)
    toyworld, found = _toyworld_source(given.inputs)
    problems += found
    base = {"models": given.models, "settings": given.settings, "using_attn": given.using_attn,
            "video": CONVERTER.unstructure(given.video), **_negative_prompt(given.negative_prompt)}
    merged, found = overridden_settings(Settings(), given.settings, "$.settings")
    problems += found + (settings_problems(merged, "$.settings") if merged else [])
    cells, found = grid_cells(given.compositions, given.grid, given.settings) if merged else ([], [])
    problems += found
    if not given.seeds:
        problems.append("$.seeds: no seeds given; give at least one, e.g. [23]")
    problems += [f"$.seeds[{i}]: {seed} is negative; seeds are 0 or more" for i, seed in enumerate(given.seeds)
                 if seed < 0]
    labels = [cell.label for cell in cells]
    baseline = given.baseline or (labels[0] if labels else SOURCE)
    if baseline not in (*labels, SOURCE):
        problems.append(f"$.baseline: {baseline!r} is not a row of this suite{did_you_mean(baseline, [*labels, SOURCE])}"
                        f"; name a composition (with its grid values) or `source`")
    if not problems:
        problems += plan_problems(base, PLACEHOLDER_INPUT if toyworld else given.inputs, cells, registry, plugins,
                                  folder)
    if problems:
        raise SpecError(problems, source)
    return Suite(source, toyworld, given.inputs, folder or Path.cwd(), base, tuple(cells), given.seeds, given.measures,
                 baseline)


def _negative_prompt(text: str | None) -> dict:
    return {} if text is None else {"negative_prompt": text}


def _toyworld_source(inputs) -> tuple[ToyworldSource | None, list[str]]:
    if not (isinstance(inputs, dict) and "toyworld" in inputs):
        return None, []
    extra = [f"$.inputs.{key}: unknown key beside toyworld; drop it" for key in inputs if key != "toyworld"]
    values, problems = structure_fields(inputs["toyworld"], ToyworldSource, "$.inputs.toyworld")
    source = ToyworldSource(**values)
    if "clips" in values and source.clips < 1:
        problems.append(f"$.inputs.toyworld.clips: {source.clips}; give at least 1")
    if "kind" in values and source.kind not in TOY_KINDS:
        problems.append(f"$.inputs.toyworld.kind: {source.kind!r}{did_you_mean(source.kind, TOY_KINDS)}; "
                        f"use one of {', '.join(TOY_KINDS)}")
    return source, extra + problems


def grid_cells(compositions, grid, settings: dict) -> tuple[list[Cell], list[str]]:
    """A cell per composition and grid combination (a list of grids: each one's combinations in turn), every grid
    value checked as a setting over the base `settings` (found good); a single value for a list setting
    (stable_steps) means a list of one."""
    grids = grid if isinstance(grid, list) else [grid]
    problems, combinations = [], []
    for g, one in enumerate(grids):
        where = "$.grid" if isinstance(grid, dict) else f"$.grid[{g}]"
        if not isinstance(one, dict):
            problems.append(f"{where}: expected a mapping of settings to lists of values, got {written(one)}")
            continue
        for name, values in one.items():
            if not isinstance(values, list) or not values:
                problems.append(f"{where}.{name}: expected a non-empty list of values, got {written(values)}; "
                                f"write it as [v1, v2]")
                continue
            for i, value in enumerate(values):
                problems += _setting_problems(settings, name, value, f"{where}.{name}[{i}]")
        if not problems:
            combinations += [dict(zip(one, chosen)) for chosen in itertools.product(*one.values())]
    if problems:
        return [], problems
    cells = [Cell(" ".join([composition, *(f"{k}={_shown(v)}" for k, v in chosen.items())]), composition,
                  {k: _as_setting(k, v) for k, v in chosen.items()})
             for composition in compositions for chosen in (combinations or [{}])]
    repeated = sorted({c.label for c in cells if [d.label for d in cells].count(c.label) > 1})
    return cells, [f"$.grid: row {label!r} comes more than once; list each composition and value once"
                   for label in repeated]


def _as_setting(name: str, value):
    listed = isinstance(getattr(Settings(), name, None), tuple)
    return [value] if listed and not isinstance(value, list) else value


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _setting_problems(settings: dict, name: str, value, where: str) -> list[str]:
    if name in GRID_SPEC_KEYS:
        kind = GRID_SPEC_KEYS[name]
        return [] if isinstance(value, kind) else [f"{where}: expected {TYPE_WORDS[kind]}, got {written(value)}"]
    if name not in attrs.fields_dict(Settings):
        known = [*attrs.fields_dict(Settings), *GRID_SPEC_KEYS]
        return [f"{where}: {name!r} is not a setting{did_you_mean(name, known)}; grid the composition settings or "
                f"{', '.join(GRID_SPEC_KEYS)}"]
    merged, problems = overridden_settings(Settings(), {**settings, name: _as_setting(name, value)}, "$")
    if problems:
        return [f"{where}: {p.split(': ', 1)[1]}" for p in problems if p.startswith(f"$.{name}")]
    return [f"{where}: {p.split(': ', 1)[1]}" for p in settings_problems(merged, "$") if p.startswith(f"$.{name}")]


def cell_spec_data(base: dict, inputs, cell: Cell, seed: int, out_dir: Path) -> dict:
    """The spec of one (cell, seed) run, as data."""
    spec_keys = {k: v for k, v in cell.settings.items() if k in GRID_SPEC_KEYS}
    settings = {k: v for k, v in cell.settings.items() if k not in GRID_SPEC_KEYS}
    return {**base, **spec_keys, "inputs": inputs, "composition": cell.composition, "seed": seed,
            "settings": {**base["settings"], **settings}, "output": {"dir": str(out_dir), "side_by_side": False}}


def plan_problems(base: dict, inputs, cells, registry, plugins, folder: Path | None) -> list[str]:
    """Every cell's spec and plan problems, each named by its cell when it is a cell's own."""
    problems = []
    for cell in cells:
        parsed = parse_spec(cell_spec_data(base, inputs, cell, 0, Path("planned")), folder=folder)
        found = [p for p in parsed.problems if not p.startswith("$.seed")]
        if not found:
            try:
                make_plan(parsed.spec, registry, plugins)
            except PlanError as exc:
                found = exc.problems
        for problem in found:
            shared = problem.startswith(("$.models", "$.inputs", "$.video", "$.using_attn", "$.negative_prompt"))
            if problem.startswith("$.composition:"):  # the same for every grid value of the composition
                line = problem.replace("$.composition:", f"$.compositions ({cell.composition}):", 1)
            else:
                line = problem if shared else f"{cell.label}: {problem}"
            if line not in problems:
                problems.append(line)
    return problems
