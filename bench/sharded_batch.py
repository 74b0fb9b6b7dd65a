"""A batch through `evs run` as a user starts it: a manifest of synthetic clips, the seed's enhance config at full
size (random weights in the real formats, bench/full_size.py), once per process count in --processes.

For each count: wall time, time to the first output (from the job's start, loading included), clips per hour, each
process's load time and GPU peak memory (the largest op peak in its sidecars), and whether every output is
byte-identical to the first count's run (else the largest pixel difference). One JSON line per run in
$OUT/sharded.jsonl (or bench/results/sharded.jsonl) as it finishes.

    python bench/sharded_batch.py --clips 16 --processes 1,2      # on a machine with 2 GPUs
    python bench/sharded_batch.py --tiny --device cpu --clips 4 --processes 1,2   # a smoke test on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

PROMPT = "a red car on a coastal road"


def write_job(folder: Path, clips: int, frames: int, size: tuple[int, int], processes: int) -> Path:
    from evs_framework.io import video_io
    from evs_framework.testing.zoo import make_synthetic_clip

    rows = []
    for index in range(clips):
        path = folder / "clips" / f"clip{index:03d}.mp4"
        if not path.is_file():
            video_io.write_video(path, make_synthetic_clip(frames, *size, seed=index), 8.0)
        rows.append(json.dumps({"video": f"clips/{path.name}", "prompt": PROMPT}))
    (folder / "clips.jsonl").write_text("\n".join(rows) + "\n")
    spec = folder / f"job-{processes}.json"
    spec.write_text(json.dumps({
        "inputs": {"manifest": "clips.jsonl"}, "composition": "IDM_VDM_IDM",
        "models": {"idm": {"name": "EP", "upscale": 2.0}, "vdm": {"name": "lightningEP"}},
        "settings": {"stable_steps": [8]}, "seed": 23,
        "output": {"dir": f"out-{processes}", "side_by_side": False}}))
    return spec


def largest_difference(first: Path, second: Path) -> float:
    from evs_framework.io import video_io

    a = video_io.read_video(first, max_frames=None).frames
    b = video_io.read_video(second, max_frames=None).frames
    return float((a - b).abs().max()) * 127.5  # in 0..255 levels


def measure(spec: Path, processes: int, weights: Path, device: str, reference: Path | None) -> dict:
    out = spec.parent / f"out-{processes}"
    command = [sys.executable, "-m", "evs_framework.cli", "run", str(spec), "--weights-dir", str(weights),
               "--device", device, "--overwrite", "-q", "--processes", str(processes)]
    launched, started = time.time(), time.perf_counter()
    code = subprocess.run(command).returncode
    wall = time.perf_counter() - started
    report = json.loads((out / "job-report.json").read_text())
    sidecars = [json.loads(Path(v["sidecar"]).read_text()) for v in report["videos"] if v["sidecar"]]
    peaks = {}
    for sidecar in sidecars:
        peak = max((op["peak_memory_bytes"] or 0) for op in sidecar["ops"])
        peaks[sidecar["device"]] = max(peaks.get(sidecar["device"], 0), peak)
    first_output = min(Path(v["output"]).stat().st_mtime for v in report["videos"] if v["output"]) - launched
    identical, largest = None, None
    if reference is not None:
        names = sorted(p.name for p in reference.glob("*.mp4"))
        identical = all((reference / n).read_bytes() == (out / n).read_bytes() for n in names)
        if not identical:
            largest = max(largest_difference(reference / n, out / n) for n in names)
    written = report["counts"]["written"]
    return {"event": "sharded_batch", "processes": processes, "exit_code": code, "clips": len(report["videos"]),
            "written": written, "failed": report["counts"]["failed"], "wall_s": round(wall, 2),
            "job_s": report["seconds"], "first_output_s": round(first_output, 2),
            "clips_per_hour": round(3600 * written / wall, 1),
            "per_process": [{k: p[k] for k in ("index", "device", "videos", "load_seconds", "seconds")}
                            for p in report["processes"]],
            "peak_gib_per_device": {d: round(b / 2**30, 2) for d, b in peaks.items()},
            "median_clip_s": round(float(np.median([s["seconds"] for s in sidecars])), 2) if sidecars else None,
            "identical_to_first": identical, "largest_difference_levels": largest}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/evs-sharded"))
    parser.add_argument("--weights", type=Path, default=Path("/tmp/evs-full-size"))
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny models and 64x48 clips")
    args = parser.parse_args()
    out = Path(os.environ["OUT"]) / "sharded.jsonl" if "OUT" in os.environ else \
        Path(__file__).parent / "results" / "sharded.jsonl"
    if args.tiny:
        from evs_framework.testing.zoo import build_tiny_zoo

        weights, size = build_tiny_zoo(args.weights), (64, 48)
    else:
        from full_size import build_weights

        weights, size = build_weights(args.weights), (512, 320)
    reference = None
    for processes in (int(p) for p in args.processes.split(",")):
        spec = write_job(args.folder, args.clips, args.frames, size, processes)
        line = measure(spec, processes, weights, args.device, reference)
        line["date"] = time.strftime("%Y-%m-%d")
        print(json.dumps(line), flush=True)
        with open(out, "a") as handle:
            handle.write(json.dumps(line) + "\n")
        reference = reference or spec.parent / f"out-{processes}"


if __name__ == "__main__":
    main()
