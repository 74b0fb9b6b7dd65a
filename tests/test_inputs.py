"""Inputs at scale: folders, globs and manifests, with every problem at once; seeds that do not depend on order."""

import json
import shutil

import attrs
import pytest
import torch

from evs_framework.errors import SpecError
from evs_framework.identity import video_seed
from evs_framework.io import video_io
from evs_framework.planner import make_plan
from evs_framework.runner import run_job
from evs_framework.spec import load_spec
from evs_framework.testing.zoo import make_synthetic_clip


def write_spec(folder, inputs, **extra):
    path = folder / "job.yaml"
    path.write_text(json.dumps({"inputs": inputs, "models": {"idm": {"name": "EP"}, "vdm": {"name": "lightningEP"}},
                                "settings": {"stable_steps": [5]}, **extra}))
    return path


@pytest.fixture
def clips(tmp_path, clip_file):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("b.mp4", "a.mp4"):
        shutil.copy(clip_file, folder / name)
    (folder / "notes.txt").write_text("not a video")
    return folder


def test_a_folder_or_a_glob_lists_its_videos_in_name_order_with_one_prompt(tmp_path, clips):
    for inputs in ({"folder": "clips", "prompt": "a ball"}, {"glob": "clips/*.mp4", "prompt": "a ball"},
                   {"glob": str(clips / "*.mp4"), "prompt": "a ball"}):
        spec = load_spec(write_spec(tmp_path, inputs))
        assert [(i.video.name, i.prompt) for i in spec.inputs] == [("a.mp4", "a ball"), ("b.mp4", "a ball")]
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, {"folder": "nowhere"}))
    text = str(caught.value)
    assert "$.inputs.prompt: got null; a folder of videos needs the prompt they share" in text
    assert "nowhere is not a folder" in text


def test_a_csv_manifest_gives_each_video_its_prompt_seed_and_negative_prompt(tmp_path, clips):
    (tmp_path / "clips" / "list.csv").write_text(
        'video,prompt,seed,negative_prompt\na.mp4,"a red ball, rolling",7,blurry\nb.mp4,a blue ball,,\n')
    spec = load_spec(write_spec(tmp_path, {"manifest": "clips/list.csv"}))
    a, b = spec.inputs
    assert (a.video, a.prompt, a.seed, a.negative_prompt) == (clips / "a.mp4", "a red ball, rolling", 7, "blurry")
    assert (b.video, b.prompt, b.seed, b.negative_prompt) == (clips / "b.mp4", "a blue ball", None, None)


def test_every_manifest_problem_is_reported_at_once_with_its_line(tmp_path, clips):
    (tmp_path / "list.jsonl").write_text("\n".join([
        json.dumps({"video": "clips/a.mp4", "prompt": "fine"}),
        "{not json",
        json.dumps({"video": "clips/b.mp4", "prompt": "", "seed": -3}),
        json.dumps({"video": "clips/b.mp4", "prompt": "x", "strength": 0.4}),
        json.dumps(["clips/a.mp4"]),
        json.dumps({"video": "clips/gone.mp4", "prompt": "x", "seed": "12"}),
    ]))
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, {"manifest": "list.jsonl"}))
    text = str(caught.value)
    for expected in ("list.jsonl line 2: not JSON", "list.jsonl line 3: prompt string ''", "list.jsonl line 3: seed number -3",
                     "list.jsonl line 4: unknown key 'strength'", "list.jsonl line 5: a list of 1 item is not an object"):
        assert expected in text, expected
    assert "line 1" not in text and "line 6" not in text  # a seed given as "12" is read as 12; files are checked later
    (tmp_path / "bad.csv").write_text("video,prompt\nclips/a.mp4,\n")
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, {"manifest": "bad.csv"}))
    assert caught.value.problems == ["bad.csv line 2: prompt string ''; give the prompt as text"]  # not also "no videos"


def test_a_csv_manifest_with_wrong_columns_names_them(tmp_path, clips):
    (tmp_path / "list.csv").write_text("file,text,seed\na.mp4,x,1\n")
    with pytest.raises(SpecError, match="list.csv line 1: unknown column 'file'; unknown column 'text'; no video, prompt column"):
        load_spec(write_spec(tmp_path, {"manifest": "list.csv"}))


def test_two_ways_of_giving_inputs_are_refused(tmp_path, clips):
    with pytest.raises(SpecError, match="give one of manifest, folder, glob \\(got manifest, folder\\)"):
        load_spec(write_spec(tmp_path, {"manifest": "list.csv", "folder": "clips"}))


