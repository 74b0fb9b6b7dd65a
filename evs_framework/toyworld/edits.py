"""Edits in the toy world: a prompt that changes the shape's colour, measured against the edited clip.

An edit here changes only the colour word of a held-out clip's prompt, so its ideal output is the same clip
rendered in the new colour: fidelity to that clip and the warp error along the true motion say whether the
structure and motion were kept, the colour share whether the prompt was followed. Three uses are measured, with
the seed's edit settings (T2I strength 0.6, T2V strength 0.5): `edit` (its edit task: a VideoCrafter-like degraded
input, random inversion), `real_edit` (a clean clip standing for real footage, DDIM inversion) and
`real_edit+SFI`, the same with Selective Feature Injection.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from evs_framework.io import video_io
from evs_framework.toyworld.experiment import FPS, HeldOutClip, paired_difference, run_compositions
from evs_framework.toyworld.world import COLOURS, HELD_OUT_FIRST_SEED, degrade, render, render_with_masks, sample_spec

EDIT_SETTINGS = {"idm_inverse_strength": 0.6, "vdm_inverse_strength": 0.5}


@attrs.frozen
class EditUse:
    input: str  # "degraded" or "clean"
    idm_invert_mode: str
    using_attn: bool


USES = {"edit": EditUse("degraded", "random", False), "real_edit": EditUse("clean", "ddim", False),
        "real_edit+SFI": EditUse("clean", "ddim", True)}
COMPARED = (("real_edit+SFI", "real_edit"), ("real_edit", "edit"))
EDIT_MEASURES = ("psnr", "ssim", "warp_error", "colour")


def edited_colour(colour: str) -> str:
    """The colour half-way round the world's list: red -> yellow, green -> purple, blue -> orange and back."""
    names = list(COLOURS)
    return names[(names.index(colour) + len(names) // 2) % len(names)]


def edit_clips(folder: Path, count: int, first_seed: int = HELD_OUT_FIRST_SEED) -> dict[str, list[HeldOutClip]]:
    """For each input kind, `count` held-out clips whose spec, truth and masks are the edited clip's and whose video
    is the original clip, clean or degraded, written under `folder`."""
    specs = [sample_spec(first_seed + i) for i in range(count)]
    clean = render(specs)
    inputs = {"clean": clean, "degraded": degrade(clean, seed=first_seed)}
    edited = [attrs.evolve(spec, colour=edited_colour(spec.colour)) for spec in specs]
    truths, masks = render_with_masks(edited)
    return {kind: [HeldOutClip(spec, video_io.write_video(folder / kind / f"clip_{first_seed + i}.mp4", frames, FPS),
                               truth, mask)
                   for i, (spec, frames, truth, mask) in enumerate(zip(edited, videos, truths, masks))]
            for kind, videos in inputs.items()}


def run_edits(clips: dict[str, list[HeldOutClip]], seeds, out_dir: Path, registry, plugins, context,
              progress: bool = False, rows_file: Path | None = None) -> list[dict]:
    """IDM_VDM_IDM for every use on every clip and seed; each row's composition is the use's name."""
    rows = []
    for name, use in USES.items():
        settings = {**EDIT_SETTINGS, "idm_invert_mode": use.idm_invert_mode}
        rows += run_compositions(clips[use.input], ["IDM_VDM_IDM"], seeds, out_dir / name, registry, plugins, context,
                                 settings, progress, rows_file, using_attn=use.using_attn, label=name)
    return rows


def differences(rows: list[dict]) -> list[dict]:
    return [{"composition": a, "against": b, "measure": m, **paired_difference(rows, a, b, m)}
            for a, b in COMPARED for m in EDIT_MEASURES]
