"""The toy world's edit and style inputs, as bench suites take them (`inputs: {toyworld: {kind: ...}}`).

Each is a held-out clip with one thing to change, so its ideal output is the same clip rendered with that change:
fidelity to it and the warp error along the true motion say whether structure and motion were kept, the colour share
or the style measures whether the prompt was followed.
- `edit`: the degraded clip (the seed's edit task, on a VideoCrafter-like input), its prompt's colour word changed
  half-way round the colour list; the truth is the clip in the new colour.
- `real_edit`: the same on the clean clip (footage standing for a real video).
- `style`: the clean clip with its prompt "in watercolor"; the truth is the clip drawn in watercolor.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from evs_framework.toyworld.experiment import HeldOutClip, written_clip
from evs_framework.toyworld.world import COLOURS, HELD_OUT_FIRST_SEED, ClipSpec, degrade, render, render_with_masks, sample_spec

CHANGED_KINDS = ("edit", "real_edit", "style")


def edited_colour(colour: str) -> str:
    """The colour half-way round the world's list: red -> yellow, green -> purple, blue -> orange and back."""
    names = list(COLOURS)
    return names[(names.index(colour) + len(names) // 2) % len(names)]


def changed(spec: ClipSpec, kind: str) -> ClipSpec:
    """What the clip should show after the change `kind` asks for."""
    if kind == "style":
        return attrs.evolve(spec, style="watercolor")
    return attrs.evolve(spec, colour=edited_colour(spec.colour))


def changed_clips(folder: Path, count: int, kind: str, first_seed: int = HELD_OUT_FIRST_SEED, made: bool = False
                  ) -> list[HeldOutClip]:
    """`count` held-out clips for `kind` (CHANGED_KINDS): the video is the original clip (degraded for `edit`),
    written under `folder` (`made`: there already); the spec (and so the prompt), truth and masks are those of the
    changed clip."""
    specs = [sample_spec(first_seed + i) for i in range(count)]
    clean = render(specs)
    videos = degrade(clean, seed=first_seed) if kind == "edit" else clean
    targets = [changed(spec, kind) for spec in specs]
    truths, masks = render_with_masks(targets)
    return [HeldOutClip(target, written_clip(folder / f"clip_{first_seed + i}.mp4", video, made), truth, mask)
            for i, (target, video, truth, mask) in enumerate(zip(targets, videos, truths, masks))]
