"""Built-in operations on clean latents."""

from __future__ import annotations

import torch.nn.functional as F

from evs_framework.hookspecs import hookimpl


def upscale(latents, factor: float, mode: str = "bicubic"):
    """Resize clean latents by `factor`. Only clean latents: interpolating a noisy one shrinks its noise."""
    height, width = latents.shape[-2:]
    size = (round(height * factor), round(width * factor))
    return F.interpolate(latents, size=size, mode=mode, **({} if mode == "nearest-exact" else {"align_corners": False}))


@hookimpl
def register_latent_ops(register):
    register("upscale", upscale)
