"""The cost of each row against what it buys: for each measure, a scatter of the rows against UNet calls per clip
and against seconds per clip, the Pareto front (no row both cheaper and better) marked, drawn with PIL."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from evs_framework.io.video_io import atomic_path

PANEL = (420, 280)
MARGIN = 48
FRONT, OTHER, INK, GRID = (214, 39, 40), (140, 140, 140), (20, 20, 20), (225, 225, 225)


def pareto_front(points: list[tuple[float, float]], lower_is_better: bool = False) -> list[bool]:
    """For each (cost, value) point, whether it is on the front: no other point costs no more and is at least as
    good, and strictly cheaper or better."""
    def better(a: float, b: float) -> bool:
        return a < b if lower_is_better else a > b

    def dominates(p, q) -> bool:
        no_worse = p[0] <= q[0] and (p[1] == q[1] or better(p[1], q[1]))
        return no_worse and (p[0] < q[0] or better(p[1], q[1]))

    return [not any(dominates(p, q) for j, p in enumerate(points) if j != i) for i, q in enumerate(points)]


def _panel(title: str, x_name: str, labels: list[str], points: list[tuple[float, float]], lower: bool) -> Image.Image:
    image = Image.new("RGB", PANEL, "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    draw.text((MARGIN, 6), f"{title} ({'lower' if lower else 'higher'} is better) vs {x_name}", fill=INK, font=font)
    shown = [(label, p) for label, p in zip(labels, points) if all(math.isfinite(v) for v in p)]
    if not shown:
        return image
    on_front = pareto_front([p for _, p in shown], lower)
    xs, ys = [p[0] for _, p in shown], [p[1] for _, p in shown]
    (x0, x1), (y0, y1) = _span(xs), _span(ys)
    left, top, right, bottom = MARGIN, 24, PANEL[0] - 12, PANEL[1] - 30

    def at(p):
        return (left + (p[0] - x0) / (x1 - x0) * (right - left), bottom - (p[1] - y0) / (y1 - y0) * (bottom - top))

    draw.rectangle((left, top, right, bottom), outline=GRID)
    for value, y in ((y0, bottom), (y1, top)):
        draw.text((2, y - 6), f"{value:.3g}", fill=INK, font=font)
    for value, x in ((x0, left), (x1, right)):
        draw.text((x - 12, bottom + 4), f"{value:.3g}", fill=INK, font=font)
    draw.text(((left + right) // 2 - 30, bottom + 16), x_name, fill=INK, font=font)
    front = sorted(at(p) for (_, p), on in zip(shown, on_front) if on)
    if len(front) > 1:
        draw.line(front, fill=FRONT, width=1)
    for (label, p), on in zip(shown, on_front):
        x, y = at(p)
        colour = FRONT if on else OTHER
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour if on else None, outline=colour, width=2)
        width = draw.textlength(label, font=font)
        draw.text((x + 6 if x + 6 + width < PANEL[0] else x - 6 - width, y - 6), label, fill=colour, font=font)
    return image


def _span(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
    return low - pad, high + pad


def draw_pareto(summary: dict, measures: list[str], lower_is_better, path: Path) -> Path:
    """A row of two panels per measure (against UNet calls per clip, against seconds per clip) over the rows of
    `summary` that ran a model (the source rows cost nothing and are left out), written as a PNG."""
    rows = {label: values for label, values in summary.items() if "unet_calls_per_clip" in values}
    labels = list(rows)
    sheet = Image.new("RGB", (2 * PANEL[0], max(1, len(measures)) * PANEL[1]), "white")
    for r, name in enumerate(measures):
        for c, (cost, x_name) in enumerate((("unet_calls_per_clip", "UNet calls per clip"),
                                            ("seconds", "seconds per clip"))):
            points = [(float(rows[label][cost]), rows[label][name]["mean"]) for label in labels]
            sheet.paste(_panel(name, x_name, labels, points, name in lower_is_better), (c * PANEL[0], r * PANEL[1]))
    with atomic_path(path, ".png") as partial:
        sheet.save(partial, format="PNG")
    return path
