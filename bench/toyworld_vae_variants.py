"""Train toy-VAE variants side by side on one GPU and keep the one whose brightest corner is drawn most like the
others (issue 21's corner ring), among those within 1.5 dB of the best held-out PSNR.

    python bench/toyworld_vae_variants.py --work DIR --minutes 4 --out results.jsonl \
        --variant "seed 0" --variant "seed 0 --border-weight 4" ...

Each variant is `python -m evs_framework.toyworld.train --stage vae` with its own flags in DIR/variants/<i>; the chosen
one's vae/ and vae.json are copied to DIR. One JSON line per variant goes to --out as each is measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

PSNR_SLACK_DB = 1.5


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--variant", action="append", required=True, help="train.py flags, e.g. '--seed 1'")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    folders = [args.work / "variants" / str(i) for i in range(len(args.variant))]
    processes = []
    for folder, flags in zip(folders, args.variant):
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "evs_framework.toyworld.train", "--stage", "vae", "--work", str(folder),
                   "--steps", "100000", "--max-minutes", str(args.minutes), "--log-every", "100", "--save-every", "0",
                   *shlex.split(flags)]
        processes.append(subprocess.Popen(command, stdout=open(folder / "log.jsonl", "w"), stderr=subprocess.STDOUT))
    rows = []
    for folder, flags, process in zip(folders, args.variant, processes):
        code = process.wait()
        summary = json.loads((folder / "vae.json").read_text()) if code == 0 else {}
        row = {"variant": flags, "exit": code, **{k: v for k, v in summary.items() if k != "losses"}}
        rows.append((folder, row))
        with args.out.open("a") as out:
            out.write(json.dumps(row) + "\n")
    finished = [(folder, row) for folder, row in rows if row["exit"] == 0]
    if not finished:
        raise SystemExit("no variant finished: see DIR/variants/*/log.jsonl")
    best_psnr = max(row["held_out_psnr_db"] for _, row in finished)
    near = [(folder, row) for folder, row in finished if row["held_out_psnr_db"] >= best_psnr - PSNR_SLACK_DB]
    folder, row = min(near, key=lambda item: item[1]["held_out_brightest_corner_error_ratio"])
    shutil.rmtree(args.work / "vae", ignore_errors=True)
    shutil.copytree(folder / "vae", args.work / "vae")
    summary = json.loads((folder / "vae.json").read_text())
    summary["note"] = f"chosen among {len(args.variant)} variants trained side by side: {row['variant']}"
    (args.work / "vae.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({"chosen": row["variant"], "ratio": row["held_out_brightest_corner_error_ratio"],
                      "psnr": row["held_out_psnr_db"]}))


if __name__ == "__main__":
    main()
