"""The web UI's one door into EVS: every import of the framework's internals is here, so that moving them touches
this module alone. The rest of the UI sees plain records (attrs classes, paths, dicts, strings).

Nothing is re-implemented: specs are checked and planned by `api.prepare_job` (the messages are the CLI's), runs go
through `runner.run_job` (outputs written atomically, with their sidecars), and measures come from `evs eval`'s
metrics and the toy world's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import attrs

from evs_framework.api import load_context, prepare_job
from evs_framework.context_windows import framed
from evs_framework.errors import EVSError
from evs_framework.evaluation.contact_sheet import contact_sheet, labelled, save_png
from evs_framework.evaluation.evaluate import choose_metrics, evaluate, write_reports
from evs_framework.hookspecs import hookimpl
from evs_framework.io import video_io
from evs_framework.plan import DenoiseOp
from evs_framework.plan_text import format_plan
from evs_framework.preflight import weight_problems, working_size
from evs_framework.runner import output_stems, run_job
from evs_framework.spec import parse_spec
from evs_framework.toyworld import experiment
from evs_framework.toyworld.measures import LOWER_IS_BETTER  # noqa: F401 - for the UI's tables

TOY_MODELS = {role: choice["name"] for role, choice in experiment.TOY_MODELS.items()}
TOY_SETTINGS = dict(experiment.TOY_SETTINGS)
TOY_MEASURES = experiment.MEASURES
EXTRA_INVERT_MODES = ("ddim",)  # the original configs' word, resolved by the planner (README: Transfers)


class RunCancelled(BaseException):
    """Raised from the step hook when the page asks a run to stop. A BaseException, as Ctrl-C is: the runner lets it
    through, releases the video's lock and writes nothing for the unfinished video (plugins' Exceptions would only
    fail the video)."""


@attrs.frozen
class StepEvent:
    """Where a run is: denoising step `step` (from 0) of op `op` (from 1) of `ops`, `model` (a registry name) at
    noise level `sigma`; `done` of `total` denoising steps of the whole plan are behind it."""

    op: int
    ops: int
    model: str
    step: int
    steps: int
    sigma: float
    done: int
    total: int


class StepWatch:
    """A plugin whose step_start hook tells `listener` (one run's, set while it runs) where the run is; the listener
    may raise RunCancelled to stop it."""

    def __init__(self):
        self.listener: Callable[[StepEvent], None] | None = None

    @hookimpl
    def step_start(self, video, op, step, sigma):
        if self.listener is None:
            return
        ops = video.plan.ops
        index = next(i for i, candidate in enumerate(ops) if candidate is op)
        steps = [o.steps if isinstance(o, DenoiseOp) else 0 for o in ops]
        self.listener(StepEvent(index + 1, len(ops), video.plan.models[op.model].entry.name, step, op.steps, sigma,
                                sum(steps[:index]) + step, sum(steps)))


@attrs.frozen
class Workbench:
    """What the page works with: the loaded plugins, the registry, api.load_context's options and the one load
    context every run uses (it keeps the models it loaded, so a second run loads none), with the step watch
    registered."""

    plugins: object
    registry: object
    context_options: dict
    context: object
    watch: StepWatch


def open_workbench(plugins, registry, context_options: dict) -> Workbench:
    watch = StepWatch()
    plugins.manager.register(watch, name="evs-ui")
    context = load_context(plugins, registry, **context_options)
    return Workbench(plugins, registry, dict(context_options), context, watch)


@attrs.frozen
class ModelStatus:
    name: str
    type: str  # t2i or t2v
    kind: str
    description: str
    steps: int  # the preset's step count
    problems: tuple[str, ...]  # why it cannot run here: missing or damaged weights (where searched, how to get them)

    @property
    def runnable(self) -> bool:
        return not self.problems


def model_statuses(bench: Workbench) -> list[ModelStatus]:
    """Every registry model, with what keeps it from running here (checked as `evs plan` checks: files and headers)."""
    return [ModelStatus(entry.name, entry.type, entry.kind, entry.description, entry.preset.steps,
                        tuple(weight_problems([entry], bench.context)))
            for entry in bench.registry.entries.values()]


def composition_names(bench: Workbench) -> list[str]:
    return bench.plugins.catalogue.names("compositions")


def invert_modes(bench: Workbench) -> list[str]:
    return sorted({*bench.plugins.catalogue.names("transfers"), *EXTRA_INVERT_MODES})


@attrs.frozen
class ToyClip:
    """A held-out toy-world clip, degraded as the enhance task's inputs are, with its clean ground truth."""

    video: Path
    prompt: str
    held_out: object  # experiment.HeldOutClip, for the measures against the truth


def toy_clips(folder: Path, count: int) -> list[ToyClip]:
    return [ToyClip(clip.video, clip.spec.prompt, clip) for clip in experiment.held_out_clips(folder, count)]


@attrs.frozen
class ClipInfo:
    frames: int  # as the file says (an estimate from its duration)
    fps: float
    width: int
    height: int


def probe(video: Path) -> ClipInfo:
    """The clip's length and size; raises EVSError with the CLI's message for a file that is not a readable video."""
    info = video_io.probe_video(video)
    return ClipInfo(info.frame_count, info.fps, info.width, info.height)


@attrs.frozen
class Prepared:
    """A checked and planned run of one video: the job for run_job, the plan as `evs plan` prints it, and the UNet calls
    per registry model, counted for the clip's length."""

    job: object
    plan_text: str
    unet_calls: dict[str, int]
    frames: int
    size: tuple[int, int]  # width, height as the run reads the clip
    output: Path  # where the output video will be


def prepare(bench: Workbench, data: dict, source: str = "the page's settings") -> Prepared:
    """A native spec's data (one input) checked and planned before any weight loads; raises EVSError (SpecError) with
    every problem, as `evs plan` reports them."""
    job = prepare_job(parse_spec(data, source), plugins=bench.plugins, registry=bench.registry, source=source,
                      **bench.context_options)
    job = attrs.evolve(job, context=bench.context)
    [item] = job.spec.inputs
    frames, height, width = working_size(job.spec, video_io.probe_video(item.video))
    plan = framed(job.plans[item.settings], frames)
    calls: dict[str, int] = {}
    for role, totals in plan.totals().items():
        name = plan.models[role].entry.name
        calls[name] = calls.get(name, 0) + totals["unet_calls"]
    [stem] = output_stems(job.spec)
    return Prepared(job, format_plan(plan), calls, frames, (width, height), job.spec.output.dir / f"{stem}.mp4")


@attrs.frozen
class Written:
    output: Path
    sidecar: Path
    seconds: float


def run(bench: Workbench, prepared: Prepared, listener: Callable[[StepEvent], None]) -> Written:
    """Runs the prepared job as `evs run` does (same runner, atomic writes, sidecar), telling `listener` each
    denoising step. Raises RunCancelled when the listener does (nothing of the video is written then), EVSError when
    the video fails."""
    job = prepared.job
    bench.watch.listener = listener
    try:
        [result] = run_job(job.spec, job.plan, job.context, progress=False)
    finally:
        bench.watch.listener = None
    if result.error:
        raise EVSError(result.error)
    return Written(result.output, result.sidecar, result.seconds)


def reference_free_scores(bench: Workbench, output: Path) -> dict:
    """`evs eval`'s weight-free metrics of an output and of the source its sidecar names; metrics.json and
    metrics.csv are written beside it. {metric: {"input", "output", "higher_is_better", "family"}}."""
    data = evaluate([output], choose_metrics(bench.plugins, None), progress=False)
    write_reports(data, output.parent)
    [video] = data["videos"]
    return {name: {"input": video["source_values"].get(name), "output": video["values"][name],
                   "higher_is_better": spec["higher_is_better"], "family": spec["family"]}
            for name, spec in data["metrics"].items()}


def toy_scores(clip: ToyClip, output: Path, frames: int) -> dict:
    """The toy world's measures of the input's first `frames` frames (those the run read) and of the output, against
    the clip's ground truth. {measure: {"input", "output"}}."""
    measured = {which: experiment.clip_measures(read_frames(path, frames), clip.held_out)
                for which, path in (("input", clip.video), ("output", output))}
    return {name: {"input": measured["input"][name], "output": measured["output"][name]} for name in TOY_MEASURES}


def read_frames(path: Path, max_frames: int | None = None):
    return video_io.read_video(path, max_frames=max_frames).frames


def write_view(path: Path, panels: list[tuple[str, object]], fps: float, height: int = 256) -> Path:
    """Labelled panels ((label, frames) each, frames as read_frames gives them) side by side, as an mp4."""
    scaled = [labelled(video_io.scale_to_height(frames, height), label) for label, frames in panels]
    return video_io.write_video(path, video_io.side_by_side(scaled), fps)


def write_contact_sheet(path: Path, rows: list[tuple[str, object]], every: int = 2) -> Path:
    """A PNG with a row of every `every`-th frame per (label, frames)."""
    return save_png(contact_sheet([(label, video_io.frames_to_uint8(frames)) for label, frames in rows], every), path)


def write_text(path: Path, text: str) -> Path:
    return video_io.write_text(path, text)
