"""Issue 21, item 9: the toy VAE draws a faint ring in the corner where the background's gradient is brightest, and
every composition's output, decoded by it, showed that ring; the VAE trained with the frame's edges weighted up does
not."""

import math

import attrs
import pytest
import torch

from evs_framework.toyworld import models
from evs_framework.toyworld.quality import background_ghost_error, brightest_corner_error_ratio
from evs_framework.toyworld.world import HELD_OUT_FIRST_SEED, render_with_masks, sample_spec


def test_the_ratio_picks_out_an_error_in_the_brightest_corner_alone():
    # a gradient rising towards the bottom right, the shape in the middle
    spec = attrs.evolve(sample_spec(HELD_OUT_FIRST_SEED), background_angle=math.pi / 4, start=(0.5, 0.5))
    frames, masks = render_with_masks([spec], frames=1)
    frames, masks = frames[:, 0], masks[:, 0]
    noisy = frames + 0.01 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))
    ring = torch.zeros_like(frames)
    ring[..., 114:122, 114:122] = 0.2
    assert brightest_corner_error_ratio(frames, noisy, masks) == pytest.approx(1.0, abs=0.1)
    assert brightest_corner_error_ratio(frames, noisy + ring, masks) > 5
    assert brightest_corner_error_ratio(frames, noisy + ring.flip(-1, -2), masks) < 0.5  # the darkest corner
    assert brightest_corner_error_ratio(frames, noisy, torch.ones_like(masks)) is None  # every corner has the shape


def test_the_shipped_vae_reconstructs_the_brightest_corner_as_well_as_the_others():
    """Measured on the first 8 held-out frames: 4.2 with the VAE shipped before issue 22 (blue backgrounds alone
    about 6), 1.33 here with the one trained with the edges weighted up; an error spread evenly
    gives 1."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(models.EXPORT_DIR / models.SD_FOLDER, subfolder="vae", torch_dtype=torch.float32)
    frames, masks = render_with_masks([sample_spec(HELD_OUT_FIRST_SEED + i) for i in range(8)], frames=1)
    frames, masks = frames[:, 0], masks[:, 0]
    with torch.no_grad():
        reconstructions = vae.decode(vae.encode(frames).latent_dist.mode()).sample
    assert brightest_corner_error_ratio(frames, reconstructions, masks) < 2.0


def test_the_ghost_error_sees_a_dot_on_the_background_and_not_the_shape_or_noise():
    spec = attrs.evolve(sample_spec(HELD_OUT_FIRST_SEED), start=(0.5, 0.5))
    frames, masks = render_with_masks([spec], frames=1)
    frames, masks = frames[:, 0], masks[:, 0]
    noisy = frames + 0.01 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))
    dot, on_shape = torch.zeros_like(frames), torch.zeros_like(frames)
    dot[..., 10:16, 100:106] = 0.4  # a 6 px ghost in a plain part of the background
    on_shape[..., 60:66, 60:66] = 0.4  # the same error inside the shape, at the frame's centre
    plain = background_ghost_error(frames, noisy, masks)
    assert plain < 0.01
    assert background_ghost_error(frames, noisy + dot, masks) > 0.1 > 10 * plain
    assert background_ghost_error(frames, noisy + on_shape, masks) == pytest.approx(plain, abs=1e-3)


@pytest.mark.xfail(strict=True, reason="the VAE shipped with issue 22's world draws ghost dots on plain backgrounds "
                   "(0.049 here after its decoder's second stage, 0.074 before it, 0.028 for the VAE before issue 22). Drop this mark "
                   "when a VAE under 0.04 ships.")
def test_the_shipped_vae_draws_no_ghost_dots_on_plain_backgrounds():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(models.EXPORT_DIR / models.SD_FOLDER, subfolder="vae", torch_dtype=torch.float32)
    frames, masks = render_with_masks([sample_spec(HELD_OUT_FIRST_SEED + i) for i in range(8)], frames=4)
    frames, masks = frames.flatten(0, 1), masks.flatten(0, 1)
    with torch.no_grad():
        reconstructions = torch.cat([vae.decode(vae.encode(part).latent_dist.mode()).sample for part in frames.split(16)])
    assert background_ghost_error(frames, reconstructions, masks) < 0.04