def test_a_videos_seed_depends_on_the_spec_seed_and_its_content_not_its_place(tmp_path, clips, clip_file):
    spec = load_spec(write_spec(tmp_path, {"folder": "clips", "prompt": "a ball"}))
    a, b = spec.inputs
    other = tmp_path / "other.mp4"
    video_io.write_video(other, make_synthetic_clip(8, 64, 48, seed=9), 8.0)
    assert video_seed(23, a) == video_seed(23, b)  # the same bytes under two names
    assert video_seed(23, a) != video_seed(24, a)
    assert video_seed(23, a) != video_seed(23, attrs.evolve(a, video=other))
    assert video_seed(23, attrs.evolve(a, seed=5)) == 5


def test_a_video_comes_out_the_same_alone_or_in_a_batch_in_any_order(tmp_path, clip_file, plugins, registry, context):
    video_io.write_video(tmp_path / "in" / "other.mp4", make_synthetic_clip(8, 64, 48, seed=9), 8.0)
    shutil.copy(clip_file, tmp_path / "in" / "ball.mp4")

    def run(names, out):
        inputs = [{"video": f"in/{n}", "prompt": "a ball"} for n in names]
        spec = load_spec(write_spec(tmp_path, inputs, output={"dir": out, "side_by_side": False}))
        results = run_job(spec, make_plan(spec, registry, plugins), context, progress=False)
        return {r.source.name: video_io.read_video(r.output, max_frames=None).frames for r in results}

    alone = run(["other.mp4"], "alone")
    batch = run(["ball.mp4", "other.mp4"], "batch")
    reversed_batch = run(["other.mp4", "ball.mp4"], "reversed")
    assert torch.equal(alone["other.mp4"], batch["other.mp4"])
    assert torch.equal(batch["ball.mp4"], reversed_batch["ball.mp4"])
    assert torch.equal(batch["other.mp4"], reversed_batch["other.mp4"])


def test_a_manifest_row_may_change_the_settings_of_its_video(tmp_path, clips, plugins, registry, context):
    (tmp_path / "list.jsonl").write_text("\n".join([
        json.dumps({"video": "clips/a.mp4", "prompt": "a ball", "settings": {"stable_num": 1}}),
        json.dumps({"video": "clips/b.mp4", "prompt": "a ball"}),
    ]))
    spec = load_spec(write_spec(tmp_path, {"manifest": "list.jsonl"}, output={"dir": "out", "side_by_side": False}))
    a, b = spec.inputs
    assert a.settings.stable_num == 1 and a.settings.stable_steps == spec.settings.stable_steps and b.settings is None
    results = run_job(spec, make_plan(spec, registry, plugins), context, progress=False)
    assert [r.unet_calls["vdm"] for r in results] == [1, 2]
    sidecar = json.loads(results[0].sidecar.read_text())
    assert sidecar["spec"]["settings"]["stable_num"] == 1


def test_a_rows_bad_settings_are_named_with_its_line_before_anything_loads(tmp_path, clips, zoo, capsys):
    from evs_framework.cli import main

    (tmp_path / "list.csv").write_text('video,prompt,settings\nclips/a.mp4,a ball,"{""stable_num"": 0}"\n'
                                       'clips/b.mp4,a ball,"{""strength"": 1}"\nclips/b.mp4,a ball,not json\n'
                                       'clips/a.mp4,a ball,"{""stable_steps"": [99]}"\n')
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, {"manifest": "list.csv"}))
    text = str(caught.value)
    assert "$.inputs[0].settings.stable_num: 0; the T2V model needs at least 1 step" in text
    assert "list.csv line 3).settings: unknown key 'strength' (did you mean" in text
    assert "list.csv line 4: settings string 'not json'" in text
    (tmp_path / "list.csv").write_text('video,prompt,settings\nclips/a.mp4,a ball,"{""stable_steps"": [99]}"\n')
    code = main(["plan", str(write_spec(tmp_path, {"manifest": "list.csv"})), "--weights-dir", str(zoo)])
    assert code != 0
    assert "video a.mp4 (its own settings): " in capsys.readouterr().err


def test_evs_plan_shows_the_plan_of_videos_with_their_own_settings(tmp_path, clips, zoo, capsys):
    from evs_framework.cli import main

    (tmp_path / "list.jsonl").write_text("\n".join([
        json.dumps({"video": "clips/a.mp4", "prompt": "a ball", "settings": {"stable_num": 1}}),
        json.dumps({"video": "clips/b.mp4", "prompt": "a ball"}),
    ]))
    assert main(["plan", str(write_spec(tmp_path, {"manifest": "list.jsonl"})), "--weights-dir", str(zoo)]) == 0
    out = capsys.readouterr().out
    assert "videos with their own settings (a.mp4):" in out
    assert "inputs: 2 video(s), up to 16 frames each; 1 with their own settings" in out
    spec_plan, own_plan = out.split("videos with their own settings")
    assert "vdm lightningEP: 2 denoising steps" in spec_plan and "vdm lightningEP: 1 denoising steps" in own_plan
