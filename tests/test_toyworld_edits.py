"""The toy world's edit and style inputs: the video is the original clip, the truth the changed one."""

import attrs
import pytest

from evs_framework.toyworld.edits import changed_clips, edited_colour
from evs_framework.toyworld.elements import wash_paleness
from evs_framework.toyworld.experiment import read_clip
from evs_framework.toyworld.measures import colour_share, psnr
from evs_framework.toyworld.world import COLOURS, HELD_OUT_FIRST_SEED, render, sample_spec


def test_the_edited_colour_is_another_colour_and_editing_twice_returns():
    for colour in COLOURS:
        assert edited_colour(colour) != colour and edited_colour(edited_colour(colour)) == colour


@pytest.mark.parametrize("kind", ["edit", "real_edit"])
def test_edit_clips_pair_the_original_video_with_the_recoloured_truth(tmp_path, kind):
    for i, clip in enumerate(changed_clips(tmp_path, 2, kind)):
        original = sample_spec(HELD_OUT_FIRST_SEED + i)
        assert clip.spec == attrs.evolve(original, colour=edited_colour(original.colour))
        assert colour_share(clip.truth, clip.masks, clip.spec.colour) == 1.0
        shown = read_clip(clip.video)
        assert colour_share(shown, clip.masks, original.colour) == 1.0  # the input is the unedited clip
        fidelity = psnr(shown, render([original])[0])
        assert fidelity > 35 if kind == "real_edit" else fidelity < 30  # clean: only the video codec between them


def test_style_clips_ask_for_watercolor_and_their_truth_is_drawn_in_it(tmp_path):
    [clip] = changed_clips(tmp_path, 1, "style")
    original = sample_spec(HELD_OUT_FIRST_SEED)
    assert clip.spec.prompt == f"{original.prompt} in watercolor"
    assert psnr(read_clip(clip.video), render([original])[0]) > 35
    assert wash_paleness(clip.truth, clip.masks) > 0.3 > wash_paleness(read_clip(clip.video), clip.masks)
