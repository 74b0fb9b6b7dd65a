"""Held-out toy-world clips through several compositions, measured against their ground truth.

Each held-out clip is rendered clean, degraded, and written as an mp4: the input a user would have. Every
composition runs on every clip for each noise seed through the same runner as `evs run` (the models load once),
its output mp4 is read back and measured against the clean clip (evs_framework.toyworld.measures). The summary
gives each measure's mean with a 95% t-interval over (clip, seed) runs, and paired differences between
compositions with their intervals, so a claim such as "EVS is temporally more consistent than the T2I alone" is
a number with its uncertainty.
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import torch
from scipy import stats

from evs_framework.bench.runs import run_cells
from evs_framework.bench.suite import Cell
from evs_framework.errors import EVSError
from evs_framework.io import video_io
from evs_framework.toyworld.measures import LOWER_IS_BETTER, measure, measure_free
from evs_framework.toyworld.world import HELD_OUT_FIRST_SEED, ClipSpec, degrade, render_with_masks, sample_spec

FPS = 8.0
# the seed's example enhance settings, on the toy models' schedules (25 T2I steps, 8 T2V steps) and at their size
TOY_SETTINGS = {"idm_invert_mode": "random", "vdm_invert_mode": "random", "idm_invert_mode_2": "ddim",
                "idm_inverse_strength": 0.5, "vdm_inverse_strength": 0.5, "stable_steps": [5], "stable_num": 2}
TOY_MODELS = {"idm": {"name": "toyI"}, "vdm": {"name": "toyV"}}
MEASURES = ("psnr", "ssim", "warp_error", "temporal_flickering", "sharpness", "texture_sharpness", "motion", "colour")
FREE_MEASURES = ("texture_sharpness_free", "motion_in_class", "warp_error_free", "temporal_flickering", "colour_free",
                 "shape")  # for inputs without ground truth
STYLE_MEASURES = ("wash_paleness", "rim_darkening")  # the watercolor style's, with or without a truth


@attrs.frozen
class HeldOutClip:
    spec: ClipSpec  # what the output should show; its prompt is the run's
    video: Path  # the input of a run: the degraded clip, or one the VC2 analogue drew
    truth: torch.Tensor | None  # (T, 3, H, W) clean frames in [-1, 1]; None for a drawn clip, which has none
    masks: torch.Tensor | None  # (T, H, W) where the shape is


def held_out_clips(folder: Path, count: int, first_seed: int = HELD_OUT_FIRST_SEED, truth_scale: int = 1,
                   made: bool = False) -> list[HeldOutClip]:
    """`count` held-out clips from `first_seed` on, their degraded versions written under `folder` (`made`: they
    are there already); the truth is rendered `truth_scale` times larger (the scene is resolution-free), for
    compositions that upscale."""
    specs = [sample_spec(first_seed + i) for i in range(count)]
    clean, masks = render_with_masks(specs)
    degraded = degrade(clean, seed=first_seed)
    if truth_scale != 1:
        clean, masks = render_with_masks(specs, size=clean.shape[-1] * truth_scale)
    return [HeldOutClip(spec, written_clip(folder / f"clip_{first_seed + i}.mp4", bad, made), truth, mask)
            for i, (spec, bad, truth, mask) in enumerate(zip(specs, degraded, clean, masks))]


def written_clip(path: Path, frames: torch.Tensor, made: bool) -> Path:
    """`path` with `frames` written to it, or (`made`) as another process wrote it."""
    if made:
        if not path.is_file():
            raise EVSError(f"{path} is missing; the clips are made before the runs: rerun without --worker")
        return path
    return video_io.write_video(path, frames, FPS)


def drawn_clips(folder: Path, count: int, context, first_seed: int = HELD_OUT_FIRST_SEED, model: str = "toyVC",
                made: bool = False) -> list[HeldOutClip]:
    """`count` clips drawn from noise by `model` (the VideoCrafter-2 analogue) from held-out clips' prompts, as the
    paper's enhance inputs are VideoCrafter-2 outputs, written under `folder` (`made`: drawn there already); they
    have no ground truth."""
    from evs_framework.toyworld.premises import draw

    specs = [sample_spec(first_seed + i) for i in range(count)]
    paths = [folder / f"{model}_{first_seed + i}.mp4" for i in range(count)]
    if made:
        return [HeldOutClip(spec, written_clip(path, None, True), None, None) for spec, path in zip(specs, paths)]
    backend = context.load(context.registry.get(model))
    return [HeldOutClip(spec, video_io.write_video(path, draw(backend, spec.prompt, False, first_seed + i), FPS),
                        None, None) for i, (spec, path) in enumerate(zip(specs, paths))]


def clip_measures(output: torch.Tensor, clip: HeldOutClip) -> dict:
    """Every measure of a run's output: against the clip's truth where it has one, else the reference-free ones."""
    if clip.truth is None:
        return measure_free(output, clip.spec.prompt)
    return measure(output, clip.truth, clip.masks, clip.spec.step(clip.truth.shape[-1]), clip.spec.prompt)


def toy_base(settings: dict | None = None, using_attn: bool = False, models: dict | None = None) -> dict:
    """The spec data the toy runs share; `models` adds to each role's TOY_MODELS choice (an upscale, say)."""
    return {"models": {role: {**choice, **(models or {}).get(role, {})} for role, choice in TOY_MODELS.items()},
            "settings": {**TOY_SETTINGS, **(settings or {})}, "negative_prompt": "", "video": {"max_frames": 16},
            "using_attn": using_attn}


def read_clip(path: Path) -> torch.Tensor:
    return video_io.read_video(path, max_frames=None).frames


