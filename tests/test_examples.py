"""The runnable toy example of examples/toy: what a new user runs first, without weights to download."""

from pathlib import Path

import imageio.v2 as imageio

from evs_framework.cli import main

TOY = Path(__file__).resolve().parent.parent / "examples" / "toy"


def test_the_toy_spec_plans_without_missing_files(capsys):
    assert main(["plan", str(TOY / "enhance.yaml")]) == 0
    out = capsys.readouterr().out
    assert "idm: toyI" in out and "vdm: toyV" in out and "all models: 26 unet calls" in out
    assert "inputs: 1 video(s)" in out and "--allow-missing" not in out


def test_the_three_model_toy_spec_plans_each_roles_calls(capsys):
    assert main(["plan", str(TOY / "style.yaml")]) == 0
    out = capsys.readouterr().out
    assert "style: toyWatercolor [sd15_lora]" in out and "style toyWatercolor: 4 denoising steps, 8 unet calls" in out


def test_the_toy_manifest_batch_plans_its_two_rows(capsys):
    assert main(["plan", str(TOY / "batch.yaml")]) == 0
    assert "inputs: 2 video(s)" in capsys.readouterr().out


def test_the_toy_spec_runs_end_to_end(tmp_path, capsys):
    assert main(["run", str(TOY / "enhance.yaml"), "--output-dir", str(tmp_path), "-q"]) == 0
    assert "1 of 1 video(s) done" in capsys.readouterr().out
    frames = imageio.mimread(tmp_path / "toy_clip_1.IDM_VDM_IDM.mp4")
    assert len(frames) == 8 and frames[0].shape == (128, 128, 3)
