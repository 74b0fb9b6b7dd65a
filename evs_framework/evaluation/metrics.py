"""Scoring videos: metric specs (provided by plugins through `register_metrics`), VBench's aggregation, reports.

Every metric states its family: `vbench_exact` (VBench's formula and model), `vbench_port` (VBench's formula, our
loading of the same weights) or `proxy` (a model-free stand-in). A proxy never carries a VBench dimension's bare
name: its name starts with `proxy.`. Each output is scored next to its source clip, since the difference (output
minus source) says more than a proxy's absolute value.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Callable

import attrs
import imageio.v2 as imageio
import numpy as np

from evs_framework.errors import PluginError, VideoError

FAMILIES = ("vbench_exact", "vbench_port", "proxy")
AGGREGATES = ("frame_weighted", "video_mean", "fraction")
# the weight files a user may name for the weights tier (never downloaded): key -> what it is
WEIGHT_FILES = {
    "dino_vitb16": "DINO ViT-B/16 as a transformers folder (facebook/dino-vitb16), for subject_consistency",
    "clip_vit_b32": "CLIP ViT-B/32 as a transformers folder (openai/clip-vit-base-patch32), for background_consistency "
                    "and clip_score",
    "clip_vit_l14": "CLIP ViT-L/14 as a transformers folder (openai/clip-vit-large-patch14), for aesthetic_quality",
    "laion_aesthetic_head": "LAION's aesthetic head sa_0_4_vit_l_14_linear.pth, for aesthetic_quality (with clip_vit_l14)",
}
VBENCH_DIMENSIONS = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
                     "dynamic_degree", "aesthetic_quality", "imaging_quality")


@attrs.frozen
class ClipInfo:
    """What a metric may know of a clip besides its frames."""

    fps: float
    prompt: str | None = None  # the prompt the output was made for (text-alignment metrics need it)


@attrs.frozen
class MetricResult:
    """One video's score; `terms` are the per-frame (or per-pair) terms a frame-weighted aggregate sums."""

    value: float
    terms: tuple[float, ...] = ()


