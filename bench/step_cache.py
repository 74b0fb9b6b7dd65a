"""What step caching (`models.<role>.cache`) costs in quality and saves in UNet work.

Toy world, on the CPU: IDM_VDM_IDM and IDM on held-out degraded clips with toy_enhance's settings (toyI, toyV), exact
and with caching at each interval asked (depth 1, on every role of the composition), all with the same noise seed.
Each output is measured against the clip's truth (PSNR, warp error, sharpness, ...) and against the exact run's output
(PSNR in dB, relative L2 of the frames); paired differences from the exact run come with 95% intervals; CPU seconds
per clip. The share of UNet FLOPs skipped is counted with torch.utils.flop_counter for one full and one shallow pass
of each model at its working shape, then weighted by the plan's calls. `--flops-only` counts the FLOPs alone, also for
the full-size SD1.5 UNet and AnimateDiff motion UNet (built on the meta device: no weights, no memory).

    python bench/step_cache.py --clips 8 --intervals 2,3 --results bench/results/step-cache-toyworld-2026-12-07.json
    python bench/step_cache.py --flops-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from evs_framework.api import Composer
from evs_framework.io import video_io
from evs_framework.plan import DenoiseOp
from evs_framework.toyworld.experiment import (TOY_SETTINGS, clip_measures, held_out_clips, interval, paired_difference,
                                               read_clip, toy_base)
from evs_plugins.step_cache import planned_shallow
from evs_plugins.unet_split import full_pass, shallow_pass

COMPOSITIONS = ("IDM_VDM_IDM", "IDM")
MEASURED = ("psnr", "ssim", "warp_error", "temporal_flickering", "sharpness")
SEED = 23
DEPTH = 1


def pass_flops(unet, sample: torch.Tensor, text: torch.Tensor, depth: int = DEPTH) -> dict:
    """FLOPs of one full and one shallow pass on these inputs, and the share the shallow pass skips."""

    def counted(run) -> int:
        with FlopCounterMode(display=False) as counter:
            run()
        return counter.get_total_flops()

    timestep = torch.full((), 500.0)
    with torch.no_grad():
        _, deep = full_pass(unet.forward, unet, depth, True, sample, timestep, encoder_hidden_states=text)
        full = counted(lambda: unet(sample, timestep, encoder_hidden_states=text))
        shallow = counted(lambda: shallow_pass(unet, depth, sample, timestep, text, deep))
    return {"full_gflop": round(full / 1e9, 3), "shallow_gflop": round(shallow / 1e9, 3),
            "skipped_share": round(1 - shallow / full, 4)}


def one_evaluation(unet, latent: tuple[int, int], frames: int | None, dtype=torch.float32) -> tuple:
    """Inputs of one unguided evaluation: an image (T2I) or a clip of `frames` (motion UNet)."""
    width = unet.config.cross_attention_dim
    device = next(unet.parameters()).device
    if frames is None:
        return torch.zeros(1, 4, *latent, dtype=dtype, device=device), torch.zeros(1, 77, width, dtype=dtype, device=device)
    return (torch.zeros(1, 4, frames, *latent, dtype=dtype, device=device),
            torch.zeros(frames, 77, width, dtype=dtype, device=device))


def full_size_flops() -> dict:
    """The full-size SD1.5 UNet and AnimateDiff motion UNet, on the meta device, at the example config's two sizes."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    sys.path.insert(0, str(Path(__file__).parent))
    from full_size import SD15_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET).half()
        motion = UNetMotionModel.from_unet2d(unet, MotionAdapter().half(), load_weights=False).half()
        found = {}
        for latent in ((40, 64), (80, 128)):
            for name, model, frames in (("SD1.5 UNet", unet, None), ("AnimateDiff motion UNet", motion, 16)):
                key = f"{name} at {latent[0]}x{latent[1]}" + (f", {frames} frames" if frames else ", one image")
                found[key] = pass_flops(model, *one_evaluation(model, latent, frames, torch.float16))
    return found


def toy_flops(composer: Composer) -> dict:
    """Per role of the composer's plan: one evaluation's full and shallow FLOPs at the toy clip's latent size."""
    found = {}
    for role, backend in composer.backends.items():
        frames = 16 if type(backend.unet).__name__ == "UNetMotionModel" else None
        found[role] = pass_flops(backend.unet, *one_evaluation(backend.unet, (16, 16), frames))
    return found


def skipped_share(plan, flops: dict) -> float:
    """The share of the run's UNet FLOPs that its shallow steps skip (every call of a role has one shape; the toy's
    euler steps make the same calls each)."""
    total = skipped = 0.0
    for role, counts in plan.totals().items():
        cache = plan.models[role].choice.cache
        ops = [op for op in plan.ops if isinstance(op, DenoiseOp) and op.model == role]
        per_step = ops[0].unet_calls / ops[0].steps if ops else 0
        shallow_calls = planned_shallow(plan, role, cache.interval)[0] * per_step if cache else 0
        full = flops[role]["full_gflop"]
        total += counts["unet_calls"] * full
        skipped += shallow_calls * (full - flops[role]["shallow_gflop"])
    return skipped / total


