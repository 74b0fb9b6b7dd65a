"""`evs compare`: several compositions on the same inputs and seed, then one table, a labelled side-by-side video
and a PNG contact sheet per input, so the difference can be seen as well as read."""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from evs_framework.io import video_io
from evs_framework.evaluation.contact_sheet import contact_sheet, labelled, save_png
from evs_framework.errors import EVSError
from evs_framework.evaluation.evaluate import choose_metrics, evaluate
from evs_framework.evaluation.metrics import format_value, read_frames
from evs_framework.planner import make_plan
from evs_framework.runner import run_job
from evs_framework.spec import Spec

SHEET_COLUMNS = 8


def run_compositions(spec: Spec, names: list[str], registry, plugins, context, progress: bool) -> dict[str, list]:
    """Each composition's results, outputs in `<output dir>/compare/`; the models load once for all of them."""
    folder = spec.output.dir / "compare"
    results = {}
    for name in names:
        variant = attrs.evolve(spec, composition=name, output=attrs.evolve(spec.output, dir=folder, side_by_side=False))
        results[name] = run_job(variant, make_plan(variant, registry, plugins, context), context, progress, overwrite=True)
    failed = [f"{name}: {r.source.name}: {r.error}" for name, rs in results.items() for r in rs if r.error]
    if failed:
        raise EVSError("compare stopped: some runs failed (their finished outputs are kept):\n" +
                       "\n".join(f"  - {line}" for line in failed))
    return results


def compare_one(index: int, names: list[str], results: dict, metrics, folder: Path, progress: bool) -> dict:
    """Table rows, side-by-side mp4 and contact sheet for input `index`."""
    outputs = [results[name][index].output for name in names]
    scores = evaluate(outputs, metrics, progress)
    source = Path(scores["videos"][0]["source"])
    table = {"source": {"seconds": None, "unet_calls": None, **scores["videos"][0]["source_values"]}}
    for name, output, video in zip(names, outputs, scores["videos"]):
        sidecar = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
        table[name] = {"seconds": sidecar["seconds"], "stage_seconds": [round(s["seconds"], 3) for s in sidecar["stages"]],
                       "unet_calls": sidecar["unet_calls"], **video["values"]}
    clips = [("source", read_frames(source))] + [(name, read_frames(output)) for name, output in zip(names, outputs)]
    stem = source.stem
    height = max(frames.shape[1] for _, (frames, _) in clips)  # label after scaling, so every label has one size
    side = video_io.side_by_side([labelled(video_io.scale_to_height(video_io.frames_to_float(frames), height), label)
                                  for label, (frames, _) in clips])
    side_path = video_io.write_video(folder / f"{stem}.compare.mp4", side, clips[0][1][1])
    frame_count = min(len(frames) for _, (frames, _) in clips)
    sheet = contact_sheet([(label, frames[:frame_count]) for label, (frames, _) in clips],
                          every=max(1, frame_count // SHEET_COLUMNS))
    sheet_path = save_png(sheet, folder / f"{stem}.contact_sheet.png")
    return {"source": str(source), "table": table, "side_by_side": str(side_path), "contact_sheet": str(sheet_path),
            "metrics": scores["metrics"]}


def compare(spec: Spec, names: list[str], registry, plugins, context, progress: bool = True,
            weights: dict | None = None) -> dict:
    metrics = choose_metrics(plugins, None, weights)
    results = run_compositions(spec, names, registry, plugins, context, progress)
    folder = spec.output.dir / "compare"
    data = {"compositions": names, "inputs": [compare_one(i, names, results, metrics, folder, progress)
                                               for i in range(len(spec.inputs))]}
    video_io.write_json(folder / "compare.json", data)
    return data


def format_comparison(entry: dict, names: list[str]) -> str:
    """A row per quantity (wall time, UNet calls, each metric), a column for the source and each composition."""
    columns = ["source", *names]
    table = entry["table"]
    rows = [("", *columns)]
    rows.append(("seconds", "-", *(f"{table[n]['seconds']:.2f}" for n in names)))
    rows.append(("seconds per stage", "-", *("+".join(f"{s:.2f}" for s in table[n]["stage_seconds"]) for n in names)))
    rows.append(("unet calls", "-", *(" ".join(f"{role} {calls}" for role, calls in table[n]["unet_calls"].items())
                                      for n in names)))
    for metric, spec in entry["metrics"].items():
        rows.append((f"{metric} [{spec['family']}]", *(format_value(table[c][metric]) for c in columns)))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