@attrs.frozen
class Metric:
    name: str
    family: str
    compute: Callable[[np.ndarray, ClipInfo], MetricResult]  # (frames uint8 (T, H, W, 3) RGB, clip) -> result
    aggregate: str = "video_mean"
    higher_is_better: bool = True
    description: str = ""

    def __attrs_post_init__(self) -> None:
        """A spec that breaks the rules every metric follows is refused when it is made (PluginError)."""
        if self.family not in FAMILIES:
            raise PluginError(f"metric {self.name!r}: family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.aggregate not in AGGREGATES:
            raise PluginError(f"metric {self.name!r}: aggregate {self.aggregate!r} is not one of {', '.join(AGGREGATES)}")
        if self.family == "proxy" and not self.name.startswith("proxy."):
            raise PluginError(f"metric {self.name!r} is a proxy, so its name must start with 'proxy.' (a proxy never "
                              f"carries a VBench dimension's name); rename it to 'proxy.{self.name}'")
        if self.family != "proxy" and self.name.startswith("proxy."):
            raise PluginError(f"metric {self.name!r} is named as a proxy but its family is {self.family!r}")


def load_weight_paths(file: Path) -> dict[str, Path]:
    """The `key: path` mapping of a weights file (YAML; relative paths from its folder), every file checked."""
    from evs_framework.datafile import read_data_file
    from evs_framework.errors import SpecError

    file = Path(file)
    if not file.is_file():
        raise SpecError([f"{file}: no such file; give the YAML file that maps {', '.join(WEIGHT_FILES)} to paths"],
                        str(file))
    data = read_data_file(file, "weights file") or {}
    if not isinstance(data, dict):
        raise SpecError(["$: the top level must map weight names to paths"], str(file))
    problems = [f"$.{key}: unknown weight; known: {', '.join(WEIGHT_FILES)}" for key in data if key not in WEIGHT_FILES]
    paths = {key: (file.parent / str(value)).expanduser() for key, value in data.items() if key in WEIGHT_FILES}
    problems += [f"$.{key}: {path} does not exist; it should be {WEIGHT_FILES[key]}"
                 for key, path in paths.items() if not path.exists()]
    if problems:
        raise SpecError(problems, str(file))
    return paths


def read_frames(path: Path) -> tuple[np.ndarray, float]:
    """Every frame of a video as uint8 (T, H, W, 3) RGB, and its fps (VBench reads all frames too)."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video {path} does not exist; check the path")
    try:
        with imageio.get_reader(path, format="FFMPEG") as reader:
            fps = float(reader.get_meta_data()["fps"])
            frames = np.stack([frame for frame in reader])  # list(reader) asks its length, which is inf
    except (OSError, RuntimeError, ValueError) as error:
        raise VideoError(f"video {path} could not be decoded ({error}); is it a complete mp4?") from error
    return frames, fps


def aggregate(metric: Metric, results: list[MetricResult]) -> float:
    """The batch value as VBench computes it: frame-weighted sums, or the mean (a fraction, for 0/1 values)."""
    if not results:
        return math.nan
    if metric.aggregate == "frame_weighted":
        terms = [term for result in results for term in result.terms]
        return float(np.mean(terms)) if terms else math.nan
    return float(np.mean([result.value for result in results]))


@attrs.frozen
class VideoScores:
    output: Path
    source: Path | None
    values: dict[str, float]
    source_values: dict[str, float]
    frames: int
    size: tuple[int, int]  # width, height: thresholds and preprocessing depend on it

    def deltas(self) -> dict[str, float]:
        return {name: value - self.source_values[name] for name, value in self.values.items()
                if name in self.source_values}


def score_video(frames: np.ndarray, clip: ClipInfo, metrics: list[Metric]) -> dict[str, MetricResult]:
    return {metric.name: metric.compute(frames, clip) for metric in metrics}


def report(metrics: list[Metric], scored: list[tuple[VideoScores, dict, dict]]) -> dict:
    """metrics.json's content: per video (values, source values, output minus source) and the aggregates."""
    aggregates, source_aggregates = {}, {}
    for metric in metrics:
        aggregates[metric.name] = aggregate(metric, [outputs[metric.name] for _, outputs, _ in scored])
        sources = [source[metric.name] for _, _, source in scored if source]
        if sources:
            source_aggregates[metric.name] = aggregate(metric, sources)
    return {
        # ports stay not comparable until someone cross-checks them against VBench itself
        "metrics": {m.name: {"family": m.family, "comparable_to_vbench": m.family == "vbench_exact",
                             "aggregate": m.aggregate, "higher_is_better": m.higher_is_better,
                             "description": m.description} for m in metrics},
        "videos": [{"output": str(v.output), "source": str(v.source) if v.source else None, "frames": v.frames,
                    "size": list(v.size), "values": v.values, "source_values": v.source_values, "deltas": v.deltas()}
                   for v, _, _ in scored],
        "aggregate": aggregates,
        "source_aggregate": source_aggregates,
        "aggregate_delta": {name: value - source_aggregates[name] for name, value in aggregates.items()
                            if name in source_aggregates},
    }


def report_csv(data: dict) -> str:
    """One row per video and metric: output, metric, value, source value, delta."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["output", "metric", "value", "source_value", "delta"])
    for video in data["videos"]:
        for name, value in video["values"].items():
            writer.writerow([video["output"], name, format_value(value, 6),
                             format_value(video["source_values"].get(name), 6, absent=""),
                             format_value(video["deltas"].get(name), 6, absent="")])
    return buffer.getvalue()


def format_value(value, digits: int = 4, absent: str = "null") -> str:
    """A metric value as tables and CSV print it: `null` where it does not apply (NaN), as metrics.json says;
    `absent` where there is no value at all (no source clip to compare with)."""
    if value is None:
        return absent
    return "null" if math.isnan(value) else f"{value:.{digits}f}"
