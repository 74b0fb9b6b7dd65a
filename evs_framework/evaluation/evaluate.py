"""`evs eval`: score outputs and their source clips with the loaded metrics, write metrics.json and metrics.csv."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import structlog
from tqdm import tqdm

from evs_framework.io import video_io
from evs_framework.errors import EVSError, did_you_mean
from evs_framework.evaluation.metrics import (ClipInfo, Metric, VideoScores, format_value, read_frames, report, report_csv,
                                   score_video)

log = structlog.get_logger(__name__)


def made_from(output: Path) -> tuple[Path | None, str | None]:
    """The source clip and prompt an EVS output was made from, as its sidecar (`<output>.json`) records them."""
    sidecar = output.with_suffix(".json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    except (OSError, json.JSONDecodeError):
        data = {}
    source = data.get("source")
    return (Path(source) if source and Path(source).is_file() else None), data.get("prompt")


def choose_metrics(plugins, names: list[str] | None, weights: dict | None = None) -> list[Metric]:
    """The named metrics (default: all) among the catalogue's and those the given weight files enable."""
    available = {name: plugins.catalogue.get("metrics", name) for name in plugins.catalogue.names("metrics")}
    if weights:
        def register(name, metric):
            if name in available:
                raise EVSError(f"metric {name!r} is provided twice; uninstall one of the plugins")
            available[name] = metric

        plugins.hook.register_weighted_metrics(register=register, weights=weights)
    if not available:
        raise EVSError("no plugin provides a metric; reinstall evs-framework (its metrics_basic plugin provides some)")
    unknown = [name for name in names or () if name not in available]
    if unknown:
        raise EVSError(f"unknown metric(s) {', '.join(map(repr, unknown))}{did_you_mean(unknown[0], available)}; "
                       f"`evs plugins` lists them (weight-based ones need --weights)")
    return [available[name] for name in (names or sorted(available))]


def evaluate(outputs: list[Path], metrics: list[Metric], progress: bool = True) -> dict:
    scored = []
    cost = {metric.name: 0.0 for metric in metrics}
    for output in tqdm(outputs, desc="videos", unit="video", disable=None if progress else True):
        frames, fps = read_frames(output)
        source, prompt = made_from(output)
        results = timed_scores(frames, ClipInfo(fps, prompt), metrics, cost, progress)
        if source:
            source_frames, source_fps = read_frames(source)
            source_results = timed_scores(source_frames, ClipInfo(source_fps, prompt), metrics, cost, progress)
        else:
            source_results = {}
        values = {name: result.value for name, result in results.items()}
        source_values = {name: result.value for name, result in source_results.items()}
        scores = VideoScores(output, source, values, source_values, len(frames), (frames.shape[2], frames.shape[1]))
        scored.append((scores, results, source_results))
        log.info("video_scored", output=output.name, metrics=len(values))
    data = report(metrics, scored)
    data["seconds_per_metric"] = {name: round(seconds, 3) for name, seconds in cost.items()}
    return data


def add_vbench(data: dict, setup, dimensions: list[str]) -> dict:
    """Score the same outputs and sources with the real VBench (its own environment) and merge its numbers in."""
    from evs_framework.evaluation.vbench_extra import run_vbench

    videos = {}
    for i, video in enumerate(data["videos"]):
        videos[f"{i:03d}_output"] = Path(video["output"])
        if video["source"]:
            videos[f"{i:03d}_source"] = Path(video["source"])
    scores = run_vbench(setup, videos, dimensions)
    for dimension, values in scores.items():
        name = f"vbench.{dimension}"
        data["metrics"][name] = {"family": "vbench_exact", "comparable_to_vbench": True, "aggregate": "video_mean",
                                 "higher_is_better": True,
                                 "description": f"VBench's own {dimension}, run in its environment"}
        outputs, sources = [], []
        for i, video in enumerate(data["videos"]):
            if f"{i:03d}_output" in values:
                video["values"][name] = values[f"{i:03d}_output"]
                outputs.append(video["values"][name])
            if f"{i:03d}_source" in values:
                video["source_values"][name] = values[f"{i:03d}_source"]
                video["deltas"][name] = video["values"][name] - video["source_values"][name]
                sources.append(video["source_values"][name])
        data["aggregate"][name] = sum(outputs) / len(outputs)
        if sources:
            data["source_aggregate"][name] = sum(sources) / len(sources)
            data["aggregate_delta"][name] = data["aggregate"][name] - data["source_aggregate"][name]
        data["seconds_per_metric"].setdefault(name, 0.0)
    return data


def timed_scores(frames, clip: ClipInfo, metrics, cost: dict, progress: bool = False) -> dict:
    results = {}
    for metric in tqdm(metrics, desc="metrics", unit="metric", leave=False, disable=None if progress else True):
        started = time.perf_counter()
        results.update(score_video(frames, clip, [metric]))
        cost[metric.name] += time.perf_counter() - started
    return results


def write_reports(data: dict, folder: Path) -> tuple[Path, Path]:
    """metrics.json (a metric that does not apply, NaN, is written as null: strict JSON has no NaN) and metrics.csv."""
    strict = json.loads(json.dumps(data), parse_constant=lambda constant: None)
    return (video_io.write_json(folder / "metrics.json", strict),
            video_io.write_text(folder / "metrics.csv", report_csv(data)))


def format_table(data: dict) -> str:
    """A row per metric: its family, each video's value (output minus source in brackets), the aggregate, seconds."""
    videos = data["videos"]
    rows = [("metric", "family", *(Path(v["output"]).name for v in videos), "aggregate", "seconds")]
    for name, spec in data["metrics"].items():
        cells = [_with_delta(v["values"][name], v["deltas"].get(name)) for v in videos]
        total = _with_delta(data["aggregate"][name], data["aggregate_delta"].get(name))
        rows.append((name, spec["family"], *cells, total, f"{data['seconds_per_metric'][name]:.2f}"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + ["(in brackets: output minus source; proxies are not comparable to VBench's numbers)"])


def _with_delta(value: float, delta: float | None) -> str:
    shown_delta = "" if delta is None or math.isnan(delta) else f" ({delta:+.4f})"
    return format_value(value) + shown_delta
