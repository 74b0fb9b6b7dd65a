"""The VBench extra: its pre-flight, its results format, and a run through a stand-in `vbench` command."""

import json
import os
import stat
import sys

import pytest

from evs_framework.cli import main
from evs_framework.errors import EVSError
from evs_framework.evaluation.vbench_extra import REQUIRED, VBenchSetup, parse_results, preflight


def fake_vbench(folder, score=0.5):
    """A `vbench` command that writes results in VBench's format: every video scores `score` per dimension."""
    command = folder / "vbench"
    command.write_text(f"""#!{sys.executable}
import json, pathlib, sys
args = sys.argv[1:]
videos = sorted(pathlib.Path(args[args.index("--videos_path") + 1]).glob("*.mp4"))
dims = args[args.index("--dimension") + 1:args.index("--mode=custom_input")]
out = pathlib.Path(args[args.index("--output_path") + 1]); out.mkdir(parents=True)
results = {{d: [{score}, [{{"video_path": str(v), "video_results": {score} + i / 100}} for i, v in enumerate(videos)]]
           for d in dims}}
(out / "results_eval_results.json").write_text(json.dumps(results))
""")
    command.chmod(command.stat().st_mode | stat.S_IEXEC)
    (folder / "python").write_text("")
    return folder / "python"


def complete_cache(cache, torch_home, dimensions):
    for dimension in dimensions:
        for where, relative, _ in REQUIRED[dimension]:
            path = (cache if where == "cache" else torch_home) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"weights")


def test_preflight_lists_every_missing_file_with_its_source(tmp_path):
    setup = VBenchSetup(tmp_path / "venv" / "bin" / "python", tmp_path / "cache", tmp_path / "torch")
    complete_cache(setup.cache, setup.torch_home, ["background_consistency"])
    with pytest.raises(EVSError) as caught:
        preflight(setup, ["subject_consistency", "background_consistency", "dynamic_degree", "temporal_flickering"])
    message = str(caught.value)
    assert "5 file(s) missing" in message  # the command, DINO x2 + its code, RAFT; CLIP B/32 is there
    assert str(tmp_path / "torch" / "hub/checkpoints/dino_vitbase16_pretrain.pth") in message
    assert "raft-things.pth: needed for dynamic_degree" in message and "ViT-B-32" not in message
    assert "pip install vbench==0.1.5" in message


def test_results_in_vbench_s_format_are_read_back(tmp_path):
    (tmp_path / "x_eval_results.json").write_text(json.dumps({
        "temporal_flickering": [0.97, [{"video_path": "/v/000_output.mp4", "video_results": 0.96},
                                       {"video_path": "/v/000_source.mp4", "video_results": 0.98}]],
        "dynamic_degree": [0.5, [{"video_path": "/v/000_output.mp4", "video_results": True}]]}))
    scores = parse_results(tmp_path, {"000_output": None, "000_source": None})
    assert scores == {"temporal_flickering": {"000_output": 0.96, "000_source": 0.98},
                      "dynamic_degree": {"000_output": 1.0}}


@pytest.mark.skipif(os.name != "posix", reason="the stand-in command is a script")
def test_eval_merges_vbench_numbers_with_deltas(seed_config, tmp_path, zoo, capsys):
    assert main(["run", str(seed_config()), "--weights-dir", str(zoo), "--output-dir", str(tmp_path), "-q"]) == 0
    python = fake_vbench(tmp_path)
    complete_cache(tmp_path / "cache", tmp_path / "torch", ["temporal_flickering", "motion_smoothness"])
    code = main(["eval", str(tmp_path / "ball.IDM_VDM_IDM.mp4"), "--metrics", "temporal_flickering",
                 "--vbench", "temporal_flickering,motion_smoothness", "--vbench-python", str(python),
                 "--vbench-cache", str(tmp_path / "cache"), "--torch-home", str(tmp_path / "torch"), "-q"])
    assert code == 0
    data = json.loads((tmp_path / "metrics.json").read_text())
    [video] = data["videos"]
    assert data["metrics"]["vbench.motion_smoothness"]["family"] == "vbench_exact"
    # the stand-in gives the i-th video (sorted: 000_output, 000_source) 0.5 + i / 100
    assert video["values"]["vbench.motion_smoothness"] == 0.5
    assert video["deltas"]["vbench.motion_smoothness"] == pytest.approx(-0.01)


def test_eval_with_vbench_but_missing_weights_fails_before_scoring(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "any.mp4"), "--vbench", "dynamic_degree",
                 "--vbench-python", str(tmp_path / "nope" / "python"), "--vbench-cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "VBench cannot run offline: 2 file(s) missing" in err and "any.mp4" not in err
