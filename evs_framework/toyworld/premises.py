"""The premises EVS rests on, measured in the toy world before any composition is scored: each model alone, from
noise, on the same held-out prompts, with the reference-free measures (measures.measure_free).

A text-to-image model makes a clip frame by frame (each frame its own noise: it knows nothing of time); a video
model makes the whole clip at once. Plain prompts measure imaging quality, motion, consistency and prompt adherence;
the same prompts "in watercolor" measure the style, which only the style LoRA learnt.

    python -m evs_framework.toyworld.premises --clips 16 --seeds 1,2 --out premises.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from evs_framework.toyworld import quality
from evs_framework.toyworld.experiment import interval
from evs_framework.toyworld.measures import measure_free
from evs_framework.toyworld.world import FRAMES, HELD_OUT_FIRST_SEED, sample_spec

# name in the table -> (registry model, whether it draws frame by frame)
MODELS = {"T2I (toyI)": ("toyI", True), "T2V (toyV)": ("toyV", False), "VC2 analogue (toyVC)": ("toyVC", False),
          "T2I + watercolor LoRA (toyWatercolor)": ("toyWatercolor", True)}
MEASURES = ("texture_sharpness_free", "motion_in_class", "warp_error_free", "temporal_flickering", "colour_free",
            "shape", "wash_paleness", "rim_darkening")
FIRST_PROMPT_SEED = HELD_OUT_FIRST_SEED + 5000  # apart from the held-out clips the compositions are scored on


def prompts(count: int) -> list[str]:
    return [sample_spec(FIRST_PROMPT_SEED + i).prompt for i in range(count)]


def styled(prompt: str) -> str:
    return f"{prompt} in watercolor"


@torch.no_grad()
def draw(backend, prompt: str, frame_by_frame: bool, seed: int) -> torch.Tensor:
    """A clip (FRAMES, 3, H, W) in [-1, 1] drawn from noise with the model's own preset schedule and guidance."""
    from evs_framework.io.vae import decode_latents

    t2i_schedule, t2v_schedule = quality.schedules()
    schedule, guidance = (t2i_schedule, 3.0) if frame_by_frame else (t2v_schedule, 1.0)
    latents = quality.sample(backend, prompt, FRAMES, schedule, guidance, seed)
    return decode_latents(backend.parts.vae, latents, 32).float().cpu()


def measure_models(context, registry, count: int, seeds: list[int], pictures: Path | None = None) -> list[dict]:
    """One row per model, prompt (plain, then in watercolor) and seed."""
    rows = []
    for label, (name, frame_by_frame) in MODELS.items():
        backend = context.load(registry.get(name))
        shown = []
        for index, prompt in enumerate(prompts(count)):
            for style_prompt in (prompt, styled(prompt)):
                for seed in seeds:
                    clip = draw(backend, style_prompt, frame_by_frame, seed)
                    if index == 0 and seed == seeds[0]:
                        shown.append(clip[::2])
                    rows.append({"model": label, "prompt": style_prompt, "seed": seed,
                                 "styled": style_prompt != prompt, **measure_free(clip, style_prompt)})
        if pictures is not None:
            quality.save_grid(torch.stack(shown), pictures / f"premises_{name}.png")
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per model: each measure's mean and 95% interval, on plain prompts except the style's two, on styled ones."""
    summary = {}
    for label in dict.fromkeys(r["model"] for r in rows):
        summary[label] = {}
        for name in MEASURES:
            styled_measure = name in ("wash_paleness", "rim_darkening")
            values = [r[name] for r in rows if r["model"] == label and r["styled"] == styled_measure]
            summary[label][name] = interval(values)
    return summary


def format_table(summary: dict) -> str:
    header = ["model", *MEASURES]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, values in summary.items():
        cells = [f"{v['mean']:.3g} [{v['low']:.3g}, {v['high']:.3g}]" for v in (values[m] for m in MEASURES)]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from evs_framework.api import load_context

    parser = argparse.ArgumentParser(prog="python -m evs_framework.toyworld.premises", description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=16, help="held-out prompts")
    parser.add_argument("--seeds", default="1,2", help="comma-separated sampling seeds")
    parser.add_argument("--out", type=Path, required=True, help="JSON of rows and summary; a .md table and PNGs beside")
    args = parser.parse_args(argv)
    context = load_context(device="cpu")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = measure_models(context, context.registry, args.clips, [int(s) for s in args.seeds.split(",")], args.out.parent)
    summary = summarise(rows)
    args.out.write_text(json.dumps({"clips": args.clips, "seeds": args.seeds, "summary": summary, "rows": rows},
                                   indent=1) + "\n")
    args.out.with_suffix(".md").write_text(format_table(summary) + "\n")
    print(format_table(summary))


if __name__ == "__main__":
    main()
