"""How close a half-precision VAE comes to float32 on latents of the real range, and how far it is from overflowing.

The toy world's trained VAE (toyI's) encodes held-out clips (latent std about 1, as SD1.5's scaled latents); the
largest activation of any module over the encode and the float32 decode is set against float16's largest number
(65504), and the float16 and bfloat16 decodes against the float32 one. CPU; a minute.

    python bench/vae_precision.py
"""

from __future__ import annotations

import json
import math

import torch

from evs_framework.io.vae import decode_latents, encode_frames
from evs_framework.loading import LoadContext, WeightSettings, default_weight_folders
from evs_framework.plugins import load_plugins
from evs_framework.registry import load_registry
from evs_framework.toyworld.world import HELD_OUT_FIRST_SEED, render, sample_spec

FLOAT16_MAX = 65504.0


def main() -> None:
    plugins, registry = load_plugins(), load_registry()
    vae = LoadContext(plugins, registry, WeightSettings(default_weight_folders())).load(registry.get("toyI")).vae
    frames = render([sample_spec(HELD_OUT_FIRST_SEED + i) for i in range(4)]).flatten(0, 1)
    largest = [0.0]

    def track(module, inputs, output):
        if torch.is_tensor(output):
            largest[0] = max(largest[0], float(output.abs().max()))

    hooks = [m.register_forward_hook(track) for m in vae.modules()]
    latents = encode_frames(vae, frames, 16)
    reference = decode_latents(vae, latents, 16)
    for hook in hooks:
        hook.remove()
    row = {"frames": len(frames), "latent_std": round(float(latents.std()), 3), "largest_activation": round(largest[0], 1),
           "float16_headroom": round(FLOAT16_MAX / largest[0], 1)}
    for dtype in (torch.float16, torch.bfloat16):
        error = decode_latents(vae.to(dtype), latents, 16) - reference
        row[str(dtype).removeprefix("torch.")] = {
            "max_abs": round(float(error.abs().max()), 5), "relative_l2": round(float(error.norm() / reference.norm()), 6),
            "psnr_db": round(10 * math.log10(4 / float((error ** 2).mean())), 1)}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
