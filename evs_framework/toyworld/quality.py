"""How well the toy models learned their world, measured with the world's own ground truth.

- the VAE: PSNR of reconstructed held-out frames, and how much more it gets wrong in the corner where the
  background's gradient is brightest than in the other three (issue 21: a VAE that draws a ring there puts it into
  every output of every composition);
- the text-to-image model: whether samples drawn from noise with the toy_t2i preset (25 leading DDIM steps,
  guidance 3) show the colour their prompt asks for, judged by which of the world's colours most pixels lie on
  (a shape's pixels are its colour times a shade in [0.35, 1]);
- the motion model: the mean absolute change between consecutive frames of clips drawn with the toy_t2v preset
  (8 trailing Euler steps, guidance 1), against the text-to-image model's frames drawn one by one and the
  rendered clips themselves.

Sampling goes through the runtime's own pieces (the sd15 and animatediff backends, the sigma-space Denoiser and
the Euler step), so what is measured is what a run would produce.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from evs_framework.toyworld.world import COLOURS

COLOUR_NAMES = tuple(COLOURS)
_RAYS = torch.tensor([COLOURS[name] for name in COLOUR_NAMES])  # (colours, 3)


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """PSNR in dB of frames in [-1, 1], over their [0, 1] range."""
    mse = (((reference.float() + 1) / 2 - (reconstruction.float().clamp(-1, 1) + 1) / 2) ** 2).mean()
    return float(10 * torch.log10(1 / mse.clamp(min=1e-12)))


def background_ghost_error(frames: torch.Tensor, reconstructions: torch.Tensor, masks: torch.Tensor,
                           away: int = 3, spot: int = 5) -> float:
    """The worst spot of error on the background, averaged over frames (N, 3, H, W) in [-1, 1]: per frame, the
    largest mean absolute error (on [0, 1]) of a `spot` x `spot` window lying on the background more than `away`
    pixels from the shape (`masks`, (N, H, W)). A VAE that draws ghost dots where the background is plain scores
    well above its ordinary error; the window's averaging keeps single-pixel noise out."""
    error = ((reconstructions.float() - frames.float()).abs().mean(dim=1, keepdim=True) / 2)
    spots = F.avg_pool2d(error, spot, stride=1, padding=spot // 2)
    near_shape = F.max_pool2d(masks.float()[:, None], 2 * (away + spot // 2) + 1, stride=1, padding=away + spot // 2)
    background = spots.masked_fill(near_shape > 0.01, 0)
    return float(background.flatten(1).amax(dim=1).mean())


def brightest_corner_error_ratio(frames: torch.Tensor, reconstructions: torch.Tensor, masks: torch.Tensor,
                                 side: int = 16) -> float | None:
    """The reconstruction error (mean absolute, frames (N, 3, H, W) in [-1, 1]) in the `side` x `side` corner where
    the frame is brightest, over the mean error of the other three corners, averaged over the frames whose shape
    (`masks`, (N, H, W)) reaches no corner (None if there is none): about 1 for a VAE that treats the corners alike."""
    corners = [(rows, columns) for rows in (slice(None, side), slice(-side, None))
               for columns in (slice(None, side), slice(-side, None))]
    error = (reconstructions.float() - frames.float()).abs().mean(dim=1)
    brightness = frames.float().mean(dim=1)
    ratios = []
    for frame_error, frame_brightness, mask in zip(error, brightness, masks):
        if any(mask[place].max() > 0.01 for place in corners):
            continue
        errors = torch.stack([frame_error[place].mean() for place in corners])
        brightest = int(torch.stack([frame_brightness[place].mean() for place in corners]).argmax())
        others = torch.cat([errors[:brightest], errors[brightest + 1:]])
        ratios.append(errors[brightest] / others.mean())
    return float(torch.stack(ratios).mean()) if ratios else None


def dominant_colours(frames: torch.Tensor, tolerance: float = 0.08) -> list[str]:
    """For each frame (N, 3, H, W) in [-1, 1], the world colour whose shades (colour x s, s in [0.3, 1.05]) the
    most pixels lie within `tolerance` of."""
    pixels = ((frames.float().cpu() + 1) / 2).flatten(2).transpose(1, 2)  # (N, pixels, 3)
    shade = (pixels @ _RAYS.T) / (_RAYS * _RAYS).sum(dim=1)  # (N, pixels, colours): projection on each ray
    distance = (pixels[:, :, None, :] - shade[..., None] * _RAYS).norm(dim=-1)
    near = (distance < tolerance) & (shade > 0.3) & (shade < 1.05)
    return [COLOUR_NAMES[i] for i in near.sum(dim=1).argmax(dim=1).tolist()]


def frame_difference(clips: torch.Tensor) -> float:
    """Mean absolute difference between consecutive frames of clips (B, T, 3, H, W), in [-1, 1] units."""
    return float((clips[:, 1:] - clips[:, :-1]).abs().mean())


@torch.no_grad()
def sample(backend, prompt: str, frames: int, schedule, guidance: float, seed: int) -> torch.Tensor:
    """Latents (frames, 4, h, w) drawn from noise with `backend` through the runtime's Denoiser and Euler step."""
    from evs_framework.denoiser import Denoiser
    from evs_framework.sampler import single_step
    from evs_plugins.samplers import EULER

    unet = backend.unet
    size = unet.config.sample_size
    text = backend.encode_prompts(["", prompt])
    denoise = Denoiser(backend, schedule.train, text, guidance)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(frames, unet.config.in_channels, size, size, generator=generator).to(unet.device)
    levels = schedule.levels
    x = noise * math.sqrt(levels[0] ** 2 + 1)  # pure noise in the variance-preserving form, as x0 + sigma * eps
    for sigma, sigma_next in zip(levels[:-1], levels[1:]):
        x, _ = single_step(EULER, denoise, x, sigma, sigma_next)
    return x


def schedules():
    """The toy_t2i and toy_t2v presets' schedules (registry.yaml)."""
    from evs_framework.schedules import BetaSchedule, ModelSchedule

    return (ModelSchedule(BetaSchedule("scaled_linear"), 25, "leading", steps_offset=1),
            ModelSchedule(BetaSchedule("linear"), 8, "trailing"))


def save_grid(rows: torch.Tensor, path: Path) -> None:
    """Frames (rows, columns, 3, H, W) in [-1, 1] as one PNG, rows top to bottom."""
    from PIL import Image

    r, c, _, h, w = rows.shape
    grid = ((rows.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = grid.permute(0, 3, 1, 4, 2).reshape(r * h, c * w, 3)
    Image.fromarray(grid.numpy()).save(path)
