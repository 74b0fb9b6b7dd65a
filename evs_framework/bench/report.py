"""What a bench's rows say: each row label's measures with 95% t-intervals and costs, paired differences against the
baseline, and the markdown report."""

from __future__ import annotations

import math

from evs_framework.bench.suite import SOURCE
from evs_framework.toyworld.experiment import format_claims, interval, paired_difference

RUN_KEYS = ("composition", "fingerprint", "clip", "seed", "unet_calls", "seconds", "cpu_seconds")


def measure_names(rows: list[dict], chosen=None) -> list[str]:
    """`chosen`, or every measure all the rows have, in the first row's order."""
    if chosen:
        return list(chosen)
    return [key for key in rows[0] if key not in RUN_KEYS and all(isinstance(r.get(key), (int, float)) for r in rows)]


def summarise(rows: list[dict], measures: list[str]) -> dict:
    """Per row label: each measure's mean and interval over its (clip, seed) runs; for labels that ran a model, its
    UNet calls per role, their total per clip, and mean wall and CPU seconds per clip."""
    summary = {}
    for label in dict.fromkeys(r["composition"] for r in rows):
        mine = [r for r in rows if r["composition"] == label]
        summary[label] = {name: interval([r[name] for r in mine]) for name in measures}
        if "unet_calls" in mine[0]:
            summary[label].update(unet_calls=mine[0]["unet_calls"],
                                  unet_calls_per_clip=sum(mine[0]["unet_calls"].values()),
                                  seconds=interval([r["seconds"] for r in mine])["mean"],
                                  cpu_seconds=interval([r["cpu_seconds"] for r in mine])["mean"])
    return summary


def differences(rows: list[dict], baseline: str, measures: list[str], lower_is_better) -> list[dict]:
    """Every other label minus `baseline` on each measure, paired by (clip, seed); the source rows are compared
    only when they are the baseline (they have no seed to pair with another label's)."""
    labels = [label for label in dict.fromkeys(r["composition"] for r in rows) if label not in (baseline, SOURCE)]
    return [{"composition": label, "against": baseline, "measure": name,
             **paired_difference(rows, label, baseline, name, lower_is_better)}
            for label in labels for name in measures]


def format_report(summary: dict, found: list[dict], measures: list[str], baseline: str, title: str) -> str:
    header = ["row", *measures, "UNet calls/clip", "s/clip", "CPU s/clip"]
    lines = [f"# {title}", "", "mean [95% interval] over (clip, seed) runs", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, values in summary.items():
        cells = [f"{values[m]['mean']:.4g} [{values[m]['low']:.4g}, {values[m]['high']:.4g}]" for m in measures]
        costs = ([str(values["unet_calls_per_clip"]), f"{values['seconds']:.2f}", f"{values['cpu_seconds']:.2f}"]
                 if "unet_calls" in values else ["-", "-", "-"])
        lines.append("| " + " | ".join([label, *cells, *costs]) + " |")
    lines += ["", f"## Paired differences against {baseline}", "", format_claims(found) or "(no other rows)"]
    return "\n".join(lines) + "\n"


def strict_json(value):
    """`value` with NaN and infinities as None (strict JSON has neither; a metric that does not apply is NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
