"""The `evs` command as a user types it."""

import imageio.v2 as imageio
import pytest

from evs_framework.cli import main
from evs_framework.toyworld import models


def test_plan_prints_the_schedule(seed_config, zoo, capsys):
    assert main(["plan", str(seed_config()), "--weights-dir", str(zoo)]) == 0
    out = capsys.readouterr().out
    assert "composition IDM_VDM_IDM" in out and "ddim_renoise" in out and "all models: 62 unet calls" in out
    assert "warning" not in out


def test_plan_without_weights_or_inputs_fails_unless_allowed(seed_config, tmp_path, capsys):
    config = seed_config(videos=[tmp_path / "gone.mp4"])
    assert main(["plan", str(config)]) == 2
    err = capsys.readouterr().err
    assert "gone.mp4 does not exist" in err and "weights for model 'EP'" in err and "weights for model 'lightningEP'" in err
    assert "`evs plan --allow-missing` shows the plan without them" in err
    assert main(["plan", str(config), "--allow-missing"]) == 0
    out = capsys.readouterr().out
    assert "all models: 62 unet calls" in out and "warning (--allow-missing): video" in out


def test_plan_errors_are_one_message_and_exit_2(seed_config, capsys):
    assert main(["plan", str(seed_config(stable_steps=[25], idm_type="EX_X2.0"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "unknown model name 'EX'" in err and "Traceback" not in err


def test_models_lists_the_seed_names(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("SD", "EP", "RV", "watercolor", "lightningEP", "lightningSD", "animatelcm"):
        assert f"\n{name} " in "\n" + out


def test_sfi_generates_for_a_prompt_with_the_source_features(clip_file, zoo, tmp_path, capsys):
    import json

    code = main(["sfi", str(clip_file), "--prompt", "a blue cube on sand", "--steps", "10", "--window", "0", "0.6",
                 "--weights-dir", str(zoo), "--output-dir", str(tmp_path), "-q"])
    assert code == 0
    out = capsys.readouterr().out
    assert "+ feature_injection: using_attn: DDIM inversion of the source with EP" in out and "1 of 1 video(s) done" in out
    sidecar = json.loads((tmp_path / "ball.IDM.json").read_text())
    assert sidecar["prompt"] == "a blue cube on sand"
    assert sidecar["plugins"]["feature_injection"]["levels"] == 6  # 60 % of 10 steps from pure noise
    assert sidecar["unet_calls"] == {"idm": 10 * 2 + 10}  # 10 guided steps, 10 unguided inversion steps to capture
    assert imageio.mimread(tmp_path / "ball.IDM.mp4")


def test_sfi_arguments_are_checked_like_a_spec(clip_file, capsys):
    assert main(["sfi", str(clip_file), "--prompt", "x", "--window", "0.6", "0.2"]) == 2
    assert "$.injection.window: [0.6, 0.2] must be two fractions" in capsys.readouterr().err


def test_commands_that_load_no_model_do_not_import_the_model_libraries():
    import subprocess
    import sys

    def imported(command: str) -> str:
        script = (f"import sys\nfrom evs_framework.cli import main\nassert main([{command!r}]) == 0\n"
                  "print(sorted(m for m in ('diffusers', 'transformers', 'huggingface_hub') if m in sys.modules))")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        return done.stdout.strip().splitlines()[-1]

    assert imported("plugins") == "[]"
    assert imported("models") in ("[]", "['huggingface_hub']")  # it looks in the hub's cache for weights


def test_threads_option_sets_torchs_thread_count(seed_config, zoo, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["plan", str(seed_config()), "--weights-dir", str(zoo), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_version_names_the_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"evs {version('evs-framework')}"


def test_models_says_where_each_models_weights_are_or_that_they_are_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVS_WEIGHTS_DIR", raising=False)
    assert main(["models", "--weights-dir", str(tmp_path / "mine")]) == 0
    lines = capsys.readouterr().out.splitlines()
    after = {line.split()[0]: lines[i + 1].strip() for i, line in enumerate(lines) if not line.startswith(" ")}
    assert after["toyI"] == f"weights here: {models.EXPORT_DIR / 'toy-sd'}"
    assert after["EP"].startswith("weights missing: epiCRealism")
    (tmp_path / "mine" / "epiCRealism").mkdir(parents=True)
    (tmp_path / "mine" / "epiCRealism" / "model_index.json").write_text("{}")
    assert main(["models", "--weights-dir", str(tmp_path / "mine")]) == 0
    assert f"weights here: {tmp_path / 'mine' / 'epiCRealism'}" in capsys.readouterr().out


def test_a_fault_no_check_caught_is_one_line_and_its_traceback_only_with_verbose(monkeypatch, capsys):
    from evs_framework import cli

    def broken(args, plugins, registry):
        raise ValueError("an unforeseen fault")

    monkeypatch.setitem(cli.COMMANDS, "models", broken)
    assert main(["models"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: EVS failed while running evs models: ValueError: an unforeseen fault")
    assert "test_cli.py" in err and "Traceback" not in err and "-v" in err
    assert main(["models", "-v"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_a_reader_that_stops_reading_ends_quietly(monkeypatch, capsys):
    from evs_framework import cli

    def closed_pipe(args, plugins, registry):
        raise BrokenPipeError

    monkeypatch.setitem(cli.COMMANDS, "models", closed_pipe)
    stopped = []
    monkeypatch.setattr(cli, "_stop_writing", lambda: stopped.append(True))  # stdout is pytest's here
    assert main(["models"]) == 0 and capsys.readouterr().err == "" and stopped


@pytest.mark.parametrize("argv, named", [
    (["compare", "job.yaml", "--compositions", ","], "--compositions: ',' names nothing"),
    (["toyworld", "eval", "--clips", "0"], "--clips: 0: give at least 1"),
    (["toyworld", "eval", "--seeds", "abc"], "--seeds: 'abc': give comma-separated whole numbers"),
    (["toyworld", "sweep", "--seeds", "-1"], "--seeds: '-1': seeds are 0 or more"),
])
def test_counts_seeds_and_names_on_the_command_line_are_checked_as_they_are_read(argv, named, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and named in err and "Traceback" not in err, err
