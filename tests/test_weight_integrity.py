"""Damaged weight files (a download cut short, random bytes, a config that is not JSON) named before any weight loads,
by `evs plan` and `evs run` alike; a file that passes those checks and still fails to load fails its videos with the
model and the fix, never a traceback."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from evs_framework.cli import main
from evs_framework.loaders.integrity import safetensors_problem
from evs_framework.testing.zoo import ANIMATELCM_FOLDER, LIGHTNING_FILE, SD_FOLDER, SINGLE_FILES, WATERCOLOR_LORA

EP_FILE = next(iter(SINGLE_FILES))
# a damaged file, the models the spec uses to reach it (seed config keys) and the registry entry that owns it
DAMAGED = {
    "diffusers unet": (f"{SD_FOLDER}/unet/diffusion_pytorch_model.safetensors", {}, "SD"),
    "diffusers config": (f"{SD_FOLDER}/vae/config.json", {}, "SD"),
    "single file": (EP_FILE, {}, "EP"),
    "lora": (WATERCOLOR_LORA, {"idm_type": "watercolor_X2.0"}, "watercolor"),
    "motion adapter file": (LIGHTNING_FILE, {}, "lightningEP"),
    "motion adapter config": (f"{ANIMATELCM_FOLDER}/config.json", {"vdm_type": "animatelcm"}, "animatelcm"),
    "motion adapter folder": (f"{ANIMATELCM_FOLDER}/diffusion_pytorch_model.safetensors", {"vdm_type": "animatelcm"},
                              "animatelcm"),
}


def cut_short(file):
    data = file.read_bytes()
    file.write_bytes(data[:len(data) // 2])
    return len(data)


def random_bytes(file):
    file.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())


def not_json(file):
    file.write_text('{"_class_name": "AutoencoderKL", ')


@pytest.fixture
def weights(zoo, tmp_path):
    """A copy of the zoo that a test may damage."""
    return shutil.copytree(zoo, tmp_path / "weights")


def error_of(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("case", DAMAGED)
@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_damaged_file_is_named_with_the_fix_before_any_model_loads(case, command, weights, seed_config, capsys,
                                                                     monkeypatch):
    name, changes, owner = DAMAGED[case]
    file = weights / name
    if file.suffix == ".json":
        not_json(file)
        expected = [f"{file} (", "is not valid JSON"]
    else:
        size = cut_short(file)
        expected = [f"{file} is {size // 2} bytes, but its header says {size} (cut short)"]
    monkeypatch.setattr("evs_framework.loading.LoadContext.load", lambda *_: pytest.fail("a model was loaded"))
    assert main([command, str(seed_config(**changes)), "--weights-dir", str(weights), "-q"]) == 2
    err = error_of(capsys)
    assert f"model {owner!r}" in err and all(part in err for part in expected) and "it again" in err


@pytest.mark.parametrize("case", ["single file", "lora", "motion adapter file", "diffusers unet"])
def test_random_bytes_in_a_weights_file_are_named(case, weights, seed_config, capsys):
    name, changes, owner = DAMAGED[case]
    random_bytes(weights / name)
    assert main(["plan", str(seed_config(**changes)), "--weights-dir", str(weights)]) == 2
    err = error_of(capsys)
    assert f"model {owner!r}" in err and f"{weights / name} (4096 bytes) does not start with a safetensors header" in err


def test_the_hub_fix_names_evs_fetch(weights, seed_config, capsys):
    cut_short(weights / LIGHTNING_FILE)
    assert main(["plan", str(seed_config()), "--weights-dir", str(weights)]) == 2
    assert "`evs fetch lightningEP`" in error_of(capsys)


def test_a_header_that_lies_about_the_length_is_caught_both_ways(tmp_path):
    file = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(4)}, str(file))
    assert safetensors_problem(file) is None
    whole = file.read_bytes()
    file.write_bytes(whole + b"\0" * 3)
    assert f"is {len(whole) + 3} bytes, but its header says {len(whole)}" in safetensors_problem(file)
    file.write_bytes(whole[:8] + b"[1, 2]" + whole[14:])
    assert "unreadable safetensors header" in safetensors_problem(file)


def test_a_file_that_passes_the_checks_but_does_not_load_ends_the_job_cleanly(weights, seed_config, tmp_path, capsys):
    # a whole safetensors file with the wrong tensors: only loading it can tell
    save_file({"unrelated.weight": torch.zeros(3, 3)}, str(weights / SD_FOLDER / "unet" / "diffusion_pytorch_model.safetensors"))
    config = seed_config(idm_type="SD_X2.0", vdm_type="lightningSD")
    assert main(["plan", str(config), "--weights-dir", str(weights)]) == 0
    capsys.readouterr()
    output = tmp_path / "out"
    assert main(["run", str(config), "--weights-dir", str(weights), "--output-dir", str(output), "-q"]) == 2
    err = error_of(capsys)
    assert f"model 'SD' could not be loaded from {weights / SD_FOLDER}" in err and "download them again (`evs fetch SD`)" in err
    report = json.loads((output / "job-report.json").read_text())
    assert report["counts"]["failed"] == 1 and "model 'SD' could not be loaded" in report["videos"][0]["error"]


def test_a_missing_base_is_reported_with_the_model_that_builds_on_it(seed_config, tmp_path, capsys):
    # EP is a single checkpoint read with SD's configs: with neither there, both are named in one round
    assert main(["plan", str(seed_config()), "--weights-dir", str(tmp_path / "empty")]) == 2
    err = error_of(capsys)
    assert "weights for model 'EP'" in err and "weights for model 'lightningEP'" in err
    assert "weights for model 'SD'" in err and "model 'EP' builds on 'SD': weights for model 'SD'" in err