def against_exact(output: torch.Tensor, exact: torch.Tensor) -> dict:
    mse = float(((output - exact) ** 2).mean())
    return {"psnr_vs_exact": float("inf") if mse == 0 else 10 * float(torch.log10(torch.tensor(4.0 / mse))),
            "relative_l2_vs_exact": float((output - exact).norm() / exact.norm())}


def composer_for(composition: str, cache: int | None) -> Composer:
    data = toy_base()
    if cache is not None:
        for choice in data["models"].values():
            choice["cache"] = {"interval": cache, "depth": DEPTH}
    return Composer({**data, "composition": composition}, device="cpu")


def summarised(rows: list[dict], plans: dict, skipped: dict) -> dict:
    """Per run label: its plan line, calls, CPU seconds and measures; for a cached run also the difference from the
    exact run (paired by clip, 95% intervals) and the share of UNet FLOPs it skipped."""
    summary = {}
    for label, plan in plans.items():
        mine = [r for r in rows if r["composition"] == label]
        exact = label.split(" ")[0] + " exact"
        summary[label] = {"plan": plan, "unet_calls": mine[0]["unet_calls"],
                          "cpu_seconds": interval([r["cpu_seconds"] for r in mine]),
                          "measures": {name: interval([r[name] for r in mine]) for name in MEASURED}}
        if label != exact:
            summary[label]["unet_flops_skipped_share"] = skipped[label]
            summary[label]["against_exact"] = {name: interval([r[name] for r in mine])
                                               for name in ("psnr_vs_exact", "relative_l2_vs_exact")}
            summary[label]["minus_exact"] = {name: paired_difference(rows, label, exact, name)
                                             for name in (*MEASURED, "cpu_seconds")}
    return summary


def toyworld(args, found: dict) -> None:
    """Clip by clip, every run of it (so a run cut short leaves paired rows), the summary written after each clip."""
    clips = held_out_clips(args.out / "clips", args.clips)
    composers, plans, flops, skipped = {}, {}, {}, {}
    for composition in args.compositions:
        for cache in (None, *args.intervals):
            label = f"{composition} " + ("exact" if cache is None else f"interval {cache}")
            composers[label] = composer = composer_for(composition, cache)
            plans[label] = next((e.detail for e in composer.plan.extras if e.name == "step_cache"), "exact")
            if cache is not None:
                flops[composition] = flops.get(composition) or toy_flops(composer)
                skipped[label] = round(skipped_share(composer.plan, flops[composition]), 4)
    found.update({"compositions": args.compositions, "seed": SEED, "depth": DEPTH, "settings": TOY_SETTINGS,
                  "pass_flops": flops})
    rows = []
    for done, clip in enumerate(clips, 1):
        frames = ((read_clip(clip.video).permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1)
        exact_outputs = {}
        for label, composer in composers.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            result = composer(frames, clip.spec.prompt, seed=SEED)
            row = {"composition": label, "clip": clip.video.stem, "seed": SEED, "seconds": time.perf_counter() - started,
                   "cpu_seconds": time.process_time() - cpu_started, "unet_calls": result.record["unet_calls"]}
            output = result.frames.permute(0, 3, 1, 2) * 2 - 1
            row.update(clip_measures(output, clip))
            composition = label.split(" ")[0]
            if label.endswith("exact"):
                exact_outputs[composition] = output
            else:
                row.update(against_exact(output, exact_outputs[composition]))
            rows.append(row)
            with open(args.out / "rows.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("composition", "clip", "psnr", "cpu_seconds")}), flush=True)
        found.update({"clips": done, "summary": summarised(rows, plans, skipped)})
        write(args, found)


def write(args, found: dict) -> None:
    video_io.write_json(args.results, {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, **found})


def format_rows(found: dict) -> str:
    lines = ["| run | PSNR dB | warp error | sharpness | PSNR against exact dB | CPU s/clip | UNet FLOPs skipped |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, values in found["summary"].items():
        def cell(name):
            v = values["measures"][name]
            return f"{v['mean']:.4g} [{v['low']:.4g}, {v['high']:.4g}]"
        exact = values.get("against_exact", {}).get("psnr_vs_exact")
        lines.append(f"| {label} | {cell('psnr')} | {cell('warp_error')} | {cell('sharpness')} | "
                     + (f"{exact['mean']:.1f} [{exact['low']:.1f}, {exact['high']:.1f}]" if exact else "-")
                     + f" | {values['cpu_seconds']['mean']:.2f} | "
                     + (f"{values['unet_flops_skipped_share']:.1%}" if exact else "-") + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--compositions", default=",".join(COMPOSITIONS))
    parser.add_argument("--intervals", default="2,3")
    parser.add_argument("--out", type=Path, default=Path("outputs/step-cache"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "step-cache-toyworld.json")
    parser.add_argument("--flops-only", action="store_true")
    args = parser.parse_args()
    args.intervals = [int(i) for i in args.intervals.split(",")]
    args.compositions = args.compositions.split(",")
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    found = {"full_size_pass_flops": full_size_flops()}
    print(json.dumps(found), flush=True)
    write(args, found)
    if not args.flops_only:
        toyworld(args, found)
        print(format_rows(found))
    print(json.dumps({"results": str(args.results)}))


if __name__ == "__main__":
    main()
