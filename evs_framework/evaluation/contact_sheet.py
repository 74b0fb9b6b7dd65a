"""Pictures for people: labelled panels for side-by-side videos, and a PNG contact sheet (a row a clip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from evs_framework.io.video_io import atomic_path

LABEL_HEIGHT = 14


def labelled(frames: torch.Tensor, label: str) -> torch.Tensor:
    """(F, 3, H, W) frames in [-1, 1] with a black bar of `label` text above them."""
    bar = Image.new("RGB", (frames.shape[-1], LABEL_HEIGHT))
    ImageDraw.Draw(bar).text((2, 1), label, fill=(255, 255, 255), font=ImageFont.load_default())
    header = torch.from_numpy(np.array(bar)).permute(2, 0, 1).float() / 127.5 - 1.0
    return torch.cat([header.expand(frames.shape[0], -1, -1, -1).to(frames), frames], dim=-2)


def contact_sheet(rows: list[tuple[str, np.ndarray]], every: int, cell_height: int = 96) -> Image.Image:
    """One row per (label, uint8 (T, H, W, 3) frames): frames 0, every, 2*every, ... scaled to `cell_height`,
    after a label column."""
    label_width = 8 + 7 * max(len(label) for label, _ in rows)
    picked = [(label, frames[::every]) for label, frames in rows]
    cell_widths = [round(frames.shape[2] * cell_height / frames.shape[1]) for _, frames in picked]
    columns = max(len(frames) for _, frames in picked)
    sheet = Image.new("RGB", (label_width + columns * max(cell_widths), len(rows) * cell_height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for r, ((label, frames), width) in enumerate(zip(picked, cell_widths)):
        draw.text((4, r * cell_height + cell_height // 2 - 6), label, fill=(255, 255, 255), font=ImageFont.load_default())
        for c, frame in enumerate(frames):
            cell = Image.fromarray(frame).resize((width, cell_height), Image.Resampling.BILINEAR)
            sheet.paste(cell, (label_width + c * max(cell_widths), r * cell_height))
    return sheet


def save_png(image: Image.Image, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path, ".png") as partial:
        image.save(partial, format="PNG")
    return path
