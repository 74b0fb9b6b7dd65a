"""Paths that cannot be followed (links that loop, links to nothing, a folder where a file belongs) end in one error
naming the path and what is wrong with it, wherever the user gives a path."""

import os

import pytest
import yaml

from evs_framework.cli import main
from evs_framework.io import video_io
from evs_framework.paths import resolved, unreadable_reason
from evs_framework.testing.zoo import make_synthetic_clip

LOOP = "loops back on itself"
DANGLING = "which does not exist"
FOLDER = "is a folder, not a file"


def _broken(tmp_path, kind: str, name: str):
    """A path of the given kind in tmp_path: a two-link loop, a link to nothing, or a folder."""
    path = tmp_path / name
    if kind == LOOP:
        os.symlink(tmp_path / f"{name}.other", path)
        os.symlink(path, tmp_path / f"{name}.other")
    elif kind == DANGLING:
        os.symlink(tmp_path / "nowhere" / name, path)
    else:
        path.mkdir()
    return path


@pytest.fixture
def clip(tmp_path):
    return video_io.write_video(tmp_path / "clip.mp4", make_synthetic_clip(8, 64, 64), 8.0)


def _spec(tmp_path, **changes):
    data = {"inputs": [{"video": "clip.mp4", "prompt": "a red disc"}], "models": {"idm": {"name": "toyI"}},
            "composition": "IDM", "settings": {"idm_inverse_strength": 0.3}, "output": {"dir": "out"}, **changes}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _ends_in_one_error(capsys, argv, *expected):
    for command in ("plan", "run"):
        assert main([command, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "Traceback" not in err, err
        for text in expected:
            assert text in err, err


@pytest.mark.parametrize("kind", [LOOP, DANGLING, FOLDER])
def test_an_input_video_that_cannot_be_followed(tmp_path, capsys, clip, kind):
    _broken(tmp_path, kind, "bad.mp4")
    spec = _spec(tmp_path, inputs=[{"video": "bad.mp4", "prompt": "a"}, {"video": "clip.mp4", "prompt": "b"}])
    if kind == DANGLING:  # the link is followed when inputs are resolved: the file it names is what is missing
        _ends_in_one_error(capsys, [str(spec)], str(tmp_path / "nowhere" / "bad.mp4"), "does not exist")
    else:
        _ends_in_one_error(capsys, [str(spec)], str(tmp_path / "bad.mp4"), kind)


@pytest.mark.parametrize("kind", [LOOP, DANGLING, FOLDER])
def test_a_spec_a_registry_and_a_manifest_that_cannot_be_followed(tmp_path, capsys, clip, kind):
    bad = _broken(tmp_path, kind, "bad.yaml")
    _ends_in_one_error(capsys, [str(bad)], str(bad), kind)
    _ends_in_one_error(capsys, [str(_spec(tmp_path)), "--registry", str(bad)], str(bad), kind)
    manifest = _broken(tmp_path, kind, "rows.csv")
    _ends_in_one_error(capsys, [str(_spec(tmp_path, inputs={"manifest": "rows.csv"}))], str(manifest), kind)


def test_a_manifest_row_whose_video_loops(tmp_path, capsys, clip):
    _broken(tmp_path, LOOP, "bad.mp4")
    (tmp_path / "rows.csv").write_text("video,prompt\nbad.mp4,a red disc\nclip.mp4,a red disc\n")
    _ends_in_one_error(capsys, [str(_spec(tmp_path, inputs={"manifest": "rows.csv"}))], "bad.mp4", LOOP)


def test_an_output_folder_that_loops(tmp_path, capsys, clip):
    _broken(tmp_path, LOOP, "out")
    assert main(["run", str(_spec(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "output folder" in err and LOOP in err and "Traceback" not in err, err


def test_resolving_a_loop_keeps_the_path_for_the_check_that_reads_it(tmp_path):
    loop = _broken(tmp_path, LOOP, "a.mp4")
    assert resolved(loop) == loop
    assert LOOP in unreadable_reason(loop) and unreadable_reason(tmp_path / "gone") == "does not exist"
