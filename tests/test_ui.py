"""`evs ui` without a browser: the page's plain functions (plan summary and time estimate, models and what they need,
upload checks, the spec it hands out), and runs through its adapter on the tiny model zoo: progress, cancel."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
import yaml

from evs_framework.cli import main
from evs_framework.plugins import load_plugins
from evs_framework.registry import load_registry
from evs_framework.spec import load_spec
from evs_framework.ui import framework, tables
from evs_framework.ui.session import (Finished, Form, follow, kept_upload, new_run_folder, parse_steps, spec_data,
                                      spec_text, upload_problem)

SETTINGS = {"idm_invert_mode": "random", "vdm_invert_mode": "random", "idm_invert_mode_2": "ddim",
            "idm_inverse_strength": 0.4, "vdm_inverse_strength": 0.4, "stable_steps": "8", "stable_num": 2}


@pytest.fixture
def bench(zoo):
    """A workbench of its own (its step watch is registered in a plugin manager no other test sees)."""
    plugins = load_plugins()
    return framework.open_workbench(plugins, load_registry([], plugins), {"device": "cpu", "weights_dirs": [zoo]})


def form_for(video: Path, **settings) -> Form:
    return Form(video, "a red ball on grass", "EP", "lightningEP", "IDM_VDM_IDM", {**SETTINGS, **settings}, 23, 8)


def cli_problems(data: dict, folder: Path, capsys) -> str:
    """What `evs plan` prints for the same spec, written as a file."""
    path = folder / "same.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["plan", str(path)]) == 2
    return capsys.readouterr().err


def test_the_plan_counts_unet_calls_per_model_as_evs_plan_does(bench, clip_file, tmp_path):
    prepared = framework.prepare(bench, spec_data(form_for(clip_file), tmp_path / "out"))
    assert "plan: composition IDM_VDM_IDM" in prepared.plan_text
    assert "idm EP: 20 denoising steps, 40 unet calls" in prepared.plan_text
    assert prepared.unet_calls == {"EP": 40, "lightningEP": 2}
    assert (prepared.frames, prepared.size) == (8, (64, 48))
    assert prepared.output == tmp_path / "out" / "ball.IDM_VDM_IDM.mp4"


def test_stable_steps_beyond_the_strength_get_the_clis_message(bench, clip_file, tmp_path, capsys):
    data = spec_data(form_for(clip_file, stable_steps="25"), tmp_path / "out")
    with pytest.raises(framework.EVSError) as raised:
        framework.prepare(bench, data)
    [problem] = raised.value.problems
    assert "$.settings.stable_steps[0]=25 must be smaller than the 20 steps" in problem
    assert f"  - {problem}" in cli_problems(data, tmp_path, capsys)


def test_stable_steps_typed_as_text_are_checked_by_the_spec(bench, clip_file, tmp_path):
    assert parse_steps("8, 3") == [8, 3] and parse_steps(" 5 ") == [5] and parse_steps("") == []
    with pytest.raises(framework.EVSError, match=r"\$\.settings\.stable_steps"):
        framework.prepare(bench, spec_data(form_for(clip_file, stable_steps="8, x"), tmp_path))


def test_the_spec_handed_out_is_the_spec_that_ran(clip_file, tmp_path):
    form = form_for(clip_file, stable_steps="8, 3")
    path = tmp_path / "run-001.yaml"
    path.write_text(spec_text(form))
    ran = load_spec(path)
    assert ran == load_spec(_written(tmp_path / "ran.yaml", spec_data(form, ran.output.dir)))
    assert ran.settings.stable_steps == (8, 3) and ran.video.max_frames == 8 and ran.inputs[0].video == clip_file
    assert "output" not in yaml.safe_load(path.read_text())  # `evs run` writes to ./outputs/run-001


def _written(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_models_without_weights_say_where_they_were_searched_and_how_to_get_them(zoo, tmp_path, monkeypatch):
    monkeypatch.delenv("EVS_WEIGHTS_DIR", raising=False)
    plugins = load_plugins()
    bench = framework.open_workbench(plugins, load_registry([], plugins), {"device": "cpu",
                                                                            "weights_dirs": [tmp_path / "none"]})
    statuses = {status.name: status for status in framework.model_statuses(bench)}
    assert statuses["toyI"].runnable and statuses["toyV"].runnable  # they ship with EVS
    assert not statuses["SD"].runnable
    [problem] = statuses["SD"].problems
    assert str(tmp_path / "none") in problem and "evs fetch SD" in problem
    assert any("builds on 'EP'" in p for p in statuses["lightningEP"].problems)
    listing = tables.models_markdown(list(statuses.values()))
    assert "| SD | T2I | sd15 | no: weights missing |" in listing and "| toyI | T2I | sd15 | yes |" in listing
    assert f"**SD** cannot run here:\n```text\n{problem}\n```" in listing
    choices = dict(tables.model_choices(list(statuses.values()), "t2i"))
    assert choices["toyI"] == "toyI" and choices["SD (weights missing)"] == "SD"
    assert "lightningEP (weights missing)" not in choices  # a T2V model


def test_a_file_that_is_not_a_video_gets_the_clis_message(bench, tmp_path, capsys):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    problem = upload_problem(notes)
    assert problem.startswith(f"cannot read video {notes}: ")
    data = spec_data(form_for(notes), tmp_path / "out")
    assert f"  - {problem}" in cli_problems(data, tmp_path, capsys)


def test_a_cut_off_video_is_refused_and_a_whole_one_kept(clip_file, tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip_file.read_bytes()[:600])
    assert upload_problem(cut).startswith(f"cannot read video {cut}: ")
    assert upload_problem(clip_file) is None
    note = tables.clip_note(clip_file.name, framework.probe(clip_file), 16)
    assert note == "ball.mp4: about 8 frames of 64x48 at 8 fps; the run reads the first 8 (video.max_frames)"
    kept = kept_upload(clip_file, tmp_path / "uploads")
    assert kept.name == clip_file.name and kept.read_bytes() == clip_file.read_bytes()
    assert kept_upload(clip_file, tmp_path / "uploads") == kept  # the same content is kept once


def test_a_video_over_the_pages_limit_is_refused_with_the_way_on(clip_file):
    problem = upload_problem(clip_file, max_mib=0.001)
    assert problem.startswith("ball.mp4 is 0 MiB, more than the 0.001 MiB this page takes") and "evs run" in problem


def sidecar(models: dict, stages: list, frames: int = 8, size=(64, 48), seconds: float = 10.0) -> dict:
    return {"models": models, "stages": stages, "frames": frames, "size": list(size), "seconds": seconds,
            "unet_calls": {}}


def test_the_estimate_scales_each_models_seconds_per_call_to_the_clip():
    earlier = [sidecar({"idm": "toyI", "vdm": "toyV"}, [{"stage": 1, "model": "idm", "seconds": 4.0, "unet_calls": 20},
                                                       {"stage": 2, "model": "vdm", "seconds": 2.0, "unet_calls": 2}],
                       seconds=8.0)]
    assert tables.estimate({"toyI": 10}, 8, (64, 48), []) is None
    same = tables.estimate({"toyI": 10, "toyV": 1}, 8, (64, 48), earlier)
    assert same.seconds == pytest.approx(10 * 0.2 + 1 * 1.0 + 2.0) and same.runs == 1
    twice = tables.estimate({"toyI": 10, "toyV": 1}, 16, (64, 48), earlier)  # twice the frames, twice the work
    assert twice.seconds == pytest.approx(2 * same.seconds)
    unseen = tables.estimate({"EP": 22}, 8, (64, 48), earlier)  # a model never run: the mean of all calls
    assert unseen.seconds == pytest.approx(22 * 6.0 / 22 + 2.0)
    text = tables.plan_summary({"toyI": 10, "toyV": 1}, 8, (64, 48), same)
    assert "toyI 10, toyV 1 (11 in all)" in text and "about 5.0 s" in text and "from 1 earlier run;" in text
    assert "no earlier runs" in tables.plan_summary({"toyI": 10}, 8, (64, 48), None)


def test_only_sidecars_count_as_earlier_runs(tmp_path):
    run = tmp_path / "run-001"
    run.mkdir()
    record = sidecar({"idm": "toyI"}, [])
    (run / "clip.IDM.json").write_text(json.dumps(record))
    (run / "job-report.json").write_text(json.dumps({"videos": []}))
    (run / "metrics.json").write_text("{not json")
    assert tables.read_sidecars(tmp_path) == [record]
    assert tables.read_sidecars(tmp_path / "nothing yet") == []


def test_run_folders_are_numbered_on(tmp_path):
    assert new_run_folder(tmp_path).name == "run-001"
    (tmp_path / "run-007").mkdir()
    assert new_run_folder(tmp_path).name == "run-008"


def test_measures_say_which_way_is_better():
    rows = tables.score_rows({"psnr": {"input": 20.0, "output": 22.5},
                              "warp_error": {"input": 0.04, "output": 0.01},
                              "proxy.x": {"input": 1.0, "output": 2.0, "higher_is_better": False},
                              "proxy.imaging_niqe": {"input": float("nan"), "output": float("nan")}})
    assert rows == [["psnr", "20.0000", "22.5000", "+2.5000", "yes"],
                    ["warp_error", "0.0400", "0.0100", "-0.0300", "yes"],
                    ["proxy.x", "1.0000", "2.0000", "+1.0000", "no"], ["proxy.imaging_niqe", "n/a", "n/a", "", ""]]


def test_a_run_tells_each_step_and_a_cancel_leaves_nothing_written(bench, clip_file, tmp_path):
    folder = tmp_path / "runs" / "run-001"
    prepared = framework.prepare(bench, spec_data(form_for(clip_file), folder))
    cancel = threading.Event()

    def cancelled_at_the_third_step(listener):
        def listen(event):
            if event.done == 2:
                cancel.set()
            listener(event)
        return framework.run(bench, prepared, listen)

    *steps, finished = follow(cancelled_at_the_third_step, cancel)
    assert isinstance(finished.error, framework.RunCancelled) and len(steps) == 2
    assert sorted(p.name for p in folder.iterdir()) == []  # no video, sidecar, partial file or lock

    *steps, finished = follow(lambda listener: framework.run(bench, prepared, listener), threading.Event())
    assert isinstance(finished, Finished) and finished.error is None
    assert finished.result.output == prepared.output and prepared.output.is_file()
    denoising = [op for op in prepared.job.plan.ops if type(op).__name__ == "DenoiseOp"]
    assert len(steps) == sum(op.steps for op in denoising) == steps[0].total
    assert [(s.model, s.sigma) for s in steps[:2]] == [("EP", denoising[0].sigmas[0]), ("EP", denoising[0].sigmas[1])]
    window = next(s for s in steps if s.model == "lightningEP")
    assert (window.op, window.step, window.ops) == (4, 0, len(prepared.job.plan.ops))
    assert "op 4 of 6: denoise with lightningEP, step 1 of 2, sigma" in tables.progress_text(window)
    assert tables.read_sidecars(tmp_path / "runs")  # the next plan's estimate has this run


def test_ui_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["ui"]) == 2
    assert "pip install -e '.[ui]'" in capsys.readouterr().err


def test_a_toy_clips_result_shows_its_ground_truth_and_measures_against_it(bench, tmp_path):
    from evs_framework.ui.results import compare_view, record_run

    [toy] = framework.toy_clips(tmp_path / "toy_clips", 1)
    form = Form(toy.video, toy.prompt, "EP", "lightningEP", "IDM", {**SETTINGS, "idm_inverse_strength": 0.1}, 23, 4)
    prepared = framework.prepare(bench, spec_data(form, tmp_path / "runs" / "run-001"))
    record = record_run(bench, form, prepared, framework.run(bench, prepared, lambda event: None), toy)
    assert record.scores["psnr"]["input"] > 0 and "temporal_flickering" in record.scores  # the truth's and eval's
    view = framework.read_frames(record.view)
    assert view.shape[0] == 4 and view.shape[-1] == 3 * 256  # input | output | ground truth, each scaled to 256
    assert {path.name for path in record.files} >= {"clip_1000000000.IDM.mp4", "run-001.yaml", "metrics.json",
                                                    "clip_1000000000.IDM.contact_sheet.png"}
    again = compare_view([record, record], tmp_path / "compare")
    assert framework.read_frames(again).shape[-1] == 2 * 256


def test_the_runs_table_has_every_measure_any_run_has():
    from evs_framework.ui.session import RunRecord

    settings = {**SETTINGS, "seed": 23, "frames": 8}
    runs = [RunRecord(f"run-00{i}", "clip.mp4", "IDM", {"idm": "toyI", "vdm": "toyV"}, settings, 1.5, {"toyI": 4},
                      scores, Path("o.mp4"), Path("v.mp4"), Path("s.png"), Path("r.yaml"), ())
            for i, scores in ((1, {"psnr": {"input": 20.0, "output": 21.0}}),
                              (2, {"ssim": {"input": 0.5, "output": 0.6}}))]
    headers, rows = tables.run_rows(runs)
    assert headers == tables.RUN_HEADERS + ["psnr", "ssim"]
    assert rows[0][-2:] == ["21.0000", ""] and rows[1][-2:] == ["", "0.6000"]
    assert rows[0][4] == ("strengths 0.4 / 0.4, stable_steps 8, stable_num 2, invert random / random / ddim, seed 23, "
                          "8 frames")


def test_the_pages_cancel_button_stops_its_run_and_frees_the_machine(bench, clip_file, tmp_path, monkeypatch):
    from evs_framework.ui.app import Page

    pressed, running = threading.Event(), framework.run

    def run_held_at_the_second_step(bench, prepared, listener):  # so that the press comes before the run ends
        def listen(event):
            if event.done == 1:
                pressed.wait(30)
            listener(event)
        return running(bench, prepared, listen)

    monkeypatch.setattr(framework, "run", run_held_at_the_second_step)
    page = Page(bench, tmp_path / "ui")
    page.build()
    request = type("Request", (), {"session_hash": "one tab"})()
    values = ["upload", None, str(clip_file), "a red ball on grass", "EP", "lightningEP", "IDM_VDM_IDM", "random",
              "random", "ddim", 0.4, 0.4, "8", 2, 23, 8]
    shown = []
    for update in page.run(request, *values):
        shown.append(str(update.get(page.progress)))
        if shown[-1].startswith("**Running** op") and not pressed.is_set():
            assert page.cancel(request).startswith("**Cancelling**")
            pressed.set()
    assert shown[-1] == "**Cancelled**: nothing was written" and not (tmp_path / "ui" / "runs" / "run-001").exists()
    assert page.cancel(request) == "Nothing is running."

    *_, done = page.run(request, *values)  # the machine is free again
    assert done[page.progress].startswith("**Done**")
    assert (tmp_path / "ui" / "runs" / "run-001" / "run-001.yaml").is_file()


def test_the_command_shown_to_rerun_carries_the_flags_that_change_the_output():
    from evs_framework.cli import _run_flags, build_parser

    args = build_parser().parse_args(["ui", "--port", "8000", "--device", "cpu", "--threads", "3", "--offload",
                                      "--weights-dir", "w", "--output-dir", "elsewhere"])
    assert _run_flags(args) == "--device cpu --threads 3 --weights-dir w --offload"
    assert _run_flags(build_parser().parse_args(["ui"])) == ""
