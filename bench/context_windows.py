"""Do context windows leave seams? The toy world's answer on clips four times longer than toyV's 16-frame context.

Held-out toy clips of 64 frames are degraded (flicker, jitter, blur) and repaired with the VDM composition (toyV,
strength 0.5), its windows blended (the default: 16 frames, overlap 4; overlap 8; or 32 frames, overlap 8) or cut apart
(overlap 0, as the measure's own check). Per transition t -> t+1, the temporal error is how far the output's
frame-to-frame change is from the ground truth's; a seam is a transition where a window begins or ends. Reported per
variant: the mean seam error over the mean error inside windows (1 means no seam), the whole clip's temporal error
and PSNR, with 95% intervals over clips.

    python bench/context_windows.py --clips 6
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from evs_framework.api import Composer
from evs_framework.io import video_io
from evs_framework.toyworld.world import degrade, render, sample_spec

FRAMES = 64
VARIANTS = {"windows of 16, overlap 4 (default)": {"frames": 16, "overlap": 4},
            "windows of 16, overlap 8": {"frames": 16, "overlap": 8},
            "windows of 32, overlap 8": {"frames": 32, "overlap": 8},
            "windows of 16, cut apart (overlap 0)": {"frames": 16, "overlap": 0}}


def temporal_errors(out: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(out, axis=0) - np.diff(truth, axis=0)).mean(axis=(1, 2, 3))


def seam_ratio(starts: list[int], frames: int, errors: np.ndarray) -> float:
    seams = sorted({s - 1 for s in starts[1:]} | {s + frames - 1 for s in starts[:-1]})
    inside = [t for t in range(len(errors)) if t not in seams]
    return float(errors[seams].mean() / errors[inside].mean())


def psnr(out: np.ndarray, truth: np.ndarray) -> float:
    return float(10 * math.log10(255**2 / np.mean((out - truth) ** 2)))


def interval(values: list[float]) -> dict:
    mean = float(np.mean(values))
    half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": round(mean, 4), "low": round(mean - half, 4), "high": round(mean + half, 4), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "context-windows.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    composers = {label: Composer({"models": {"idm": {"name": "toyI"}, "vdm": {"name": "toyV", "context": context}},
                                  "composition": "VDM", "video": {"max_frames": None},
                                  "settings": {"vdm_inverse_strength": 0.5}}, device="cpu")
                 for label, context in VARIANTS.items()}
    rows = []
    for clip in range(args.clips):
        scene = sample_spec(10**9 + clip, frames=FRAMES)
        truth = render([scene], frames=FRAMES)[0]
        degraded = degrade(truth[None], seed=clip)[0]
        frames = ((degraded.permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()
        truth = ((truth.permute(0, 2, 3, 1) + 1) * 127.5).numpy()
        rows.append({"clip": clip, "variant": "degraded input", "temporal_error":
                     float(temporal_errors(frames.astype(np.float32), truth).mean()),
                     "psnr": psnr(frames.astype(np.float32), truth)})
        for label, composer in composers.items():
            started = time.perf_counter()
            out = composer(frames, scene.prompt, seed=23).frames.astype(np.float32)
            context = composer.plan.models["vdm"].context
            errors = temporal_errors(out, truth)
            rows.append({"clip": clip, "variant": label, "windows": context.windows(FRAMES),
                         "seam_ratio": seam_ratio(context.starts(FRAMES), context.frames, errors),
                         "temporal_error": float(errors.mean()), "psnr": psnr(out, truth),
                         "seconds": round(time.perf_counter() - started, 2)})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for label in ["degraded input", *VARIANTS]:
        chosen = [r for r in rows if r["variant"] == label]
        summary[label] = {name: interval([r[name] for r in chosen])
                          for name in ("seam_ratio", "temporal_error", "psnr") if name in chosen[0]}
    video_io.write_json(args.results, {"clips": args.clips, "frames": FRAMES, "summary": summary, "rows": rows})
    for label, measures in summary.items():
        print(label, {name: f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]" for name, m in measures.items()})


if __name__ == "__main__":
    main()
