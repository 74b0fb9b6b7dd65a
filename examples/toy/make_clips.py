"""Writes the sample clips of examples/toy: two held-out toy-world clips, degraded by the toy world's own
degradation, the low-quality input that `evs run examples/toy/enhance.yaml` repairs.

    python examples/toy/make_clips.py

Prints each clip's file and the prompt that describes it (the spec's and the manifest's prompts). The clips are
8 frames long, so that a run on a CPU takes seconds, and encoded at a lower quality than EVS writes, so that they
weigh tens of kilobytes.
"""

from pathlib import Path

import imageio.v2 as imageio

from evs_framework.io.video_io import WRITER_SETTINGS, frames_to_uint8
from evs_framework.toyworld.experiment import FPS
from evs_framework.toyworld.world import HELD_OUT_FIRST_SEED, degrade, render, sample_spec

FRAMES = 8
QUALITY = 7  # imageio's 0..10 scale; EVS writes its outputs at 9

if __name__ == "__main__":
    specs = [sample_spec(HELD_OUT_FIRST_SEED + i, FRAMES) for i in range(2)]
    degraded = degrade(render(specs, FRAMES), seed=HELD_OUT_FIRST_SEED)
    for i, (spec, frames) in enumerate(zip(specs, degraded)):
        path = Path(__file__).resolve().parent / f"toy_clip_{i + 1}.mp4"
        imageio.mimwrite(path, frames_to_uint8(frames), fps=FPS, **{**WRITER_SETTINGS, "quality": QUALITY})
        print(f"{path.name}: {spec.prompt}")
