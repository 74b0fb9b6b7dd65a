"""Built-in operations on clean latents."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evs_framework.hookspecs import hookimpl


def upscale(latents, factor: float, mode: str = "bicubic"):
    """Resize clean latents by `factor`. Only clean latents: interpolating a noisy one shrinks its noise."""
    height, width = latents.shape[-2:]
    size = (round(height * factor), round(width * factor))
    return F.interpolate(latents, size=size, mode=mode, **({} if mode == "nearest-exact" else {"align_corners": False}))


def lowpass(latents, d_s: float = 1.0, d_t: float = 0.6):
    """Keep the low frequencies of clean latents (frames, channels, h, w) over frames, height and width together:
    each 3D frequency (f_t, f_h, f_w), normalised to [-1, 1), is weighted by exp(-((f_t d_s / d_t)^2 + f_h^2 + f_w^2)
    / (2 d_s^2)), the Gaussian low-pass VideoElevator applies to the T2I's clean estimate before the T2V's window."""
    frames, _, height, width = latents.shape

    def frequencies(n):
        return 2 * torch.arange(n, dtype=torch.float32, device=latents.device) / n - 1

    f_t, f_h, f_w = torch.meshgrid(frequencies(frames), frequencies(height), frequencies(width), indexing="ij")
    mask = torch.exp(-(((d_s / d_t) * f_t) ** 2 + f_h**2 + f_w**2) / (2 * d_s**2))[:, None]
    dims = (0, 2, 3)
    spectrum = torch.fft.fftshift(torch.fft.fftn(latents.float(), dim=dims), dim=dims)
    filtered = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=dims), dim=dims).real
    return filtered.to(latents.dtype)


@hookimpl
def register_latent_ops(register):
    register("upscale", upscale)
    register("lowpass", lowpass)
