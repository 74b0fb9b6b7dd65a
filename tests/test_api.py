"""The Python API: models loaded once, frames in memory in and out, the run's record."""

import numpy as np
import pytest
import torch

from evs_framework.api import Composer
from evs_framework.errors import PlanError, SpecError, VideoError
from evs_framework.testing.zoo import make_synthetic_clip
from tests.test_readme import block_starting

TINY = {"models": {"idm": {"name": "EP"}, "vdm": {"name": "lightningEP"}}, "settings": {"stable_steps": [5]}}


@pytest.fixture(scope="module")
def composer(zoo):
    return Composer(TINY, device="cpu", weights_dirs=[zoo])


@pytest.fixture(scope="module")
def frames():
    clip = make_synthetic_clip(4, 64, 48, seed=2)  # (T, 3, H, W) in [-1, 1]
    return ((clip.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def test_frames_come_back_as_they_were_given(composer, frames):
    out = composer(frames, "a red ball")
    assert isinstance(out.frames, np.ndarray) and out.frames.dtype == np.uint8 and out.frames.shape == frames.shape
    as_floats = composer(frames.astype(np.float32) / 255, "a red ball")
    assert as_floats.frames.dtype == np.float32 and 0 <= as_floats.frames.min() and as_floats.frames.max() <= 1
    assert np.abs(as_floats.frames * 255 - out.frames).max() <= 1  # the same run, rounded once
    as_torch = composer(torch.from_numpy(frames), "a red ball")
    assert isinstance(as_torch.frames, torch.Tensor) and torch.equal(as_torch.frames, torch.from_numpy(out.frames))


def test_a_call_is_deterministic_and_its_record_is_the_plans(composer, frames):
    first, again = composer(frames, "a red ball"), composer(frames, "a red ball")
    assert np.array_equal(first.frames, again.frames) and first.record["seed"] == again.record["seed"]
    assert first.record["unet_calls"] == {"idm": 40, "vdm": 2}
    assert sum(op["unet_calls"] for op in first.record["ops"]) == 42
    assert first.record["plan"].startswith("plan: composition IDM_VDM_IDM")
    other = composer(frames, "a red ball", seed=first.record["seed"] + 1)
    assert not np.array_equal(first.frames, other.frames)


def test_settings_overrides_replan_without_reloading(composer, frames):
    unet = composer.backends["idm"].unet
    fewer = composer(frames, "a red ball", settings={"stable_num": 1})
    assert fewer.record["unet_calls"]["vdm"] == 1 and composer.backends["idm"].unet is unet
    with pytest.raises(SpecError, match="settings: unknown key 'stable'"):
        composer(frames, "a red ball", settings={"stable": 1})
    with pytest.raises(SpecError, match="settings.stable_num: 0; the T2V model needs at least 1 step"):
        composer(frames, "a red ball", settings={"stable_num": 0})


def test_frames_of_the_wrong_shape_or_range_are_refused(composer, frames, zoo):
    with pytest.raises(VideoError, match="give \\(frames, height, width, 3\\)"):
        composer(frames[..., 0], "a red ball")
    with pytest.raises(VideoError, match="give them in \\[0, 1\\]"):
        composer(frames.astype(np.float32), "a red ball")
    with pytest.raises(VideoError, match="at least one frame"):
        composer(frames[:0], "a red ball")
    long = np.concatenate([frames] * 9)  # 36 frames
    assert composer(long, "a red ball").frames.shape[0] == 16  # video.max_frames applies
    uncapped = Composer({**TINY, "video": {"max_frames": None}}, device="cpu", weights_dirs=[zoo])
    result = uncapped(long, "a red ball")  # longer than lightningEP's 16: in context windows
    assert result.frames.shape[0] == 36 and "36 frames run as 3 windows of 16 (overlap 4)" in result.record["plan"]


def test_the_readme_example_runs(capsys):
    exec(compile(block_starting("python", "from evs_framework import Composer"), "README", "exec"), {})
    assert capsys.readouterr().out.strip() == "(16, 128, 128, 3) {'idm': 24, 'vdm': 2}"


def test_a_call_may_run_another_composition_with_the_same_models(composer, frames, zoo):
    unet = composer.backends["idm"].unet
    alone = composer(frames, "a red ball", composition="IDM")
    assert alone.record["composition"] == "IDM" and alone.record["unet_calls"] == {"idm": 40}  # no T2V call
    assert composer.backends["idm"].unet is unet and composer.plan.composition == "IDM_VDM_IDM"
    spec, plan = composer.planned(composition="VDM", settings={"vdm_inverse_strength": 0.5})
    assert spec.composition == plan.composition == "VDM" and spec.settings.vdm_inverse_strength == 0.5
    with pytest.raises(PlanError, match="unknown composition 'EVS2'"):
        composer.planned(composition="EVS2")
    t2i_only = Composer({**TINY, "composition": "IDM"}, device="cpu", weights_dirs=[zoo])
    assert set(t2i_only.backends) == {"idm"}  # the T2V model loads when a call's composition needs it
    assert t2i_only(frames, "a red ball", composition="IDM_VDM_IDM").record["unet_calls"] == {"idm": 40, "vdm": 2}
