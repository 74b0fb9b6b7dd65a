"""What the page shows, as plain text and table rows: the plan's summary and time estimate, the models and whether
they can run, a run's measures, the session's runs side by side. No gradio here, so each is testable as it is."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs

from evs_framework.ui.framework import LOWER_IS_BETTER, ClipInfo, ModelStatus, StepEvent

SIDECAR_KEYS = frozenset({"models", "stages", "frames", "size", "seconds", "unet_calls"})


def read_sidecars(folder: Path) -> list[dict]:
    """The sidecars (`<stem>.json` beside each output) of the runs under `folder`; other JSON files are left out."""
    records = []
    for path in sorted(Path(folder).rglob("*.json")) if Path(folder).is_dir() else ():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and SIDECAR_KEYS <= record.keys():
            records.append(record)
    return records


@attrs.frozen
class Estimate:
    seconds: float
    calls: int
    seconds_per_call: float  # at this clip's frames and size, averaged over its models' calls
    overhead: float  # reading, encoding, decoding and writing the clip
    runs: int  # earlier runs it was measured on


def estimate(calls: dict[str, int], frames: int, size: tuple[int, int], sidecars: list[dict]) -> Estimate | None:
    """The run's time from earlier runs' sidecars: each model's seconds per UNet call (from the stages it ran,
    scaled by the clip's frames x pixels, as a UNet call's work grows with them; a model not seen before takes the
    mean of all), times the plan's calls, plus the time outside the stages (read, encode, decode, write) scaled
    alike. None when there are no earlier runs. Loading the models is not counted."""
    seconds, work, outside, outside_work = {}, {}, 0.0, 0.0
    for record in sidecars:
        volume = record["frames"] * record["size"][0] * record["size"][1]
        for stage in record["stages"]:
            name = record["models"].get(stage["model"], stage["model"])
            seconds[name] = seconds.get(name, 0.0) + stage["seconds"]
            work[name] = work.get(name, 0.0) + stage["unet_calls"] * volume
        outside += max(0.0, record["seconds"] - sum(stage["seconds"] for stage in record["stages"]))
        outside_work += volume
    if not sidecars or not any(work.values()):
        return None
    mean_rate = sum(seconds.values()) / sum(work.values())
    volume = frames * size[0] * size[1]
    denoising = sum(count * volume * (seconds[name] / work[name] if work.get(name) else mean_rate)
                    for name, count in calls.items())
    overhead = outside / outside_work * volume
    total_calls = sum(calls.values())
    return Estimate(denoising + overhead, total_calls, denoising / total_calls if total_calls else 0.0, overhead,
                    len(sidecars))


def plan_summary(calls: dict[str, int], frames: int, size: tuple[int, int], guess: Estimate | None) -> str:
    """Markdown: the UNet calls per model and the estimated time."""
    per_model = ", ".join(f"{name} {count}" for name, count in calls.items())
    lines = [f"**UNet calls**: {per_model} ({sum(calls.values())} in all), for {frames} frames of {size[0]}x{size[1]}"]
    if guess is None:
        lines.append("**Estimated time**: no earlier runs to estimate from")
    else:
        lines.append(f"**Estimated time**: about {guess.seconds:.1f} s ({guess.calls} UNet calls at "
                     f"{guess.seconds_per_call:.2f} s each, plus {guess.overhead:.1f} s to read, encode, decode and "
                     f"write), from {guess.runs} earlier run{'' if guess.runs == 1 else 's'}; loading the models on a "
                     f"first run comes on top")
    return "  \n".join(lines)


def stable_steps_info(t2i: str, t2i_steps: int, strength: float) -> str:
    """The knob's range, as the planner checks it."""
    return (f"T2I steps left at each switch to the T2V, comma-separated, decreasing; each must be smaller than "
            f"{t2i}'s {t2i_steps} steps x idm_inverse_strength {strength:g} = {t2i_steps * strength:g}")


def stable_num_info(t2v: str, t2v_steps: int) -> str:
    return f"T2V steps in each window: 1 to {t2v}'s {t2v_steps}"


def models_markdown(statuses: list[ModelStatus]) -> str:
    """The registry's models, whether each runs here, and for those that do not where their weights were searched
    and how to get them (the messages `evs plan` gives)."""
    lines = ["| model | type | kind | runs here | what it is |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {s.name} | {s.type.upper()} | {s.kind} | {'yes' if s.runnable else 'no: weights missing'} | "
              f"{s.description.replace('|', '/')} |" for s in statuses]
    for status in statuses:
        if not status.runnable:
            lines += ["", f"**{status.name}** cannot run here:", "```text", *status.problems, "```"]
    return "\n".join(lines)


def model_choices(statuses: list[ModelStatus], type_: str) -> list[tuple[str, str]]:
    """(label, name) for a dropdown of one type; a model that cannot run says so in its label."""
    return [(status.name if status.runnable else f"{status.name} (weights missing)", status.name)
            for status in statuses if status.type == type_]


SCORE_HEADERS = ["measure", "input", "output", "change", "better"]


def score_rows(scores: dict[str, dict]) -> list[list[str]]:
    """A row per measure: the input's value, the output's, the change and whether it went the good way (a measure
    with `higher_is_better` False, or one the toy world counts lower-is-better, is better when it falls)."""
    rows = []
    for name, score in scores.items():
        before, after = score["input"], score["output"]
        higher = score.get("higher_is_better", name not in LOWER_IS_BETTER)
        known = _number(before) and _number(after)
        change = after - before if known else None
        better = "" if change is None or change == 0 else "yes" if (change > 0) == higher else "no"
        rows.append([name, _shown(before), _shown(after), "" if change is None else f"{change:+.4f}", better])
    return rows


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _shown(value) -> str:
    return f"{value:.4f}" if _number(value) else "n/a"


RUN_HEADERS = ["run", "clip", "composition", "models", "settings", "seconds", "UNet calls"]


def run_rows(runs: list) -> tuple[list[str], list[list[str]]]:
    """(headers, a row per run): its settings, then the output's value of every measure any run has."""
    measures = list(dict.fromkeys(name for run in runs for name in run.scores))
    rows = [[run.label, run.clip, run.composition, " + ".join(run.models.values()), settings_text(run.settings),
             f"{run.seconds:.1f}", str(sum(run.unet_calls.values())),
             *(_shown(run.scores[name]["output"]) if name in run.scores else "" for name in measures)]
            for run in runs]
    return RUN_HEADERS + measures, rows


def settings_text(settings: dict) -> str:
    """A run's settings in a table cell."""
    strengths = f"{settings['idm_inverse_strength']:g} / {settings['vdm_inverse_strength']:g}"
    modes = " / ".join(settings[key] for key in ("idm_invert_mode", "vdm_invert_mode", "idm_invert_mode_2"))
    return (f"strengths {strengths}, stable_steps {settings['stable_steps']}, stable_num {settings['stable_num']}, "
            f"invert {modes}, seed {settings['seed']}, {settings['frames']} frames")


def progress_text(event: StepEvent) -> str:
    """Markdown: where a run is."""
    share = event.done / event.total if event.total else 0.0
    return (f"**Running** op {event.op} of {event.ops}: denoise with {event.model}, step {event.step + 1} of "
            f"{event.steps}, sigma {event.sigma:.4f} ({share:.0%} of the denoising steps done)")


def clip_note(name: str, info: ClipInfo, frames: int) -> str:
    """What the run will read of a clip."""
    return (f"{name}: about {info.frames} frames of {info.width}x{info.height} at {info.fps:g} fps; the run reads the "
            f"first {min(frames, info.frames)} (video.max_frames)")
