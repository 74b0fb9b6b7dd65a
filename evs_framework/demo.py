"""`evs demo`: the whole pipeline on the built-in default, with no weights and no network.

It builds (once, cached) a tiny random-weight model zoo in the real diffusers formats, writes a short
synthetic clip, and runs IDM_VDM_IDM with x2 latent upscaling through the same code path as `evs run`.
The models are random stand-ins: the output shows the pipeline works, not what EVS looks like.
"""

from __future__ import annotations

import os
from pathlib import Path

from evs_framework import video_io
from evs_framework.spec import InputVideo, ModelChoice, OutputOptions, Spec
from evs_framework.zoo import ZOO_VERSION, build_tiny_zoo, make_synthetic_clip

DEMO_PROMPT = "a red ball rolling across a green meadow, photograph"
DEMO_FPS = 8.0


def default_zoo_dir() -> Path:
    cache = Path(os.environ.get("EVS_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "evs").expanduser()
    return cache / f"tiny-zoo-v{ZOO_VERSION}"


def demo_spec(out_dir: Path) -> Spec:
    """The demo's input clip is written here; the spec is the seed's example enhance config in native form."""
    source = video_io.write_video(out_dir / "demo_input.mp4", make_synthetic_clip(frames=8, width=64, height=48), DEMO_FPS)
    return Spec(
        inputs=(InputVideo(source, DEMO_PROMPT),),
        models={"idm": ModelChoice("EP", upscale=2.0), "vdm": ModelChoice("lightningEP")},
        composition="IDM_VDM_IDM",
        output=OutputOptions(dir=out_dir),
    )


def prepare_demo(out_dir: Path, zoo_dir: Path | None = None) -> tuple[Spec, Path]:
    zoo = build_tiny_zoo(zoo_dir or default_zoo_dir())
    return demo_spec(out_dir), zoo
