"""A whole bench: load nothing twice (one LoadContext for the suite), run every (cell, seed) on the suite's clips,
then write results.json, report.md and pareto.png atomically beside the rows file."""

from __future__ import annotations

from pathlib import Path

import attrs

from evs_framework.bench.clips import source_rows, suite_clips
from evs_framework.bench.pareto import draw_pareto
from evs_framework.bench.report import differences, format_report, measure_names, strict_json, summarise
from evs_framework.bench.runs import run_cells
from evs_framework.bench.suite import Suite
from evs_framework.io import video_io


@attrs.frozen
class BenchFiles:
    rows: Path
    results: Path
    report: Path
    pareto: Path


def bench_files(folder: Path, stem: str | None = None) -> BenchFiles:
    """The files of a bench in `folder`: rows.jsonl, results.json, report.md, pareto.png, or `<stem>_rows.jsonl`,
    `<stem>.json`, `<stem>.md`, `<stem>_pareto.png` (the names `evs toyworld` has always written)."""
    if stem is None:
        return BenchFiles(folder / "rows.jsonl", folder / "results.json", folder / "report.md", folder / "pareto.png")
    return BenchFiles(folder / f"{stem}_rows.jsonl", folder / f"{stem}.json", folder / f"{stem}.md",
                      folder / f"{stem}_pareto.png")


def run_suite(suite: Suite, out_dir: Path, files: BenchFiles, registry, plugins, context, progress: bool = False
              ) -> dict:
    """Every row of `suite` (kept ones reused), its summary and differences; returns what results.json holds."""
    clips = suite_clips(suite, out_dir, plugins, context)
    rows = source_rows(clips) + run_cells(clips.inputs, list(suite.cells), suite.seeds, suite.base, clips.measure,
                                          out_dir / "runs", registry, plugins, context, files.rows, progress)
    measures = measure_names(rows, suite.measures)
    summary = summarise(rows, measures)
    found = differences(rows, suite.baseline, measures, clips.lower_is_better)
    record = {"suite": suite.source, "clips": len(clips.inputs), "seeds": list(suite.seeds), "base": suite.base,
              "baseline": suite.baseline, "measures": measures, "lower_is_better": sorted(clips.lower_is_better),
              "summary": summary, "differences": found, "rows": rows}
    video_io.write_json(files.results, strict_json(record))
    video_io.write_text(files.report, format_report(summary, found, measures, suite.baseline, suite.source))
    draw_pareto(summary, measures, clips.lower_is_better, files.pareto)
    return record
