"""The real VBench, run in its own virtual environment as a subprocess (`evs eval --vbench`).

VBench 0.1.5 pins transformers 4.33 and numpy < 2, so it cannot share EVS's environment; and it downloads any
weight it misses, even in local mode. So every file the chosen dimensions need is checked first, and one error
names each missing file, where VBench expects it and where to get it. The run is offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import attrs

from evs_framework.errors import EVSError

DIMENSIONS = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
              "dynamic_degree", "aesthetic_quality", "imaging_quality")
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
# dimension -> (where, relative path, source) for each file VBench reads; where is "cache" or "torch_home"
REQUIRED = {
    "subject_consistency": [
        ("torch_home", "hub/checkpoints/dino_vitbase16_pretrain.pth", DINO_URL),
        ("cache", "dino_model/dino_vitbase16_pretrain.pth", DINO_URL),
        ("cache", "dino_model/facebookresearch_dino_main/hubconf.py", "git clone https://github.com/facebookresearch/dino"),
    ],
    "background_consistency": [("cache", "clip_model/ViT-B-32.pt", "OpenAI CLIP ViT-B/32 (openaipublic.azureedge.net)")],
    "aesthetic_quality": [
        ("cache", "clip_model/ViT-L-14.pt", "OpenAI CLIP ViT-L/14 (openaipublic.azureedge.net)"),
        ("cache", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth", "LAION-AI/aesthetic-predictor on GitHub"),
    ],
    "imaging_quality": [("cache", "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth", "IQA-PyTorch release v0.1-weights")],
    "motion_smoothness": [("cache", "amt_model/amt-s.pth", "the AMT-S checkpoint (Hugging Face lalala125/AMT)")],
    "dynamic_degree": [("cache", "raft_model/models/raft-things.pth", "RAFT's models.zip (princeton-vl/RAFT)")],
    "temporal_flickering": [],
}


@attrs.frozen
class VBenchSetup:
    python: Path  # the VBench environment's python; its `vbench` script sits beside it
    cache: Path  # VBENCH_CACHE_DIR
    torch_home: Path  # TORCH_HOME, holding hub/checkpoints/ for DINO

    @property
    def command(self) -> Path:
        return self.python.parent / "vbench"


def preflight(setup: VBenchSetup, dimensions: list[str]) -> None:
    """Raise one EVSError naming every missing piece, so VBench never starts downloading."""
    unknown = [d for d in dimensions if d not in REQUIRED]
    if unknown:
        raise EVSError(f"unknown VBench dimension(s) {', '.join(unknown)}; choose from {', '.join(DIMENSIONS)}")
    missing = []
    if not setup.command.is_file():
        missing.append(f"{setup.command}: VBench's command; make its environment with `python -m venv .vbench && "
                       f".vbench/bin/pip install vbench==0.1.5 torch torchvision`, or point --vbench-python at it")
    roots = {"cache": setup.cache, "torch_home": setup.torch_home}
    for dimension in dimensions:
        for where, relative, source in REQUIRED[dimension]:
            path = roots[where] / relative
            if not path.is_file():
                missing.append(f"{path}: needed for {dimension}; get it from {source}")
    if missing:
        raise EVSError(f"VBench cannot run offline: {len(missing)} file(s) missing (it would try to download them):\n" +
                       "\n".join(f"  - {line}" for line in missing))


def run_vbench(setup: VBenchSetup, videos: dict[str, Path], dimensions: list[str]) -> dict[str, dict[str, float]]:
    """{dimension: {key: value}} for `videos` ({key: mp4}); VBench reads a folder of mp4s in custom_input mode."""
    preflight(setup, dimensions)
    with tempfile.TemporaryDirectory(prefix="evs-vbench-") as folder:
        inputs, output = Path(folder) / "videos", Path(folder) / "results"
        inputs.mkdir()
        for key, video in videos.items():
            (inputs / f"{key}.mp4").symlink_to(Path(video).resolve())
        environment = {**os.environ, "VBENCH_CACHE_DIR": str(setup.cache), "TORCH_HOME": str(setup.torch_home),
                       "HF_HUB_OFFLINE": "1"}
        command = [str(setup.command), "evaluate", "--videos_path", str(inputs), "--dimension", *dimensions,
                   "--mode=custom_input", "--load_ckpt_from_local", "True", "--output_path", str(output)]
        finished = subprocess.run(command, env=environment, capture_output=True, text=True)
        if finished.returncode != 0:
            tail = "\n".join((finished.stderr or finished.stdout).strip().splitlines()[-5:])
            raise EVSError(f"VBench failed (exit {finished.returncode}); its last lines:\n{tail}")
        return parse_results(output, videos)


def parse_results(folder: Path, videos: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Read VBench's `*_eval_results.json` ({dimension: [aggregate, [{video_path, video_results}, ...]]})."""
    files = sorted(Path(folder).glob("*_eval_results.json"))
    if not files:
        raise EVSError(f"VBench wrote no *_eval_results.json in {folder}; its output format may have changed")
    scores: dict[str, dict[str, float]] = {}
    for file in files:
        for dimension, (_, per_video) in json.loads(file.read_text(encoding="utf-8")).items():
            for entry in per_video:
                key = Path(entry["video_path"]).stem
                if key in videos:
                    scores.setdefault(dimension, {})[key] = float(entry["video_results"])
    return scores
