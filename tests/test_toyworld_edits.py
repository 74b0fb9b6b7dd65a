"""The toy world's edit study: its inputs are the original clips, its ground truth the recoloured ones."""

import attrs

from evs_framework.toyworld.edits import edit_clips, edited_colour
from evs_framework.toyworld.experiment import read_clip
from evs_framework.toyworld.measures import colour_share, psnr
from evs_framework.toyworld.world import COLOURS, HELD_OUT_FIRST_SEED, render, sample_spec


def test_the_edited_colour_is_another_colour_and_editing_twice_returns():
    for colour in COLOURS:
        assert edited_colour(colour) != colour and edited_colour(edited_colour(colour)) == colour


def test_edit_clips_pair_the_original_video_with_the_recoloured_truth(tmp_path):
    clips = edit_clips(tmp_path, 2)
    assert set(clips) == {"clean", "degraded"}
    for i, (clean, degraded) in enumerate(zip(clips["clean"], clips["degraded"])):
        original = sample_spec(HELD_OUT_FIRST_SEED + i)
        assert clean.spec == degraded.spec == attrs.evolve(original, colour=edited_colour(original.colour))
        assert colour_share(clean.truth, clean.masks, clean.spec.colour) == 1.0
        shown = read_clip(clean.video)
        assert colour_share(shown, clean.masks, original.colour) == 1.0  # the input is the unedited clip
        assert psnr(shown, render([original])[0]) > 35  # clean: only the video codec between them
        assert psnr(read_clip(degraded.video), render([original])[0]) < 30
