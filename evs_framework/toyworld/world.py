"""The toy world: short clips of one textured shape moving smoothly over a gradient, with known ground truth.

A clip is drawn from a seed: shape (disc, square, triangle), texture (striped, checkered, dotted), colour, the
background's colour, the direction and speed of motion. Its prompt is generated from those attributes ("a red
striped disc drifting slowly left over a blue gradient"), so a prompt that changes one word (an edit) has a ground
truth too. A clip may also be drawn in a style ("... in watercolor": pale washes with a darker rim), which only the
style LoRA learns. Rendering is plain tensor arithmetic with soft edges, batched, on any device: the same code makes the
training data on a GPU and the demo's clip on a CPU.

`degrade` makes the VideoCrafter-2.0 analogue of a clean clip: down-and-up sampling (soft, detail lost),
per-frame brightness and colour flicker, small position jitter and noise.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

SHAPES = ("disc", "square", "triangle")
TEXTURES = ("striped", "checkered", "dotted")
COLOURS = {"red": (0.85, 0.15, 0.12), "green": (0.15, 0.7, 0.2), "blue": (0.15, 0.3, 0.9), "yellow": (0.95, 0.85, 0.1),
           "purple": (0.6, 0.2, 0.75), "orange": (0.95, 0.5, 0.1)}
BACKGROUNDS = {"blue": (0.35, 0.5, 0.8), "green": (0.4, 0.65, 0.4), "gray": (0.55, 0.55, 0.55), "brown": (0.6, 0.45, 0.3)}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEEDS = (0.008, 0.02)  # fraction of the frame per frame
QUICK_FROM = 0.014  # a prompt says "quickly" from this speed on, "slowly" below it
STYLES = ("watercolor",)
PAPER = 0.96  # the watercolor style's paper: what its washes are mixed towards
WASH, RIM_WIDTH, RIM_SHADE = 0.5, 0.1, 0.6  # its wash's share of paper, its rim's width (radii) and shade
FRAMES, SIZE = 16, 128
TEXTURE_PERIOD, TEXTURE_ANGLE = 0.115, math.pi / 4  # a clip's texture: 15 px period (about 2 latent cells), diagonal
TEXTURE_PERIODS = (0.09, 0.14)  # the ranges of period and angle of the varied textures the VAE is trained on
HELD_OUT_FIRST_SEED = 10**9  # training draws seeds below it, evaluation at and above it


@attrs.frozen
class ClipSpec:
    """Everything a clip is drawn from; positions and sizes are fractions of the frame side."""

    shape: str
    texture: str
    colour: str
    background: str
    direction: str
    speed: float  # fraction of the frame per frame
    radius: float
    start: tuple[float, float]  # centre at frame 0 (x, y)
    texture_angle: float  # radians
    texture_period: float  # fraction of the frame
    background_angle: float
    style: str = ""  # "" (as rendered) or one of STYLES

    def step(self, size: int = SIZE) -> tuple[float, float]:
        """How far the shape moves from one frame to the next, in pixels (x, y) at frame side `size`."""
        dx, dy = DIRECTIONS[self.direction]
        return dx * self.speed * size, dy * self.speed * size

    @property
    def speed_word(self) -> str:
        return "quickly" if self.speed >= QUICK_FROM else "slowly"

    @property
    def prompt(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        styled = f" in {self.style}" if self.style else ""
        return (f"{article} {self.colour} {self.texture} {self.shape} drifting {self.speed_word} {self.direction} over a "
                f"{self.background} gradient{styled}")


def sample_spec(seed: int, frames: int = FRAMES, varied_textures: bool = False) -> ClipSpec:
    """The clip of `seed`: attributes uniformly, a start that keeps the shape in the frame for `frames` frames.

    A clip's texture has the world's one period and angle; `varied_textures` draws them from ranges instead (the
    VAE learns on those, so that it keeps any texture). The draws are made either way: a seed's other attributes
    do not depend on it."""
    g = torch.Generator().manual_seed(seed)

    def pick(options):
        return list(options)[int(torch.randint(len(options), (1,), generator=g))]

    def uniform(low, high):
        return low + (high - low) * float(torch.rand((), generator=g))

    direction, speed, radius = pick(DIRECTIONS), uniform(*SPEEDS), uniform(0.14, 0.22)
    travel = speed * (frames - 1)
    dx, dy = DIRECTIONS[direction]
    lows = [radius + max(0.0, -d * travel) for d in (dx, dy)]
    highs = [1 - radius - max(0.0, d * travel) for d in (dx, dy)]
    start = (uniform(lows[0], highs[0]), uniform(lows[1], highs[1]))
    shape, texture, colour, background = pick(SHAPES), pick(TEXTURES), pick(COLOURS), pick(BACKGROUNDS)
    angle, period = uniform(0, math.pi), uniform(*TEXTURE_PERIODS)
    if not varied_textures:
        angle, period = TEXTURE_ANGLE, TEXTURE_PERIOD
    return ClipSpec(shape=shape, texture=texture, colour=colour, background=background, direction=direction,
                    speed=speed, radius=radius, start=start, texture_angle=angle, texture_period=period,
                    background_angle=uniform(0, 2 * math.pi))


def render(specs: list[ClipSpec], frames: int = FRAMES, size: int = SIZE, device="cpu") -> torch.Tensor:
    """(len(specs), frames, 3, size, size) float32 clips in [-1, 1]."""
    return render_with_masks(specs, frames, size, device)[0]


def render_with_masks(specs: list[ClipSpec], frames: int = FRAMES, size: int = SIZE, device="cpu"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The clips, and where the shape is: (B, T, H, W) in [0, 1], soft at the edge."""
    p = _parameters(specs, device)
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (H, W)
    t = torch.arange(frames, device=device, dtype=torch.float32)
    cx = p["start_x"][:, None] + p["dx"][:, None] * p["speed"][:, None] * t  # (B, T)
    cy = p["start_y"][:, None] + p["dy"][:, None] * p["speed"][:, None] * t
    # object-local coordinates, (B, T, H, W): the texture moves with the object
    u = (x - cx[..., None, None]) / p["radius"][:, None, None, None]
    v = (y - cy[..., None, None]) / p["radius"][:, None, None, None]
    edge = 2.0 * size * p["radius"][:, None, None, None]  # soft edges about one pixel wide
    inside = torch.stack([_disc(u, v), _square(u, v), _triangle(u, v)], dim=0)  # (shapes, B, T, H, W)
    inside = inside.gather(0, p["shape"][None, :, None, None, None].expand_as(inside[:1]))[0]
    mask = torch.sigmoid(edge * inside)

    pattern = _pattern(u, v, p)  # in [0, 1]: 1 the colour, 0 its darker tone
    colour = p["colour"][:, None, :, None, None]  # (B, 1, 3, 1, 1)
    shade = 0.35 + 0.65 * pattern[:, :, None]
    foreground = colour * shade

    along = (torch.cos(p["bg_angle"])[:, None, None] * (x - 0.5) + torch.sin(p["bg_angle"])[:, None, None] * (y - 0.5))
    ramp = 0.75 + 0.5 * along  # (B, H, W), 0.4 .. 1.1 times the background colour
    background = (p["background"][:, :, None, None] * ramp[:, None]).clamp(0, 1)[:, None]  # (B, 1, 3, H, W)
    watercolor = p["watercolor"][:, None, None, None, None]
    if bool(watercolor.any()):
        foreground, background = _watercolor(foreground, background, colour, mask, edge, inside, watercolor)
    frames_01 = mask[:, :, None] * foreground + (1 - mask[:, :, None]) * background
    return frames_01 * 2 - 1, mask


