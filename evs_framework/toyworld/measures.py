"""Measures of a toy-world output against its clean ground truth, all on (T, 3, H, W) frames in [-1, 1].

- fidelity: PSNR and SSIM per frame against the clean clip (higher is better);
- temporal consistency: the ground-truth warp error (each frame against the next one moved back by the shape's
  known motion, pixels that are covered or uncovered left out; lower is better) and VBench's temporal flickering;
- sharpness: the Tenengrad gradient energy as a fraction of the clean clip's (1.0 = as sharp as the truth);
- colour: the share of frames whose shape (where the truth has it) is mostly of the colour the prompt asks for.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evs_framework.evaluation.metrics import ClipInfo
from evs_framework.toyworld import elements
from evs_framework.toyworld.prompt_words import spec_words
from evs_framework.toyworld.quality import dominant_colours
from evs_framework.io.video_io import frames_to_uint8
from evs_plugins.metrics_basic import temporal_flickering, tenengrad

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
LOWER_IS_BETTER = {"warp_error", "warp_error_free"}  # every other measure: higher is better


def psnr(output: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over frames of 10 log10(1 / MSE), on [0, 1] pixels."""
    mse = (((output - truth) / 2) ** 2).flatten(1).mean(dim=1).clamp(min=1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def ssim(output: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) over frames and channels."""
    x, y = (output + 1) / 2, (truth + 1) / 2
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float32) - SSIM_WINDOW // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(z):
        return F.conv2d(z, window, groups=3)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.mean())


def warp_error(output: torch.Tensor, masks: torch.Tensor, step: tuple[float, float]) -> float:
    """Mean absolute difference (on [0, 1]) between each frame and the next one moved back along the true motion:
    shape pixels follow the shape's `step` (pixels per frame), background pixels stay; pixels where the shape
    covers or uncovers the background between the two frames are left out."""
    frames, _, height, width = output.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    moved_grid = torch.stack([(xs + step[0] + 0.5) / width * 2 - 1, (ys + step[1] + 0.5) / height * 2 - 1], dim=-1)
    errors = []
    for t in range(frames - 1):
        following = output[t + 1:t + 2]
        shape_now = masks[t] > 0.5
        moved = F.grid_sample(following, moved_grid[None], mode="bilinear", padding_mode="border", align_corners=False)[0]
        moved_mask = F.grid_sample(masks[t + 1][None, None], moved_grid[None], mode="bilinear", padding_mode="border",
                                   align_corners=False)[0, 0] > 0.5
        on_shape = shape_now & moved_mask
        on_background = ~shape_now & (masks[t + 1] <= 0.5)
        target = torch.where(on_shape, moved, following[0])
        valid = (on_shape | on_background).float()
        difference = ((output[t] - target).abs().mean(dim=0) / 2) * valid
        errors.append(float(difference.sum() / valid.sum().clamp(min=1)))
    return float(np.mean(errors))


def sharpness_ratio(output: torch.Tensor, truth: torch.Tensor) -> float:
    info = ClipInfo(fps=8.0)
    return tenengrad(frames_to_uint8(output), info).value / tenengrad(frames_to_uint8(truth), info).value


def colour_share(output: torch.Tensor, masks: torch.Tensor, colour: str) -> float:
    """The share of frames whose pixels inside the shape's mask are mostly shades of `colour`."""
    found = [dominant_colours(frame[:, mask > 0.5][None, :, :, None])[0] for frame, mask in zip(output, masks)]
    return sum(f == colour for f in found) / len(found)


def measure_free(output: torch.Tensor, prompt: str) -> dict:
    """The measures of one clip that need no ground truth: the clip and its prompt's words only."""
    words = spec_words(prompt)
    own_masks = elements.shape_masks(output)
    moved = elements.velocity(own_masks)
    coloured = elements.unwashed(output) if words.style == "watercolor" else output
    return {
        "temporal_flickering": temporal_flickering(frames_to_uint8(output), ClipInfo(fps=8.0)).value,
        "texture_sharpness_free": elements.texture_sharpness_free(output, own_masks, words),
        "motion_in_class": elements.motion_in_class(moved, words.direction, words.speed, output.shape[-1]),
        "warp_error_free": warp_error(output, own_masks, moved),
        "wash_paleness": elements.wash_paleness(output, own_masks),
        "rim_darkening": elements.rim_darkening(output, own_masks),
        "colour_free": colour_share(coloured, own_masks, words.colour),
        "shape": elements.shape_share(own_masks, words),
    }


def measure(output: torch.Tensor, truth: torch.Tensor, masks: torch.Tensor, step: tuple[float, float],
            prompt: str) -> dict:
    """Every measure of one output clip against its truth (frames beyond the truth's are ignored), and those of
    measure_free."""
    count = min(len(output), len(truth))
    output, truth, masks = output[:count], truth[:count], masks[:count]
    words = spec_words(prompt)
    moved = elements.velocity(elements.shape_masks(output))
    return {
        "psnr": psnr(output, truth),
        "ssim": ssim(output, truth),
        "warp_error": warp_error(output, masks, step),
        "sharpness": sharpness_ratio(output, truth),
        "colour": colour_share(output, masks, words.colour),
        "texture_sharpness": elements.texture_sharpness(output, truth, masks, words.colour),
        **elements.motion_against_step(moved, words.direction, step),
        **measure_free(output, prompt),
    }
