"""A whole bench: load nothing twice (one LoadContext for the suite), run every (cell, seed) on the suite's clips,
then write results.json, report.md and pareto.png atomically beside the rows file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attrs

from evs_framework.bench.clips import source_rows, suite_clips
from evs_framework.bench.pareto import draw_pareto
from evs_framework.bench.report import differences, format_report, measure_names, strict_json, summarise
from evs_framework.bench.runs import run_cells
from evs_framework.bench.suite import Suite
from evs_framework.errors import EVSError
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


def run_suite(suite: Suite, out_dir: Path, files: BenchFiles, registry, plugins, context, progress: bool = False,
              share: tuple[int, int] | None = None, made: bool = False) -> dict | None:
    """Every row of `suite` (kept ones reused), its summary and differences; returns what results.json holds. A
    worker's `share` (I, N) runs every N-th (cell, seed) from the I-th on, into the rows file alone (None returned).
    `made`: the clips are in `out_dir` already (run_workers made them)."""
    clips = suite_clips(suite, out_dir, plugins, context, made=made)
    runs = run_cells(clips.inputs, list(suite.cells), suite.seeds, suite.base, clips.measure, out_dir / "runs",
                     registry, plugins, context, files.rows, progress, share)
    if share is not None:
        return None
    rows = source_rows(clips) + runs
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


def run_workers(suite: Suite, out_dir: Path, files: BenchFiles, plugins, context, argv: list[str], count: int) -> None:
    """The suite's rows in `count` processes (this command line with `--worker I/N`), after its clips are made
    here once; each appends its rows as it measures them. EVSError when one fails (its log named; the rows are kept)."""
    suite_clips(suite, out_dir, plugins, context)
    logs = out_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    workers = []
    for index in range(count):
        log = logs / f"worker-{index}.log"
        with open(log, "w", encoding="utf-8") as handle:
            command = [sys.executable, "-m", "evs_framework.cli", *argv, "--worker", f"{index}/{count}"]
            workers.append((log, subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)))
    failed = [(log, worker.wait()) for log, worker in workers]
    failed = [(log, code) for log, code in failed if code != 0]
    if failed:
        raise EVSError(f"{len(failed)} of {count} bench workers failed (the first exited {failed[0][1]}; its log: "
                       f"{failed[0][0]}); the rows measured are kept in {files.rows}: rerun the command to finish")
