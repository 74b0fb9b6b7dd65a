"""Toy-world measures against the ground truth, and the intervals the evidence table reports."""

import math

import attrs
import pytest
import torch

from evs_framework.toyworld.experiment import interval, paired_difference, summarise
from evs_framework.toyworld.measures import colour_share, measure, psnr, ssim, warp_error
from evs_framework.toyworld.world import COLOURS, HELD_OUT_FIRST_SEED, degrade, render_with_masks, sample_spec


@pytest.fixture(scope="module")
def clip():
    spec = sample_spec(HELD_OUT_FIRST_SEED)
    clean, masks = render_with_masks([spec])
    return spec, clean[0], masks[0]


def test_the_truth_measures_perfect_and_the_degraded_clip_does_not(clip):
    spec, truth, masks = clip
    perfect = measure(truth, truth, masks, spec.step(), spec.prompt)
    assert perfect["psnr"] >= 99 and perfect["ssim"] == pytest.approx(1.0) and perfect["sharpness"] == pytest.approx(1.0)
    assert perfect["colour"] == 1.0
    degraded = measure(degrade(truth[None], seed=1)[0], truth, masks, spec.step(), spec.prompt)
    assert degraded["psnr"] < 30 and degraded["ssim"] < 0.9 and degraded["sharpness"] < 0.5
    assert degraded["warp_error"] > 5 * perfect["warp_error"]


def test_colour_share_counts_the_frames_whose_shape_has_the_colour(clip):
    spec, truth, masks = clip
    other = next(c for c in COLOURS if c != spec.colour)
    recoloured_spec = attrs.evolve(spec, colour=other)
    recoloured = render_with_masks([recoloured_spec])[0][0]
    half = torch.cat([truth[:8], recoloured[8:]])  # the colour changes half-way through
    assert colour_share(truth, masks, spec.colour) == 1.0 and colour_share(truth, masks, other) == 0.0
    assert colour_share(half, masks, spec.colour) == 0.5 and colour_share(half, masks, other) == 0.5


def test_psnr_is_the_textbook_formula():
    truth = torch.zeros(2, 3, 8, 8)
    output = truth + 0.2  # 0.1 on the [0, 1] scale: MSE 0.01, PSNR 20 dB
    assert psnr(output, truth) == pytest.approx(20.0, abs=1e-4)


def test_ssim_falls_with_noise(clip):
    _, truth, _ = clip
    noisy = (truth + 0.2 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert ssim(truth, truth) == pytest.approx(1.0) and ssim(noisy, truth) < 0.8


def test_warp_error_follows_the_true_motion(clip):
    spec, truth, masks = clip
    frozen = truth[:1].expand_as(truth)  # the first frame held: the shape does not move as it should
    flicker = truth * (1 + 0.1 * torch.randn(len(truth), 1, 1, 1, generator=torch.Generator().manual_seed(1)))
    true_error = warp_error(truth, masks, spec.step())
    assert warp_error(frozen, masks, spec.step()) > 2 * true_error
    assert warp_error(flicker.clamp(-1, 1), masks, spec.step()) > 2 * true_error


def test_intervals_and_paired_differences():
    values = [1.0, 2.0, 3.0, 4.0]
    result = interval(values)
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) * sd / sqrt(n)
    assert result["mean"] == 2.5 and result["low"] == pytest.approx(2.5 - half) and result["high"] == pytest.approx(2.5 + half)

    rows = [{"composition": "A", "clip": f"c{i}", "seed": 1, "warp_error": 0.1 + 0.01 * i, "psnr": 20.0 + i}
            for i in range(5)]
    rows += [{"composition": "B", "clip": f"c{i}", "seed": 1, "warp_error": 0.2 + 0.01 * i, "psnr": 21.0 + i + 0.1 * (i % 2)}
             for i in range(5)]
    lower = paired_difference(rows, "A", "B", "warp_error")
    assert lower["mean"] == pytest.approx(-0.1) and lower["improves"]  # lower warp error is better
    worse = paired_difference(rows, "A", "B", "psnr")
    assert worse["mean"] < 0 and not worse["improves"]
    full = [{**r, "ssim": 0.5, "temporal_flickering": 0.9, "sharpness": 1.0, "texture_sharpness": 1.0, "motion": 1.0,
             "colour": 1.0} for r in rows]
    summary = summarise(full)
    assert summary["A"]["psnr"]["mean"] == pytest.approx(22.0) and summary["B"]["warp_error"]["mean"] == pytest.approx(0.22)


def test_rows_without_ground_truth_are_summarised_and_compared_on_the_reference_free_measures():
    from evs_framework.toyworld.experiment import FREE_MEASURES, claims, format_table

    rows = [{"composition": name, "clip": f"c{i}", "seed": 1, **{m: 0.5 + 0.01 * i + (name == "IDM_VDM_IDM") * 0.1
                                                                 for m in FREE_MEASURES}}
            for name in ("IDM_VDM_IDM", "VDM") for i in range(4)]
    summary = summarise(rows)
    assert set(summary["VDM"]) == set(FREE_MEASURES)
    assert format_table(summary).splitlines()[0].count("temporal_flickering") == 1
    [texture] = claims(rows)  # only the claims on measures the rows have
    assert texture["measure"] == "texture_sharpness_free" and texture["improves"]
