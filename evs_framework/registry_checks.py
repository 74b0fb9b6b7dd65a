"""The values a registry file may hold, checked when it loads: each preset number in its range, no NaN or infinity
in free-form settings, a backend kind's options as its plugin declares them; and the file and line of each problem.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from evs_framework.convert import structure
from evs_framework.errors import SpecError, short_repr
from evs_framework.schedules import BETA_SCHEDULES, SPACINGS

MAX_TRAIN_STEPS = 100_000
MAX_GUIDANCE = 100.0
MAX_FRAMES = 10_000
MAX_CHANNELS = 1024
MAX_COMPRESSION = 64  # a VAE's spatial or temporal factor
MAX_SIZE_MULTIPLE = 1024


def _between(low, high):
    return lambda value: low <= value <= high


def preset_problems(preset, where: str) -> list[str]:
    """Each field of `preset` (a registry.Preset) outside its range, with its path under `where`."""
    train, space = preset.train_steps, preset.latent_space
    ranges = [  # field, value, accepted, what to give
        ("train_steps", train, _between(1, MAX_TRAIN_STEPS), f"an integer from 1 to {MAX_TRAIN_STEPS}"),
        ("steps", preset.steps, _between(1, train), f"an integer from 1 to train_steps ({train})"),
        ("steps_offset", preset.steps_offset, _between(0, train - 1), f"an integer from 0 to {train - 1}"),
        ("original_steps", preset.original_steps, _between(1, train), f"an integer from 1 to train_steps ({train})"),
        ("guidance", preset.guidance, _between(0.0, MAX_GUIDANCE), f"a number from 0 to {MAX_GUIDANCE:g}"),
        ("beta_start", preset.beta_start, lambda v: 0 < v < 1, "a number between 0 and 1"),
        ("beta_end", preset.beta_end, lambda v: preset.beta_start < v < 1,
         f"a number above beta_start ({preset.beta_start:g}) and below 1"),
        ("frame_window", preset.frame_window, lambda v: v is None or 1 <= v <= MAX_FRAMES,
         f"an integer from 1 to {MAX_FRAMES}, or null"),
        ("context_frames", preset.context_frames, lambda v: v is None or 1 <= v <= (preset.frame_window or MAX_FRAMES),
         f"an integer from 1 to frame_window ({preset.frame_window or MAX_FRAMES}), or null"),
        ("latent_space.channels", space.channels, _between(1, MAX_CHANNELS), f"an integer from 1 to {MAX_CHANNELS}"),
        ("latent_space.spatial", space.spatial, _between(1, MAX_COMPRESSION), f"an integer from 1 to {MAX_COMPRESSION}"),
        ("latent_space.temporal", space.temporal, _between(1, MAX_COMPRESSION), f"an integer from 1 to {MAX_COMPRESSION}"),
        ("latent_space.size_multiple", space.size_multiple, _between(1, MAX_SIZE_MULTIPLE),
         f"an integer from 1 to {MAX_SIZE_MULTIPLE}"),
    ]
    problems = [f"{where}.{field}: {value!r} is out of range; give {wanted}"
                for field, value, accepted, wanted in ranges if not accepted(value)]
    problems += [f"{where}.trained_timesteps[{index}]: {step!r} is not one of the {train} training timesteps; give an "
                 f"integer from 0 to {train - 1}" for index, step in enumerate(preset.trained_timesteps)
                 if not 0 <= step < train]
    if preset.schedule == "betas" and preset.beta_schedule not in BETA_SCHEDULES:
        problems.append(f"{where}.beta_schedule: {preset.beta_schedule!r}; use one of {', '.join(BETA_SCHEDULES)}")
    if preset.spacing not in SPACINGS:
        problems.append(f"{where}.spacing: {preset.spacing!r}; use one of {', '.join(SPACINGS)}")
    return problems + non_finite(preset.schedule_params, f"{where}.schedule_params")


def non_finite(values: dict, where: str) -> list[str]:
    """A problem for each NaN or infinite number among a free-form mapping's values."""
    return [f"{where}.{key}: {value!r} is not a number a model can use; give a finite number"
            for key, value in values.items() if isinstance(value, float) and not math.isfinite(value)]


def option_problems(options: dict, options_class, numbers: dict[str, tuple[float, float]] = ()) -> list[str]:
    """A registry entry's `options` against the attrs class its backend kind reads them as (types, unknown keys),
    with `numbers` the (lowest, highest) of its number options; paths start at `options`."""
    try:
        structure(options, options_class, "registry", "options")
    except SpecError as exc:
        return exc.problems
    # NaN and infinity are refused for every kind's options already (non_finite)
    return [f"options.{name}: {short_repr(options[name])} is out of range; give a number from {low:g} to {high:g}"
            for name, (low, high) in dict(numbers).items()
            if name in options and math.isfinite(options[name]) and not low <= options[name] <= high]


def key_lines(file: Path) -> yaml.Node | None:
    """The YAML node tree of `file`, which knows the line of every key (None when it cannot be read again)."""
    try:
        return yaml.compose(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def line_of(tree: yaml.Node | None, path: str) -> int | None:
    """The 1-based line of the deepest key of `path` (`$.models.EP.options.scale`, `$.x[2]`) found in `tree`."""
    node, rest, line = tree, path.removeprefix("$"), None
    while node is not None and rest:
        rest = rest.removeprefix(".")
        if isinstance(node, yaml.SequenceNode) and (index := re.match(r"\[(\d+)\]", rest)):
            position = int(index.group(1))
            node = node.value[position] if position < len(node.value) else None
            rest = rest[index.end():]
        elif isinstance(node, yaml.MappingNode):
            # names may hold dots (wan2.1-14B): the longest key the path goes on with
            keys = [(key, value) for key, value in node.value
                    if rest == key.value or rest.startswith((f"{key.value}.", f"{key.value}["))]
            if not keys:
                break
            key, node = max(keys, key=lambda pair: len(pair[0].value))
            rest, line = rest[len(key.value):], key.start_mark.line + 1
            continue
        else:
            break
        line = node.start_mark.line + 1 if node is not None else line
    return line


def located(problems: list[str], file: Path) -> list[str]:
    """Each `$.path: message` problem prefixed with `file:line` (the file alone where the line is not known)."""
    tree = key_lines(file) if problems else None
    placed = []
    for problem in problems:
        line = line_of(tree, problem.split(":", 1)[0]) if problem.startswith("$") else None
        placed.append(f"{file}{f':{line}' if line else ''}: {problem}")
    return placed
