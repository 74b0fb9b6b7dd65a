"""Does running the T2V window at the source size cost quality? The toy world's answer.

IDM_VDM_IDM with the T2I upscaling x2 (toyI at 256x256, as EP_X2.0 runs EP at 1024x640), on held-out clips whose
truth is rendered at 256x256, four ways: the T2V at the trajectory's size (the faithful default) or at the source
size (`models.vdm.source_size`), each with the seed's ddim re-entry into the T2I and with random re-entry. Paired
differences against the faithful default, with 95% intervals. Rows go to --out/rows.jsonl as they are measured (a
rerun reuses them); the summary to --results.

    python bench/toyworld_source_size.py --clips 8 --seeds 23,24
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from evs_framework.io import video_io
from evs_framework.loading import LoadContext, WeightSettings, default_weight_folders
from evs_framework.plugins import load_plugins
from evs_framework.registry import load_registry
from evs_framework.toyworld.experiment import format_table, held_out_clips, paired_difference, run_compositions, summarise

UPSCALED = {"idm": {"upscale": 2.0}}
AT_SOURCE = {"idm": {"upscale": 2.0}, "vdm": {"source_size": True}}
RANDOM_RE_ENTRY = {"idm_invert_mode_2": "random"}
VARIANTS = {
    "T2V at 256 (default), ddim re-entry": (UPSCALED, {}),
    "T2V at 256 (default), random re-entry": (UPSCALED, RANDOM_RE_ENTRY),
    "T2V at 128 (source size), ddim re-entry": (AT_SOURCE, {}),
    "T2V at 128 (source size), random re-entry": (AT_SOURCE, RANDOM_RE_ENTRY),
}
COMPARED = ("psnr", "ssim", "warp_error", "temporal_flickering", "sharpness")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seeds", default="23,24")
    parser.add_argument("--out", type=Path, default=Path("outputs/toyworld-source-size"))
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).parent / "results" / "toyworld-source-size.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    plugins, registry = load_plugins(), load_registry()
    context = LoadContext(plugins, registry, WeightSettings(default_weight_folders()))
    clips = held_out_clips(args.out / "clips", args.clips, truth_scale=2)
    rows = []
    for label, (models, settings) in VARIANTS.items():
        rows += run_compositions(clips, ["IDM_VDM_IDM"], seeds, args.out, registry, plugins, context, settings,
                                 rows_file=args.out / "rows.jsonl", label=label, models=models)
    summary = summarise(rows)
    default = next(iter(VARIANTS))
    differences = {label: {name: paired_difference(rows, label, default, name) for name in COMPARED}
                   for label in list(VARIANTS)[1:]}
    video_io.write_json(args.results, {"clips": args.clips, "seeds": seeds, "summary": summary,
                                       "against_default": differences})
    print(format_table(summary))
    for label, found in differences.items():
        print(f"{label} minus the default: " + ", ".join(
            f"{name} {d['mean']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}]" for name, d in found.items()))
    print(json.dumps({"results": str(args.results)}))


if __name__ == "__main__":
    main()
