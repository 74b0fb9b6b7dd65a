"""A suite's clips and how each run's output is measured: toy-world clips against their truth (or without one for
clips toyVC drew), real clips with the reference-free metrics of `evs eval`'s metric plugins."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import attrs

from evs_framework.bench.suite import SOURCE, Suite
from evs_framework.errors import EVSError, did_you_mean
from evs_framework.spec import spec_from_data


@attrs.frozen
class SuiteClips:
    inputs: list[dict]  # a spec's {video, prompt} items
    measure: Callable[[Path, int], dict]  # (a video, the index of the input it was made from) -> measures
    lower_is_better: frozenset[str]  # the measures for which lower is better


def suite_clips(suite: Suite, out_dir: Path, plugins, context, made: bool = False) -> SuiteClips:
    """The clips of `suite` (toy-world ones are made under `out_dir`, or `made` there already by the process that
    started this worker), its measures checked first."""
    if suite.toyworld is None:
        return _real_clips(suite, plugins)
    from evs_framework.toyworld import edits, experiment
    from evs_framework.toyworld.measures import LOWER_IS_BETTER

    kind, count = suite.toyworld.kind, suite.toyworld.clips
    free = experiment.FREE_MEASURES + experiment.STYLE_MEASURES
    _check_measures(suite, free if kind == "vc2" else experiment.MEASURES + free)
    if kind == "degraded":
        held = experiment.held_out_clips(out_dir / "clips", count, made=made)
    elif kind == "vc2":
        held = experiment.drawn_clips(out_dir / "drawn_clips", count, context, made=made)
    else:
        held = edits.changed_clips(out_dir / f"{kind}_clips", count, kind, made=made)
    return SuiteClips([{"video": str(c.video), "prompt": c.spec.prompt} for c in held],
                      lambda video, index: experiment.clip_measures(experiment.read_clip(video), held[index]),
                      frozenset(LOWER_IS_BETTER))


def _real_clips(suite: Suite, plugins) -> SuiteClips:
    from evs_framework.evaluation.evaluate import choose_metrics
    from evs_framework.evaluation.metrics import ClipInfo, read_frames, score_video

    metrics = choose_metrics(plugins, list(suite.measures) if suite.measures else None)
    # the spec machinery reads the suite's inputs (a list, a manifest, a folder) as it reads a spec's
    spec = spec_from_data({**suite.base, "inputs": suite.inputs}, source=suite.source, folder=suite.folder)
    inputs = [{"video": str(item.video), "prompt": item.prompt} for item in spec.inputs]

    def measure(video: Path, index: int) -> dict:
        frames, fps = read_frames(video)
        scores = score_video(frames, ClipInfo(fps, inputs[index]["prompt"]), metrics)
        return {name: result.value for name, result in scores.items()}

    return SuiteClips(inputs, measure, frozenset(m.name for m in metrics if not m.higher_is_better))


def _check_measures(suite: Suite, known) -> None:
    unknown = [name for name in suite.measures or () if name not in known]
    if unknown:
        raise EVSError(f"{suite.source}: $.measures: {unknown[0]!r} is not measured on these clips"
                       f"{did_you_mean(unknown[0], known)}; list some of {', '.join(known)}")


def source_rows(clips: SuiteClips) -> list[dict]:
    """A row per input clip measured as it is: what every composition starts from."""
    return [{"composition": SOURCE, "clip": Path(item["video"]).stem, "seed": None,
             **clips.measure(Path(item["video"]), index)} for index, item in enumerate(clips.inputs)]
