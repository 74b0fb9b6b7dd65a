"""Measures of the four elements of a good toy-world video: imaging quality, effective motion, temporal consistency,
and adherence to the prompt's style and objects. Frames are (T, 3, H, W) in [-1, 1].

Each measure has a form that needs only the clip and its prompt's words: where the shape is comes from the pixels
off each frame's background ramp (`shape_masks`), how it moves from those masks' centroids, how crisp its texture
should be from a frame of the prompt rendered clean.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from evs_framework.toyworld.prompt_words import SPEED_RANGES, PromptWords
from evs_framework.toyworld.world import (COLOURS, DIRECTIONS, PAPER, RIM_WIDTH, SHAPES, TEXTURE_ANGLE,
                                          TEXTURE_PERIOD, WASH, ClipSpec, render_with_masks)

BACKGROUND_TOLERANCE = 0.08  # how far (on [0, 1] pixels) off the background's gradient a pixel is the shape's
LUMA = torch.tensor([0.299, 0.587, 0.114])


def _unit(frames: torch.Tensor) -> torch.Tensor:
    return (frames.float() + 1) / 2


def _pixel_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's row and column, (H, W) each."""
    return torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")


def centroids(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame of `masks` (T, H, W), the mask's area and its centroid in pixels (x, y): (T,) and (T, 2)."""
    ys, xs = _pixel_grid(*masks.shape[1:])
    area = masks.sum(dim=(1, 2))
    sums = torch.stack([(masks * xs).sum(dim=(1, 2)), (masks * ys).sum(dim=(1, 2))], dim=1)
    return area, sums / area.clamp(min=1e-6)[:, None]


def unwashed(frames: torch.Tensor) -> torch.Tensor:
    """Frames with the watercolor wash towards the paper undone (the world's plain colours where it was)."""
    return ((_unit(frames) - WASH * PAPER) / (1 - WASH)).clamp(0, 1) * 2 - 1


def shape_masks(frames: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """(T, H, W) floats, 1 where a pixel is off its frame's background by more than BACKGROUND_TOLERANCE. The world's
    backgrounds (plain or washed, flickering or not) are linear ramps, so each frame's is a plane per channel fitted
    by least squares, again and again on the pixels it already explains (the shape is a small part of the frame);
    the distance to it is taken after a 3 x 3 mean, so that noise alone does not make the shape."""
    frames_01 = _unit(frames)
    count, _, height, width = frames_01.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    design = torch.stack([torch.ones_like(xs), xs, ys], dim=-1).reshape(1, -1, 3).expand(count, -1, -1)
    pixels = frames_01.flatten(2).transpose(1, 2)  # (T, H*W, 3)
    explained = torch.ones(count, height * width, 1)
    for _ in range(rounds):
        planes = torch.linalg.lstsq(design * explained, pixels * explained).solution
        residual = (pixels - design @ planes).transpose(1, 2).unflatten(2, (height, width))
        smoothed = F.avg_pool2d(residual, 3, stride=1, padding=1, count_include_pad=False)
        explained = (smoothed.square().sum(dim=1) <= BACKGROUND_TOLERANCE**2).float().flatten(1)[..., None]
    return eroded(1 - explained.reshape(count, height, width), 1)  # the 3 x 3 mean widened the shape by a pixel


def eroded(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """(T, H, W) masks (> 0.5 inside) less a band `pixels` wide along their edge (a square erosion, by rows then
    columns)."""
    outside = (masks <= 0.5).float()[:, None]
    side = 2 * pixels + 1
    outside = F.max_pool2d(outside, (1, side), stride=1, padding=(0, pixels))
    return 1 - F.max_pool2d(outside, (side, 1), stride=1, padding=(pixels, 0))[:, 0]


def rim_and_inside(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The band along the shape's edge (`masks`, (T, H, W)) as wide as a watercolor rim, and what lies inside it
    beyond twice that width. The width follows the shape's size: RIM_WIDTH of the radius of a disc of the masks'
    mean area."""
    inside = (masks > 0.5).float()
    rim = max(1, round(RIM_WIDTH * math.sqrt(float(inside.sum(dim=(1, 2)).mean()) / math.pi)))
    return inside - eroded(masks, rim), eroded(masks, 2 * rim + 1)


# imaging quality -------------------------------------------------------------------------------------------------

def texture_contrast(frames: torch.Tensor, masks: torch.Tensor, colour: tuple[float, float, float]) -> float:
    """The amplitude of the world's texture frequencies inside the shape (its edge left out), averaged over frames:
    the pixels' projection on the prompt's colour, less its mean, matched against the stripes' frequency, its normal
    (the dots' second one) and their sum and difference (the checks'). The amplitude of a frequency does not depend
    on where the shape is, so each frame is matched as it is."""
    _, _, height, width = frames.shape
    unit_colour = torch.tensor(colour) / torch.tensor(colour).norm()
    signal = torch.einsum("tchw,c->thw", _unit(frames), unit_colour)
    inside = rim_and_inside(masks)[1]
    area = inside.sum(dim=(1, 2)).clamp(min=1)
    centred = (signal - (signal * inside).sum(dim=(1, 2), keepdim=True) / area[:, None, None]) * inside
    period = TEXTURE_PERIOD * width
    along = torch.tensor([math.cos(TEXTURE_ANGLE), math.sin(TEXTURE_ANGLE)]) / period
    across = torch.tensor([-math.sin(TEXTURE_ANGLE), math.cos(TEXTURE_ANGLE)]) / period
    ys, xs = _pixel_grid(height, width)
    energy = torch.zeros(len(frames))
    for frequency in (along, across, along + across, along - across):
        phase = 2 * math.pi * (frequency[0] * xs + frequency[1] * ys)
        real = (centred * torch.cos(phase)).sum(dim=(1, 2))
        imaginary = (centred * torch.sin(phase)).sum(dim=(1, 2))
        energy += (real**2 + imaginary**2) / area**2
    return float(energy.sqrt().mean())


def texture_sharpness(output: torch.Tensor, truth: torch.Tensor, masks: torch.Tensor, colour: str) -> float:
    """The output's texture contrast inside the true shape as a fraction of the truth's (1.0 = as crisp)."""
    return texture_contrast(output, masks, COLOURS[colour]) / texture_contrast(truth, masks, COLOURS[colour])


def still(words: PromptWords, radius: float = 0.18, centre: tuple[float, float] = (0.5, 0.5)) -> ClipSpec:
    """A clip of what the prompt's words ask for, standing still at `centre`."""
    return ClipSpec(shape=words.shape, texture=words.texture, colour=words.colour, background=words.background,
                    direction=words.direction, speed=0.0, radius=radius, start=centre, texture_angle=TEXTURE_ANGLE,
                    texture_period=TEXTURE_PERIOD, background_angle=0.0, style=words.style)


def texture_sharpness_free(output: torch.Tensor, own_masks: torch.Tensor, words: PromptWords) -> float:
    """The output's texture contrast inside its own shape as a fraction of that of the prompt rendered clean."""
    reference, reference_masks = render_with_masks([still(words)], frames=1, size=output.shape[-1])
    colour = COLOURS[words.colour]
    return texture_contrast(output, own_masks, colour) / texture_contrast(reference[0], reference_masks[0], colour)


# effective motion ------------------------------------------------------------------------------------------------

def velocity(masks: torch.Tensor) -> tuple[float, float]:
    """The shape's motion in pixels per frame (x, y): the least-squares slope of its masks' centroids over time
    (0, 0 for a clip whose shape is found in fewer than two frames)."""
    area, centres = centroids(masks)
    seen = area > 0
    if int(seen.sum()) < 2:
        return 0.0, 0.0
    centres = centres[seen]
    t = torch.arange(len(masks), dtype=torch.float32)[seen]
    t = t - t.mean()
    slope = (t[:, None] * (centres - centres.mean(dim=0))).sum(dim=0) / (t * t).sum()
    return float(slope[0]), float(slope[1])


def _along_and_agreement(moved: tuple[float, float], direction: str) -> tuple[float, float]:
    """The motion's component along `direction` and the cosine between them (0 for no motion)."""
    dx, dy = DIRECTIONS[direction]
    along = moved[0] * dx + moved[1] * dy
    length = math.hypot(*moved)
    return along, (along / length if length > 1e-6 else 0.0)


def motion_against_step(moved: tuple[float, float], direction: str, step: tuple[float, float]) -> dict:
    """How the estimated motion agrees with the true `step`: the cosine to the prompt's direction, the speed along
    it as a fraction of the true one, and their score (the cosine, at least 0, times the ratio or its inverse,
    whichever is at most 1; 1 is the motion asked for)."""
    along, agreement = _along_and_agreement(moved, direction)
    ratio = along / math.hypot(*step)
    closeness = min(ratio, 1 / ratio) if ratio > 0 else 0.0
    return {"motion_direction": agreement, "motion_speed_ratio": ratio, "motion": max(agreement, 0.0) * closeness}


def motion_in_class(moved: tuple[float, float], direction: str, speed: str, size: int) -> float:
    """The cosine to the prompt's direction (at least 0) times how near the speed along it lies to the speed word's
    range (1 inside it, the ratio to the nearer end outside)."""
    along, agreement = _along_and_agreement(moved, direction)
    low, high = (bound * size for bound in SPEED_RANGES[speed])
    closeness = 0.0 if along <= 0 else min(1.0, along / low, high / along)
    return max(agreement, 0.0) * closeness


# style and prompt adherence --------------------------------------------------------------------------------------

def wash_paleness(frames: torch.Tensor, masks: torch.Tensor) -> float:
    """The mean of each pixel's darkest channel inside the shape (its rim left out), on [0, 1]: a watercolor wash
    lifts it to at least WASH x PAPER, the world's plain colours keep it below 0.16."""
    inside = rim_and_inside(masks)[1]
    darkest = _unit(frames).min(dim=1).values
    return float((darkest * inside).sum() / inside.sum().clamp(min=1))


def rim_darkening(frames: torch.Tensor, masks: torch.Tensor) -> float:
    """How much darker (mean luma, [0, 1]) the band along the shape's edge is than its inside: the watercolor
    style's pigment rim; 0 where the shape is too small to tell its edge from its inside."""
    band, inside = rim_and_inside(masks)
    if not (band.any() and inside.any()):
        return 0.0
    luma = torch.einsum("tchw,c->thw", _unit(frames), LUMA)
    return float((luma * inside).sum() / inside.sum() - (luma * band).sum() / band.sum())


def _unit_areas(words: PromptWords, size: int, radius: float = 0.25) -> list[float]:
    """Each of the world's shapes' area in pixels over its radius in pixels squared, as the world draws it."""
    specs = [still(attrs.evolve(words, shape=shape), radius) for shape in SHAPES]
    masks = render_with_masks(specs, frames=1, size=size)[1][:, 0]
    return (masks.sum(dim=(1, 2)) / (radius * size) ** 2).tolist()


def shape_share(masks: torch.Tensor, words: PromptWords) -> float:
    """The share of frames whose shape (`masks`, (T, H, W)) overlaps (intersection over union) the prompt's shape
    more than the world's other shapes, each drawn upright at the mask's centroid with the mask's area."""
    _, height, width = masks.shape
    inside = (masks > 0.5).float()
    areas, centres = centroids(inside)
    units = _unit_areas(words, width)
    specs = [still(attrs.evolve(words, shape=shape), math.sqrt(max(float(area), 1.0) / unit) / width,
                   ((float(x) + 0.5) / width, (float(y) + 0.5) / height))
             for area, (x, y) in zip(areas, centres) for shape, unit in zip(SHAPES, units)]
    templates = render_with_masks(specs, frames=1, size=width)[1][:, 0].unflatten(0, (len(inside), len(SHAPES))) > 0.5
    found = inside.bool()[:, None]
    overlap = (templates & found).sum(dim=(2, 3)) / (templates | found).sum(dim=(2, 3)).clamp(min=1)
    best = overlap.argmax(dim=1)
    return float((best == SHAPES.index(words.shape)).float().mean())
