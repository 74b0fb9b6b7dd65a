"""The toy world: deterministic clips with known ground truth, prompts from their attributes, and a degradation."""

import torch

from evs_framework.toyworld.world import (COLOURS, HELD_OUT_FIRST_SEED, ClipSpec, degrade, render, render_with_masks,
                                          sample_spec, soften)


def test_a_seed_always_draws_and_renders_the_same_clip():
    assert sample_spec(7) == sample_spec(7) and sample_spec(7) != sample_spec(8)
    assert torch.equal(render([sample_spec(7)]), render([sample_spec(7)]))


def test_clips_have_the_promised_shape_and_range():
    clips = render([sample_spec(seed) for seed in range(3)])
    assert clips.shape == (3, 16, 3, 128, 128)
    assert clips.min() >= -1 and clips.max() <= 1


def test_the_prompt_names_the_attributes():
    spec = sample_spec(HELD_OUT_FIRST_SEED)
    prompt = spec.prompt
    for word in (spec.colour, spec.texture, spec.shape, spec.direction, spec.background):
        assert f" {word} " in f" {prompt} "
    assert prompt.startswith("an " if spec.colour == "orange" else "a ")


def test_the_shape_moves_smoothly_in_its_direction():
    spec = ClipSpec("disc", "striped", "red", "gray", "right", speed=0.02, radius=0.15, start=(0.3, 0.5),
                    texture_angle=0.0, texture_period=0.06, background_angle=0.0)
    clip = (render([spec])[0] + 1) / 2
    redness = clip[:, 0] - clip[:, 1]  # the red disc over a gray background
    weights = redness.clamp(min=0)
    columns = torch.arange(128, dtype=torch.float32)
    centre_x = (weights.sum(dim=1) * columns).sum(dim=1) / weights.sum(dim=(1, 2))
    steps = centre_x.diff()
    assert torch.allclose(steps, torch.full_like(steps, 0.02 * 128), atol=0.3), steps


def test_the_colour_asked_is_the_colour_drawn():
    for colour in COLOURS:
        spec = ClipSpec("square", "dotted", colour, "gray", "up", speed=0.01, radius=0.2, start=(0.5, 0.6),
                        texture_angle=0.3, texture_period=0.07, background_angle=1.0)
        centre = (render([spec])[0, 0, :, 60:70, 60:70] + 1) / 2
        bright = centre.flatten(1).max(dim=1).values  # the pattern's light tone is the colour itself
        assert torch.allclose(bright, torch.tensor(COLOURS[colour]), atol=0.05), (colour, bright)


def test_degradation_is_deterministic_softer_and_flickers():
    clips, masks = render_with_masks([sample_spec(seed) for seed in range(2)])
    bad = degrade(clips, seed=5)
    assert torch.equal(bad, degrade(clips, seed=5)) and not torch.equal(bad, degrade(clips, seed=6))

    def detail(x):  # mean absolute horizontal gradient on the shape, where the texture is
        on_shape = masks[..., None, :, 1:]
        return ((x[..., 1:] - x[..., :-1]).abs() * on_shape).sum() / (on_shape.sum() * 3)

    smooth_clips = degrade(clips, seed=5, noise=0.0)
    assert detail(smooth_clips) < 0.7 * detail(clips)
    brightness = lambda x: x.mean(dim=(2, 3, 4))  # noqa: E731
    assert brightness(bad).diff(dim=1).abs().mean() > 3 * brightness(clips).diff(dim=1).abs().mean()


def test_soften_removes_fine_detail_and_factor_one_keeps_the_clip():
    clips = render([sample_spec(seed) for seed in range(2)], frames=2)

    def detail(x):
        return (x[..., 1:] - x[..., :-1]).abs().mean()

    torch.testing.assert_close(soften(clips, 1), clips)
    assert detail(soften(clips, 4)) < detail(soften(clips, 2)) < detail(clips)