def _watercolor(foreground, background, colour, mask, edge, inside, styled):
    """The watercolor style where `styled` (B, 1, 1, 1, 1) is 1: the shape a pale wash of its colour over the paper
    with a pigment rim about 3 px wide darkening its edge, the background washed out towards the paper."""
    wash = (1 - WASH) * foreground + WASH * PAPER
    rim = (mask - torch.sigmoid(edge * (inside - RIM_WIDTH)))[:, :, None]  # (B, T, 1, H, W): 1 in the band
    wash = wash * (1 - rim) + colour * RIM_SHADE * rim
    pale = (1 - WASH) * background + WASH * PAPER
    return styled * wash + (1 - styled) * foreground, styled * pale + (1 - styled) * background


def _parameters(specs: list[ClipSpec], device) -> dict[str, torch.Tensor]:
    def tensor(values, dtype=torch.float32):
        return torch.tensor(values, dtype=dtype, device=device)

    return {
        "shape": tensor([SHAPES.index(s.shape) for s in specs], torch.long),
        "texture": tensor([TEXTURES.index(s.texture) for s in specs], torch.long),
        "colour": tensor([COLOURS[s.colour] for s in specs]),
        "background": tensor([BACKGROUNDS[s.background] for s in specs]),
        "dx": tensor([DIRECTIONS[s.direction][0] for s in specs]),
        "dy": tensor([DIRECTIONS[s.direction][1] for s in specs]),
        "speed": tensor([s.speed for s in specs]),
        "radius": tensor([s.radius for s in specs]),
        "start_x": tensor([s.start[0] for s in specs]),
        "start_y": tensor([s.start[1] for s in specs]),
        "texture_angle": tensor([s.texture_angle for s in specs]),
        "texture_period": tensor([s.texture_period / s.radius for s in specs]),  # in object-local units
        "bg_angle": tensor([s.background_angle for s in specs]),
        "watercolor": tensor([float(s.style == "watercolor") for s in specs]),
    }