def source_rows(clips: list[HeldOutClip]) -> list[dict]:
    return [{"composition": "source", "clip": c.video.stem, "seed": None, **clip_measures(read_clip(c.video), c)}
            for c in clips]


def run_compositions(clips: list[HeldOutClip], compositions, seeds, out_dir: Path, registry, plugins, context,
                     settings: dict | None = None, progress: bool = False, rows_file: Path | None = None,
                     using_attn: bool = False, label: str | None = None, models: dict | None = None) -> list[dict]:
    """One row per (composition, clip, seed) with every measure (bench.runs.run_cells, which keeps rows in
    `rows_file`). `label` names the rows' composition instead of the composition's own name (for runs that differ
    in settings); `models` adds to the toy models' choices (toy_base)."""
    cells = [Cell(label or composition, composition, {}) for composition in compositions]
    inputs = [{"video": str(c.video), "prompt": c.spec.prompt} for c in clips]
    return run_cells(inputs, cells, seeds, toy_base(settings, using_attn, models),
                     lambda output, index: clip_measures(read_clip(output), clips[index]), out_dir, registry, plugins,
                     context, rows_file, progress)


def interval(values: list[float]) -> dict:
    """Mean and its 95% t-interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "low": mean, "high": mean, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def summarise(rows: list[dict]) -> dict:
    """Per composition: each measure's mean and interval (the reference-free ones where the clips have no truth),
    UNet calls per run and CPU seconds per clip."""
    summary = {}
    names = MEASURES if all("psnr" in r for r in rows) else FREE_MEASURES
    for composition in dict.fromkeys(r["composition"] for r in rows):
        mine = [r for r in rows if r["composition"] == composition]
        summary[composition] = {name: interval([r[name] for r in mine]) for name in names}
        if "unet_calls" in mine[0]:
            summary[composition]["unet_calls"] = mine[0]["unet_calls"]
            summary[composition]["cpu_seconds"] = interval([r["cpu_seconds"] for r in mine])["mean"]
    return summary


def paired_difference(rows: list[dict], better: str, than: str, name: str, lower_is_better=LOWER_IS_BETTER) -> dict:
    """`better` minus `than` on measure `name`, paired by (clip, seed) (a source row pairs with every seed);
    `lower_is_better` names the measures for which a negative difference is the improvement."""
    reference = {(r["clip"], r["seed"]): r[name] for r in rows if r["composition"] == than}
    differences = []
    for r in rows:
        if r["composition"] == better:
            key = (r["clip"], r["seed"]) if (r["clip"], r["seed"]) in reference else (r["clip"], None)
            differences.append(r[name] - reference[key])
    result = interval(differences)
    # True when the whole interval says `better` is better (lower, for a lower-is-better measure)
    result["improves"] = result["high"] < 0 if name in lower_is_better else result["low"] > 0
    return result


def format_table(summary: dict, intervals: bool = True) -> str:
    """A markdown table: a row per composition, mean [95% interval] per measure, UNet calls, CPU seconds per clip."""
    first = next(iter(summary.values()))
    measures = [m for m in dict.fromkeys((*MEASURES, *FREE_MEASURES)) if m in first]
    header = ["composition", *measures, "unet calls", "CPU s/clip"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for composition, values in summary.items():
        cells = [f"{values[m]['mean']:.4g}" + (f" [{values[m]['low']:.4g}, {values[m]['high']:.4g}]" if intervals else "")
                 for m in measures]
        calls = " ".join(f"{role} {n}" for role, n in values.get("unet_calls", {}).items()) or "-"
        seconds = f"{values['cpu_seconds']:.2f}" if "cpu_seconds" in values else "-"
        lines.append("| " + " | ".join([composition, *cells, calls, seconds]) + " |")
    return "\n".join(lines)


# The method's claim, as comparisons: (composition, against, measure)
CLAIMS = (("IDM_VDM_IDM", "IDM", "warp_error"), ("IDM_VDM_IDM", "IDM", "temporal_flickering"),
          ("IDM_VDM_IDM", "VDM", "psnr"), ("IDM_VDM_IDM", "VDM", "ssim"), ("IDM_VDM_IDM", "VDM", "sharpness"),
          ("IDM_VDM_IDM", "VDM", "texture_sharpness"), ("IDM_VDM_IDM", "IDM", "motion"),
          ("IDM_VDM_IDM", "basic", "psnr"), ("IDM_VDM_IDM", "source", "psnr"),
          ("IDM_VDM_IDM", "videoelevator", "psnr"), ("IDM_VDM_IDM", "videoelevator", "warp_error"),
          # inputs without ground truth
          ("IDM_VDM_IDM", "IDM", "warp_error_free"), ("IDM_VDM_IDM", "VDM", "texture_sharpness_free"),
          ("IDM_VDM_IDM", "source", "warp_error_free"), ("IDM_VDM_IDM", "source", "texture_sharpness_free"),
          ("IDM_VDM_IDM", "videoelevator", "texture_sharpness_free"))


def claims(rows: list[dict]) -> list[dict]:
    present = {r["composition"] for r in rows}
    return [{"composition": a, "against": b, "measure": m, **paired_difference(rows, a, b, m)}
            for a, b, m in CLAIMS if a in present and b in present and all(m in r for r in rows)]


def format_claims(found: list[dict]) -> str:
    lines = []
    for c in found:
        verdict = "yes" if c["improves"] else "no: the 95% interval of the difference reaches the wrong side of 0"
        lines.append(f"- {c['composition']} better than {c['against']} on {c['measure']}: {verdict}; difference "
                     f"{c['mean']:+.4g} [{c['low']:+.4g}, {c['high']:+.4g}] over {c['n']} runs")
    return "\n".join(lines)
