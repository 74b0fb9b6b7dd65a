"""The four elements' measures on toy-world clips: prompt words, shape masks, motion, shape and the validation."""

import attrs
import pytest

from evs_framework.errors import EVSError
from evs_framework.toyworld import elements
from evs_framework.toyworld.measure_validation import CHECKS, KEEP_FROM, validate
from evs_framework.toyworld.measures import measure
from evs_framework.toyworld.prompt_words import SPEED_RANGES, spec_words
from evs_framework.toyworld.world import HELD_OUT_FIRST_SEED, SHAPES, degrade, render_with_masks, sample_spec


def test_spec_words_reads_back_what_the_prompt_was_made_from():
    for seed in range(HELD_OUT_FIRST_SEED, HELD_OUT_FIRST_SEED + 12):
        spec = sample_spec(seed)
        spec = attrs.evolve(spec, style="watercolor") if seed % 2 else spec
        words = spec_words(spec.prompt)
        assert (words.colour, words.texture, words.shape, words.direction, words.background, words.style) == (
            spec.colour, spec.texture, spec.shape, spec.direction, spec.background, spec.style)
        assert words.speed == spec.speed_word


def test_spec_words_refuses_a_prompt_outside_the_world():
    with pytest.raises(EVSError, match="not a toy-world prompt"):
        spec_words("a pink striped disc drifting slowly left over a blue gradient")


@pytest.fixture(scope="module")
def clips():
    specs = [sample_spec(HELD_OUT_FIRST_SEED + i) for i in range(6)]
    specs = [attrs.evolve(s, style="watercolor") if i % 2 else s for i, s in enumerate(specs)]
    frames, masks = render_with_masks(specs, frames=8)
    return specs, frames, masks


def _overlap(found, truth):
    found, truth = found > 0.5, truth > 0.5
    return float((found & truth).sum() / (found | truth).sum())


def test_shape_masks_find_the_shape_off_the_background_even_when_it_flickers(clips):
    specs, frames, masks = clips
    flickering = degrade(frames, seed=2, scale=1, jitter=0, noise=0.0, flicker=0.1)
    for clean, flickered, truth in zip(frames, flickering, masks):
        assert _overlap(elements.shape_masks(clean), truth) > 0.9
        assert _overlap(elements.shape_masks(flickered), truth) > 0.9


def test_velocity_is_the_step_and_motion_scores_follow_the_prompt(clips):
    specs, frames, masks = clips
    for spec, clip in zip(specs, frames):
        moved = elements.velocity(elements.shape_masks(clip))
        assert moved == pytest.approx(spec.step(), abs=0.05)
        assert elements.motion_against_step(moved, spec.direction, spec.step())["motion"] == pytest.approx(1, abs=0.03)
        assert elements.motion_in_class(moved, spec.direction, spec.speed_word, 128) == pytest.approx(1, abs=0.03)
        backwards = tuple(-d for d in moved)
        assert elements.motion_against_step(backwards, spec.direction, spec.step())["motion"] == 0
        assert elements.motion_in_class(backwards, spec.direction, spec.speed_word, 128) == 0
    assert elements.velocity(frames[0][:1].expand(8, -1, -1, -1)[:, 0] * 0) == (0.0, 0.0)


def test_motion_in_class_is_one_inside_the_speed_words_range_and_the_ratio_outside():
    low, high = (bound * 100 for bound in SPEED_RANGES["slowly"])
    assert elements.motion_in_class((0.0, (low + high) / 2), "down", "slowly", 100) == 1.0
    assert elements.motion_in_class((0.0, low / 2), "down", "slowly", 100) == pytest.approx(0.5)
    assert elements.motion_in_class((0.0, 2 * high), "down", "slowly", 100) == pytest.approx(0.5)
    assert elements.motion_in_class((low, low), "down", "slowly", 100) == pytest.approx(2**-0.5)  # 45 degrees off


def test_shape_share_names_each_shape_as_the_world_draws_it():
    spec = sample_spec(HELD_OUT_FIRST_SEED + 3, frames=4)
    specs = [attrs.evolve(spec, shape=shape) for shape in SHAPES]
    _, masks = render_with_masks(specs, frames=4)
    for shape, clip_masks in zip(SHAPES, masks):
        for asked in SHAPES:
            words = spec_words(attrs.evolve(spec, shape=asked).prompt)
            assert elements.shape_share(clip_masks, words) == float(asked == shape)


def test_measure_keeps_the_truth_perfect_on_the_new_measures(clips):
    specs, frames, masks = clips
    for spec, clip, clip_masks in zip(specs, frames, masks):
        measured = measure(clip, clip, clip_masks, spec.step(), spec.prompt)
        assert measured["texture_sharpness"] == 1.0 and measured["shape"] == 1.0 and measured["colour_free"] == 1.0
        assert measured["motion"] == pytest.approx(1, abs=0.03) and measured["motion_in_class"] == pytest.approx(1, abs=0.03)
        assert measured["texture_sharpness_free"] == pytest.approx(1, abs=0.25)  # the prompt rendered, not the truth
        assert measured["warp_error_free"] == pytest.approx(measured["warp_error"], abs=5e-4)  # own motion, as true


def test_every_kept_measure_ranks_the_truth_above_what_spoils_its_element():
    shares = validate(24, HELD_OUT_FIRST_SEED, frames=8, size=96)
    assert shares.keys() == CHECKS.keys()
    failing = {name: by_version for name, by_version in shares.items() if min(by_version.values()) < KEEP_FROM}
    assert not failing