def _disc(u, v):
    return 1 - torch.sqrt(u * u + v * v)


def _square(u, v):
    return 0.85 - torch.maximum(u.abs(), v.abs())


def _triangle(u, v):
    """Positive inside an upward equilateral triangle of circumradius 1 (apex at v = -1, base at v = 0.5; v grows
    downwards, as rows do)."""
    base = 0.5 - v
    sides = (v + 1 - math.sqrt(3) * u.abs()) / 2
    return torch.minimum(base, sides)


def _pattern(u, v, p) -> torch.Tensor:
    """Stripes, checks or dots in object-local coordinates, softly anti-aliased: (B, T, H, W) in [0, 1]."""
    angle = p["texture_angle"][:, None, None, None]
    period = p["texture_period"][:, None, None, None]
    a = (torch.cos(angle) * u + torch.sin(angle) * v) / period
    b = (-torch.sin(angle) * u + torch.cos(angle) * v) / period
    stripes = torch.sin(2 * math.pi * a)
    checks = torch.sin(2 * math.pi * a) * torch.sin(2 * math.pi * b)
    lattice = torch.sqrt((a - torch.round(a)) ** 2 + (b - torch.round(b)) ** 2)
    dots = 0.3 - lattice
    textures = torch.stack([stripes, checks, 3 * dots], dim=0)
    chosen = textures.gather(0, p["texture"][None, :, None, None, None].expand_as(textures[:1]))[0]
    return torch.sigmoid(16.0 * chosen)  # crisp, but still about a pixel of transition


def soften(clips: torch.Tensor, scale: int) -> torch.Tensor:
    """Clips (B, T, 3, H, W) down-sampled by `scale` (area) and back (bilinear): the detail finer than `scale`
    pixels gone."""
    flat = clips.flatten(0, 1)
    small = F.interpolate(flat, scale_factor=1 / scale, mode="area")
    return F.interpolate(small, size=flat.shape[-2:], mode="bilinear", align_corners=False).unflatten(0, clips.shape[:2])


def degrade(clips: torch.Tensor, seed: int, scale: int = 4, flicker: float = 0.08, jitter: int = 2,
            noise: float = 0.04) -> torch.Tensor:
    """The low-quality analogue of clean clips (B, T, 3, H, W) in [-1, 1]: each frame down-sampled by `scale` and back
    (soft), its brightness and colour scaled per channel by 1 + N(0, flicker), shifted by up to `jitter` pixels, and
    Gaussian noise of std `noise` added. Deterministic in `seed`."""
    g = torch.Generator().manual_seed(seed)
    batch, frames, channels, height, width = clips.shape
    soft = soften(clips, scale).flatten(0, 1)
    gains = 1 + flicker * torch.randn(batch * frames, channels, 1, 1, generator=g)
    lit = (soft + 1) * gains.to(soft.device) - 1
    shifts = torch.randint(-jitter, jitter + 1, (batch * frames, 2), generator=g)
    padded = F.pad(lit, (jitter,) * 4, mode="replicate")
    moved = torch.stack([frame[:, jitter + sy:jitter + sy + height, jitter + sx:jitter + sx + width]
                         for frame, (sx, sy) in zip(padded, shifts.tolist())])
    noisy = moved + noise * torch.randn(moved.shape, generator=g).to(moved.device)
    return noisy.clamp(-1, 1).unflatten(0, (batch, frames))
