"""Rows: every (cell, clip, seed) run through the normal runner and measured, each row appended to a rows file as
soon as it is known, and a (cell, seed) whose clips that file already holds under the same fingerprint not run
again, so a long bench cut short keeps what it measured."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from evs_framework.bench.suite import Cell, cell_spec_data
from evs_framework.convert import CONVERTER
from evs_framework.errors import EVSError
from evs_framework.planner import make_plan
from evs_framework.runner import run_job
from evs_framework.spec import spec_from_data

TOY_WEIGHTS = "toyworld/"  # registry entries whose weights ship with EVS, recorded by the toy models' training record


def fingerprint(base: dict, cell: Cell, registry) -> str:
    """What a row's numbers depend on besides its clip and seed: the registry entries of the models (for the shipped
    toy models, their training record too), the models' choices and every setting of the run."""
    from evs_framework.toyworld import models

    entries = {role: CONVERTER.unstructure(registry.get(choice["name"])) for role, choice in base["models"].items()}
    toy = any(str(entry["weights"].get("local") or "").startswith(TOY_WEIGHTS) for entry in entries.values())
    record = (models.EXPORT_DIR / models.TRAINING_RECORD).read_bytes() if toy else b""
    # "noise": rows from before each video drew its own noise (identity.video_seed) are not mixed with later ones
    spent = {**base, "settings": {**base["settings"], **cell.settings}, "composition": cell.composition,
             "entries": entries, "noise": "video_seed"}
    return hashlib.sha256(record + json.dumps(spent, sort_keys=True, default=str).encode()).hexdigest()[:16]


def kept_rows(rows_file: Path | None, key: str) -> list[dict]:
    """The rows of `rows_file` measured under fingerprint `key` (the latest of any repeated one)."""
    if rows_file is None or not rows_file.is_file():
        return []
    rows = {}
    for line in rows_file.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("fingerprint") == key:
            rows[row["composition"], row["clip"], row["seed"]] = row
    return list(rows.values())


def run_cells(inputs: list[dict], cells: list[Cell], seeds, base: dict, measure: Callable[[Path, int], dict],
              out_dir: Path, registry, plugins, context, rows_file: Path | None = None, progress: bool = False,
              share: tuple[int, int] | None = None) -> list[dict]:
    """One row per (cell, input, seed): the cell's label (as `composition`), each measure of the output
    (`measure(output, index of the input)`), UNet calls per role and seconds (wall and CPU) per clip. `inputs` are a
    spec's {video, prompt} items; `base` the spec data every run shares (suite.cell_spec_data). `share` (I, N):
    only every N-th (cell, seed), from the I-th on (a worker's)."""
    stems = [Path(item["video"]).stem for item in inputs]
    rows = []
    pairs = [(cell, seed) for cell in cells for seed in seeds]
    mine = pairs if share is None else pairs[share[0]::share[1]]
    keys = {cell.label: fingerprint(base, cell, registry) for cell, _ in mine}
    kept = {label: kept_rows(rows_file, key) for label, key in keys.items()}
    for cell, seed in mine:
        key = keys[cell.label]
        done = [r for r in kept[cell.label] if r["composition"] == cell.label and r["seed"] == seed and r["clip"] in stems]
        if len(done) == len(inputs):
            rows += sorted(done, key=lambda r: stems.index(r["clip"]))
            continue
        spec = spec_from_data(cell_spec_data(base, inputs, cell, seed, out_dir / cell.label / f"seed{seed}"),
                              source=f"bench row {cell.label}")
        started, cpu_started = time.perf_counter(), time.process_time()
        results = run_job(spec, make_plan(spec, registry, plugins, context), context, progress, overwrite=True)
        seconds = (time.perf_counter() - started) / len(inputs)
        cpu_seconds = (time.process_time() - cpu_started) / len(inputs)
        for position, (stem, result) in enumerate(zip(stems, results)):
            if result.error:
                kept_note = f"; the rows measured before it are kept in {rows_file}" if rows_file else ""
                raise EVSError(f"bench row {cell.label} failed on {stem} (seed {seed}): {result.error}{kept_note}")
            rows.append({"composition": cell.label, "fingerprint": key, "clip": stem, "seed": seed,
                         "unet_calls": result.unet_calls, "seconds": seconds, "cpu_seconds": cpu_seconds,
                         **measure(result.output, position)})
            if rows_file is not None:
                rows_file.parent.mkdir(parents=True, exist_ok=True)
                with open(rows_file, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(rows[-1]) + "\n")
    return rows
