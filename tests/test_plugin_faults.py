"""A plugin's own exception fails the video it happened in, with a message naming the plugin and where it was
raised; the other videos run and the job report is written. Also when it happens while the models load."""

import json
import types

import pytest
import yaml

from evs_framework.api import prepare_job
from evs_framework.cli import main
from evs_framework.io import video_io
from evs_framework.plugins import load_plugins
from evs_framework.registry import load_registry
from evs_framework.runner import run_job
from evs_framework.testing.zoo import make_synthetic_clip

PLUGIN = "evs_flaky"
# An outside plugin whose part FAIL_IN raises a ValueError the first time it is used, and works after; its code lives
# in a module of its own name, as an installed plugin's does.
SOURCE = """
from evs_framework.hookspecs import hookimpl
from evs_framework.plugins import load_plugins
from evs_framework.sampler import Sampler
from evs_framework.transfer import Transfer

calls = {"count": 0}
builtin = load_plugins().catalogue
euler, random_noise = builtin.get("samplers", "euler"), builtin.get("transfers", "random")


def first_time():
    calls["count"] += 1
    if calls["count"] == 1:
        raise ValueError(f"the flaky {FAIL_IN} broke")


def step(denoise, x, ctx):
    first_time()
    return euler.step(denoise, x, ctx)


def run(context):
    first_time()
    return random_noise.run(context)


def load(entry, context):
    raise ValueError("the flaky backend broke")


@hookimpl
def register_samplers(register):
    register("flaky", Sampler("flaky", step))


@hookimpl
def register_transfers(register):
    register("flaky", Transfer("flaky", run))


@hookimpl
def register_backends(register):
    register("flaky_sd15", load)


@hookimpl
def video_start(video):
    if FAIL_IN == "hook":
        first_time()
"""


def _plugin(fail_in: str, source: str = SOURCE) -> types.ModuleType:
    module = types.ModuleType(PLUGIN)
    module.FAIL_IN = fail_in
    exec(compile(source, f"{PLUGIN}.py", "exec"), module.__dict__)  # noqa: S102 - the plugin under test
    return module


@pytest.fixture
def two_clips(tmp_path):
    return [video_io.write_video(tmp_path / f"clip{i}.mp4", make_synthetic_clip(4, 32, 24, seed=i), 8.0) for i in (1, 2)]


@pytest.mark.parametrize("part", ["sampler", "transfer", "hook"])
def test_a_plugins_exception_fails_that_video_only(tmp_path, two_clips, zoo, part):
    module = _plugin(part)
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "inputs": [{"video": str(clip), "prompt": "a red ball"} for clip in two_clips],
        "models": {"idm": {"name": "EP", **({"sampler": "flaky"} if part == "sampler" else {})}},
        "composition": "IDM",
        "settings": {"idm_inverse_strength": 0.1, "idm_invert_mode": "flaky" if part == "transfer" else "random"},
        "output": {"dir": "out", "side_by_side": False}}))
    plugins = load_plugins(extra=[module])
    job = prepare_job(spec, plugins=plugins, registry=load_registry([], plugins), device="cpu", weights_dirs=[zoo])
    first, second = run_job(job.spec, job.plan, job.context, progress=False)

    assert f"plugin '{PLUGIN}'" in first.error and f"ValueError: the flaky {part} broke" in first.error, first.error
    if part == "hook":
        assert "its video_start hook" in first.error
    else:
        assert "while composing clip1.mp4" in first.error and f"({PLUGIN}.py:" in first.error  # where it was raised
    assert second.error is None and second.output.is_file()
    report = json.loads((job.spec.output.dir / "job-report.json").read_text())
    assert [video["status"] for video in report["videos"]] == ["failed", "written"]


def test_a_backend_that_fails_to_load_fails_every_video_and_the_report_is_written(tmp_path, two_clips, zoo, capsys,
                                                                                   monkeypatch):
    module = _plugin("backend")
    registry_file = tmp_path / "flaky.yaml"
    registry_file.write_text(yaml.safe_dump({"models": {"flakyEP": {
        "kind": "flaky_sd15", "type": "t2i", "preset": "sd15", "weights": {"local": "stable-diffusion-v1-5"}}}}))
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "inputs": [{"video": str(clip), "prompt": "a red ball"} for clip in two_clips],
        "models": {"idm": {"name": "flakyEP"}}, "composition": "IDM", "settings": {"idm_inverse_strength": 0.1},
        "output": {"dir": "out", "side_by_side": False}}))
    monkeypatch.setattr("evs_framework.cli.load_plugins", lambda: load_plugins(extra=[module]))
    assert main(["run", str(spec), "--device", "cpu", "--weights-dir", str(zoo), "--registry", str(registry_file)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"plugin '{PLUGIN}', which provides kind 'flaky_sd15'" in err, err
    assert "ValueError: the flaky backend broke" in err and f"({PLUGIN}.py:" in err
    report = json.loads((tmp_path / "out" / "job-report.json").read_text())
    assert [video["status"] for video in report["videos"]] == ["failed", "failed"]


def test_a_hook_that_raises_while_planning_is_named_in_the_one_round(tmp_path, two_clips, zoo):
    from evs_framework.errors import SpecError

    module = _plugin("nothing", "from evs_framework.hookspecs import hookimpl\n\n\n@hookimpl\ndef plan_extras(spec, plan, "
                                "context):\n    return {}['missing']\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"inputs": [{"video": str(two_clips[0]), "prompt": "a"}],
                                    "models": {"idm": {"name": "EP"}}, "composition": "IDM"}))
    plugins = load_plugins(extra=[module])
    with pytest.raises(SpecError, match=f"plugin '{PLUGIN}' failed in its plan_extras hook: KeyError"):
        prepare_job(spec, plugins=plugins, registry=load_registry([], plugins), device="cpu", weights_dirs=[zoo])
