"""Which measures can be trusted: each must rank the clean truth above a version spoilt in the way its element
cares about, in at least KEEP_FROM of held-out clips.

    python -m evs_framework.toyworld.measure_validation --clips 64 --out table.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import attrs

from evs_framework.toyworld.measures import LOWER_IS_BETTER, measure
from evs_framework.toyworld.world import (COLOURS, FRAMES, HELD_OUT_FIRST_SEED, SHAPES, SIZE, ClipSpec, degrade,
                                          render_with_masks, sample_spec, soften)

KEEP_FROM = 0.95
# the ways of spoiling a clip that each measure must notice
CHECKS = {
    "texture_sharpness": ("soften", "degrade"),
    "texture_sharpness_free": ("soften", "degrade"),
    "sharpness": ("soften", "degrade"),
    "motion": ("half_speed", "static"),
    "motion_in_class": ("half_speed", "static"),
    "warp_error": ("degrade",),
    "warp_error_free": ("degrade",),
    "temporal_flickering": ("degrade",),
    "wash_paleness": ("unstyled",),
    "rim_darkening": ("unstyled",),
    "colour": ("wrong_colour",),
    "colour_free": ("wrong_colour",),
    "shape": ("wrong_shape",),
}


def _other(options, chosen: str) -> str:
    return options[(options.index(chosen) + 1) % len(options)]


def _measured_versions(spec: ClipSpec, seed: int, frames: int, size: int) -> dict[str, dict]:
    """Every measure of the clip of `spec` clean ("truth"), in watercolor ("watercolor_truth") and of each of its
    degraded versions, each against the truth it spoils."""
    rendered = {"truth": spec, "watercolor_truth": attrs.evolve(spec, style="watercolor"),
                "half_speed": attrs.evolve(spec, speed=spec.speed / 2),
                "wrong_colour": attrs.evolve(spec, colour=_other(tuple(COLOURS), spec.colour)),
                "wrong_shape": attrs.evolve(spec, shape=_other(SHAPES, spec.shape))}
    clips, masks = render_with_masks(list(rendered.values()), frames, size)
    clips, masks = dict(zip(rendered, clips)), dict(zip(rendered, masks))
    clean = clips["truth"]
    clips |= {"soften": soften(clean[None], 4)[0], "degrade": degrade(clean[None], seed)[0],
              "static": clean[:1].expand_as(clean), "unstyled": clean}
    step = spec.step(size)
    measured = {}
    for version, clip in clips.items():
        truth = "watercolor_truth" if version in ("watercolor_truth", "unstyled") else "truth"
        measured[version] = measure(clip, clips[truth], masks[truth], step, rendered[truth].prompt)
    return measured


def validate(count: int, seed: int = HELD_OUT_FIRST_SEED, frames: int = FRAMES, size: int = SIZE) -> dict:
    """Per measure, per degradation: the share of `count` clips (seeds from `seed` on) whose clean truth the measure
    ranks above the degraded version. For the style, the truth is the clip in watercolor and the degraded version
    the same clip unstyled."""
    right = {name: {version: 0 for version in versions} for name, versions in CHECKS.items()}
    for clip_seed in range(seed, seed + count):
        measured = _measured_versions(sample_spec(clip_seed, frames), clip_seed, frames, size)
        for name, versions in CHECKS.items():
            for version in versions:
                truth = measured["watercolor_truth" if version == "unstyled" else "truth"][name]
                spoilt = measured[version][name]
                right[name][version] += truth < spoilt if name in LOWER_IS_BETTER else truth > spoilt
    return {name: {version: hits / count for version, hits in versions.items()} for name, versions in right.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seed", type=int, default=HELD_OUT_FIRST_SEED)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    table = validate(args.clips, args.seed)
    record = {"clips": args.clips, "first_seed": args.seed, "frames": FRAMES, "size": SIZE, "keep_from": KEEP_FROM,
              "shares": table,
              "kept": sorted(name for name, shares in table.items() if min(shares.values()) >= KEEP_FROM)}
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for name, shares in table.items():
        print(name, " ".join(f"{version} {share:.3f}" for version, share in shares.items()))


if __name__ == "__main__":
    main()
