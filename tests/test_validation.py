"""One round of validation before any weight loads: every problem of a job in one error, bounded and in our words."""

import json
import re
from pathlib import Path

import pytest

from evs_framework import runner
from evs_framework.io import video_io
from evs_framework.cli import main
from evs_framework.errors import SpecError
from evs_framework.planner import make_plan
from evs_framework.runner import output_stems
from evs_framework.spec import load_spec, read_spec, spec_from_data
from evs_framework.testing.zoo import make_synthetic_clip
from tests.conftest import SEED_EXAMPLE

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if any model starts to load."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the job had problems")

    monkeypatch.setattr(runner, "load_backends", refuse)


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err, err
    return err


def test_every_kind_of_problem_comes_in_one_round(seed_config, tmp_path, capsys, no_loading):
    config = seed_config(videos=[tmp_path / "gone.mp4"], prompts=["a", "b"], idm_inverse_strength=1.5,
                         vdm_type="lightningXP", stable_steps=[8, 9], seed="23")
    assert main(["run", str(config), "--device", "banana"]) == 2
    err = error_of(capsys)
    for expected in ("$.seed: expected an integer", "1 mp4_files but 2 prompts", "idm_inverse_strength: 1.5",
                     "unknown model name 'lightningXP'", "unknown device 'banana'", "gone.mp4 does not exist",
                     "weights for model 'EP'"):
        assert expected in err, expected


def test_every_missing_weight_file_is_named_before_any_model_loads(seed_config, zoo, tmp_path, capsys, no_loading):
    config = seed_config()
    assert main(["run", str(config), "--weights-dir", str(tmp_path / "empty")]) == 2
    err = error_of(capsys)
    assert "weights for model 'EP'" in err and "weights for model 'lightningEP'" in err


def test_a_checkpoint_model_needs_its_config_folder_too(seed_config, zoo, tmp_path, capsys, no_loading):
    # EP is a single file read with SD's configs: with EP present and SD absent, SD is what is missing
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("epiCRealism", "animatediff_lightning_8step_diffusers.safetensors"):
        (weights / name).symlink_to(zoo / name)
    assert main(["run", str(seed_config()), "--weights-dir", str(weights)]) == 2
    err = error_of(capsys)
    assert "model 'EP' builds on 'SD': weights for model 'SD'" in err and "weights for model 'EP'" not in err


@pytest.mark.parametrize("device, named", [("gpu", "unknown device 'gpu'"), ("cuda:7", "--device cuda:7"),
                                           ("cuda", "CUDA is not available")])
def test_devices_are_checked_before_loading(seed_config, zoo, capsys, device, named, no_loading):
    assert main(["run", str(seed_config()), "--weights-dir", str(zoo), "--device", device]) == 2
    assert named in error_of(capsys)


def test_context_windows_beyond_the_motion_modules_window_are_refused_at_plan_time(seed_config, zoo, tmp_path, capsys):
    config = tmp_path / "long.yaml"
    config.write_text(f"inputs: [{{video: {seed_config().parent / 'x.mp4'}, prompt: a ball}}]\n"
                      f"models: {{idm: {{name: EP, context: {{frames: 8}}}}, vdm: {{name: lightningEP, "
                      f"context: {{frames: 40, overlap: 50}}}}}}\n")
    assert main(["plan", str(config), "--weights-dir", str(zoo), "--allow-missing"]) == 2
    error = error_of(capsys)
    assert "$.models.vdm.context.overlap: 50; give 0 up to one less than the window's frames" in error
    assert "$.models.idm.context: EP sees frames one by one, so it needs no context windows; drop it" in error
    config.write_text(config.read_text().replace("overlap: 50", "overlap: 4"))
    assert main(["plan", str(config), "--weights-dir", str(zoo), "--allow-missing"]) == 2
    assert "$.models.vdm.context.frames: 40, but lightningEP's motion module sees at most 32 frames" in error_of(capsys)


def test_an_input_too_small_to_crop_is_refused_before_loading(seed_config, tmp_path, zoo, capsys, no_loading):
    tiny = video_io.write_video(tmp_path / "tiny.mp4", make_synthetic_clip(4, 6, 10), 8.0)  # 6x10: crops to 0x8
    assert main(["run", str(seed_config(videos=[tiny])), "--weights-dir", str(zoo)]) == 2
    assert "cropping to multiples of 8 leaves nothing" in error_of(capsys)


@pytest.mark.parametrize("changes, named", [
    ({"seed": 2**64}, "$.seed: 18446744073709551616 is outside"),
    ({"mp4_files": "ab"}, "$.mp4_files: expected a list, got string 'ab'"),
    ({"stable_steps": ""}, "$.stable_steps: expected a list"),
    ({"pipeline_mode": "x/../../escaped"}, "unknown composition"),
])
def test_seed_config_values_that_used_to_slip_through(seed_config, tmp_path, changes, named):
    data = {"mp4_files": ["a.mp4"], "prompts": ["a"], **SEED_EXAMPLE, **changes}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    parsed = read_spec(path)
    if parsed.problems:
        assert any(named in p for p in parsed.problems), parsed.problems
    else:
        with pytest.raises(Exception, match=re.escape(named)):
            make_plan(parsed.spec, *_plugins_registry())


def _plugins_registry():
    from evs_framework.plugins import load_plugins
    from evs_framework.registry import load_registry

    return load_registry(), load_plugins()


@pytest.mark.parametrize("native, named", [
    ({"composition": {"name": "x/../../escaped", "stages": [{"model": "idm", "enter": "random", "start": 0.5,
                                                             "stop": "end"}]}}, "$.composition.name"),
    ({"models": {"idm": {"name": "EP", "upscale": 0.01}}}, "upscale: 0.01 is outside"),
    ({"models": {"idm": {"name": "EP", "upscale": 1e6}}}, "upscale: 1000000.0 is outside"),
    ({"models": {"idm": {"name": "EP", "guidance": float("nan")}}}, "guidance: nan"),
    ({"settings": {"inversion_guidance": -2.0}}, "inversion_guidance: -2.0"),
    ({"injection": {"layers": "up_blocks.*"}}, "$.injection.layers: expected a list"),
    ({"video": {"size": [100000, 100000]}}, "$.video.size"),
])
def test_native_values_that_used_to_slip_through(native, named):
    data = {"inputs": [{"video": "a.mp4", "prompt": "a"}], "models": {"idm": {"name": "EP"}}, "composition": "IDM",
            **native}
    with pytest.raises(SpecError) as error:
        spec_from_data(data)
    assert named in str(error.value)


def test_steps_beyond_the_training_schedule_are_a_plan_problem():
    spec = spec_from_data({"inputs": [{"video": "a.mp4", "prompt": "a"}], "models": {"idm": {"name": "EP", "steps": 1000}},
                          "composition": "IDM"})
    registry, plugins = _plugins_registry()
    with pytest.raises(Exception, match="reach timestep 1000, beyond the model's 1000 training timesteps"):
        make_plan(spec, registry, plugins)


@pytest.mark.parametrize("content, named", [
    (b"\xff\xfe{ not utf-8", "not UTF-8 text"),
    (b"[" * 5000 + b"]" * 5000, "nested"),
    (b"a: !!python/object/apply:os.system [echo hi]", "not valid YAML"),
    (b"a: [unclosed", "not valid YAML"),
])
def test_unreadable_spec_files_are_one_short_error(tmp_path, content, named):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert named in str(error.value) and len(str(error.value)) < 600


def test_a_yaml_alias_bomb_is_refused_with_a_short_message(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
              f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
              for i in range(8)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nsettings: {stable_steps: *i}\n")
    assert len(path.read_bytes()) < 1000
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert "values (YAML aliases expanded)" in str(error.value) and len(str(error.value)) < 400


@pytest.mark.parametrize("content, named", [("models: [", "not valid YAML"),
                                            ("models: !!python/name:os.system {}", "not valid YAML")])
def test_a_bad_registry_file_is_one_error(tmp_path, capsys, content, named):
    path = tmp_path / "mine.yaml"
    path.write_text(content)
    assert main(["models", "--registry", str(path)]) == 2
    assert named in error_of(capsys)


def test_a_user_registry_can_use_the_shipped_presets(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("models:\n  dreamshaper:\n    kind: sd15\n    type: t2i\n    weights: {local: dreamshaper-8}\n"
                    "    preset: sd15\n  lightningComfy:\n    kind: animatediff\n    type: t2v\n    base: EP\n"
                    "    weights: {local: animatediff_lightning_8step_comfyui.safetensors}\n    preset: lightning_8step\n")
    assert main(["models", "--registry", str(path)]) == 0
    out = capsys.readouterr().out
    assert "dreamshaper" in out and "lightningComfy" in out


def test_no_two_inputs_share_an_output_name(tmp_path):
    spec = spec_from_data({"inputs": [{"video": v, "prompt": "p"} for v in ("a/clip.mp4", "b/clip.mp4", "c/clip-2.mp4")],
                           "models": {"idm": {"name": "EP"}}, "composition": "IDM"})
    stems = output_stems(spec)
    assert len(set(stems)) == 3 and stems[2] == "clip-2.IDM", stems
    reordered = spec_from_data({"inputs": [{"video": v, "prompt": "p"} for v in ("c/clip-2.mp4", "a/clip.mp4", "b/clip.mp4")],
                                "models": {"idm": {"name": "EP"}}, "composition": "IDM"})
    assert len(set(output_stems(reordered))) == 3


def test_outputs_default_to_the_working_folder_per_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = tmp_path / "configs"
    configs.mkdir()
    for task in ("enhance", "edit"):
        (configs / f"{task}.json").write_text(json.dumps({"mp4_files": ["a.mp4"], "prompts": ["a"], **SEED_EXAMPLE}))
    dirs = {task: load_spec(configs / f"{task}.json").output.dir for task in ("enhance", "edit")}
    assert dirs == {"enhance": tmp_path / "outputs" / "enhance", "edit": tmp_path / "outputs" / "edit"}


def test_planner_warns_of_a_window_below_the_current_level(plugins, registry):
    spec = spec_from_data({"mp4_files": ["a.mp4"], "prompts": ["a"],
                           **{**SEED_EXAMPLE, "stable_steps": [15], "vdm_inverse_strength": 0.125, "stable_num": 1}})
    plan = make_plan(spec, registry, plugins)
    [note] = [n for n in plan.notes if "below the current" in n]
    assert "lightningEP enters at sigma 0.4613, below the current 0.7789" in note


def test_planner_warns_of_a_renoise_far_above_the_start(plugins, registry):
    spec = spec_from_data({"mp4_files": ["a.mp4"], "prompts": ["a"],
                           **{**SEED_EXAMPLE, "idm_inverse_strength": 0.2, "stable_steps": [2], "vdm_inverse_strength": 0.9}})
    plan = make_plan(spec, registry, plugins)
    assert any("re-noises to sigma" in n and "x the level the trajectory started at" in n for n in plan.notes)
    example = make_plan(spec_from_data({"mp4_files": ["a.mp4"], "prompts": ["a"], **SEED_EXAMPLE}), registry, plugins)
    assert not any("warning" in n for n in example.notes)  # the seed's own example hands over as intended



ODD_VALUES = [None, "", "ab", "$stable_num", -1, 0, 7, 0.5, 1e309, float("nan"), 2**70, True, [], {}, [[]], [1, "a"],
              {"a": 1}, "x/../y", "\x00", "EP_X0.0", "EP_X99", "lightningEP"]


def mutated(data: dict, random) -> dict:
    """`data` with one key replaced, removed, nested into, or added."""
    data = json.loads(json.dumps(data))
    target = data
    while isinstance(target, dict) and target and random.random() < 0.5:
        key = random.choice(sorted(target))
        if not isinstance(target[key], dict):
            break
        target = target[key]
    choice = random.random()
    if choice < 0.6 and target:
        target[random.choice(sorted(target))] = random.choice(ODD_VALUES)
    elif choice < 0.8 and target:
        del target[random.choice(sorted(target))]
    else:
        target[random.choice(["extra", "video", "idm_type", "stages"])] = random.choice(ODD_VALUES)
    return data


def test_fuzzed_specs_only_ever_raise_our_errors(plugins, registry, tmp_path):
    """Thousands of two-change variants of both formats go through parsing, planning and the input checks: each one
    either passes or ends in an EVSError of bounded size, never another exception."""
    import random as random_module

    from evs_framework.errors import EVSError
    from evs_framework.preflight import input_problems
    from evs_framework.spec import parse_spec

    random = random_module.Random(9)
    bases = [{"mp4_files": ["a.mp4"], "prompts": ["a"], **SEED_EXAMPLE},
             {"inputs": [{"video": "a.mp4", "prompt": "a"}], "models": {"idm": {"name": "EP", "upscale": 2.0},
                                                                      "vdm": {"name": "lightningEP"}},
              "composition": "IDM_VDM_IDM", "settings": {"stable_steps": [8], "stable_num": 2},
              "injection": {"window": [0.0, 0.5]}, "video": {"max_frames": 16}, "output": {"dir": "out"}}]
    for case in range(2000):
        data = mutated(mutated(random.choice(bases), random), random)
        try:
            parsed = parse_spec(data, "fuzz", tmp_path, "fuzz")
            plan = make_plan(parsed.spec, registry, plugins, None, parsed.broken_roles)
            input_problems(parsed.spec, plan)
        except EVSError as error:
            assert len(str(error)) < 4000, (case, data)
        except Exception as error:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case}: {type(error).__name__}: {error} for {data}")


def test_a_plugins_composition_named_like_a_path_is_refused(registry):
    import types

    from evs_framework.composition import Composition, Stage
    from evs_framework.errors import PlanError
    from evs_framework.hookspecs import hookimpl
    from evs_framework.plugins import load_plugins

    @hookimpl
    def register_compositions(register):
        stage = Stage(model="idm", enter="random", start=0.5, stop="end")
        register("escape", Composition("../../escape", stages=(stage,)))

    module = types.ModuleType("evs_escaping_plugin")
    module.register_compositions = register_compositions
    spec = spec_from_data({"inputs": [{"video": "a.mp4", "prompt": "a"}], "models": {"idm": {"name": "EP"}},
                           "composition": "escape"})
    with pytest.raises(PlanError, match="goes into output file names"):
        make_plan(spec, registry, load_plugins(extra=[module]))


NATIVE = {"inputs": [{"video": "a.mp4", "prompt": "a"}], "models": {"idm": {"name": "toyI"}, "vdm": {"name": "toyV"}}}


@pytest.mark.parametrize("changes, named", [
    ({"settings": None}, "$.settings: expected a mapping of keys to values, got null"),
    ({"video": {"max_frames": True}}, "$.video.max_frames: expected an integer or null, got true"),
    ({"seed": "23"}, "$.seed: expected an integer, got string '23'"),
    ({"models": {"idm": {"name": "toyI", "guidance": [7]}}}, "$.models.idm.guidance: expected a number or null, got a list of 1 item"),
    ({"negative_prompt": {"a": 1}}, "$.negative_prompt: expected a string or null, got a mapping"),
    ({"inputs": [{"video": "a.mp4", "prompt": "a", "settings": None}]}, "$.inputs[0].settings: expected a mapping of settings to values, got null"),
    ({"plugin_settings": {"x": None}}, "$.plugin_settings.x: expected a mapping of keys to values, got null"),
    ({"mp4_files": ["a.mp4"], "prompts": ["a"], "vdm_type": "toyV", "idm_type": "toyI", "stable_num": None},
     "$.stable_num: expected an integer, got null"),
    ({"injection": {"window": 0.5}}, "$.injection.window: expected a list, got number 0.5; write it as [...]"),
])
def test_a_wrong_value_is_named_by_the_json_yaml_type_written(tmp_path, changes, named):
    problems = read_spec_data(tmp_path, changes).problems
    assert named in problems, problems
    assert not re.search(r"NoneType|\bNone\b|\bTrue\b|\bstr\b|\bdict\b|\bbool\b", "\n".join(problems)), problems


def read_spec_data(tmp_path, changes):
    """A native spec with `changes`, or `changes` alone when they are an original config."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(changes if "mp4_files" in changes else {**NATIVE, **changes}))
    return read_spec(path)


@pytest.mark.parametrize("changes, named", [
    ({"settings": None}, "$.settings: expected a mapping of keys to values, got null"),
    ({"settings": {"stable_num": None, "vdm_inverse_strength": 0.9}}, "$.settings.stable_num: expected an integer, got null"),
    ({"composition": 5, "models": {"idm": {"name": "toyI"}, "vdm": {"name": "toyVV"}}},
     "$.composition: expected a string or a mapping, got number 5"),
])
def test_a_part_that_cannot_be_read_is_not_planned_from_defaults_the_spec_never_set(tmp_path, capsys, changes, named):
    """toyV at 3 steps cannot take the default stable_num of 2 from the default strength: that problem is not the
    author's; a wrong model name still is."""
    (tmp_path / "a.mp4").write_bytes((ROOT / "examples" / "toy" / "toy_clip_1.mp4").read_bytes())
    data = {**NATIVE, "models": {"idm": {"name": "toyI"}, "vdm": {"name": "toyV", "steps": 3}}, **changes}
    (tmp_path / "spec.json").write_text(json.dumps(data))
    assert main(["plan", str(tmp_path / "spec.json")]) == 2
    problems = [line[4:] for line in error_of(capsys).splitlines() if line.startswith("  - ")]
    wrong_name = ["$.models.vdm.name: unknown model name 'toyVV'" in p for p in problems]
    assert problems[0] == named and len(problems) == 1 + any(wrong_name), problems


def test_problems_name_the_keys_the_author_wrote(tmp_path, capsys):
    native = {**NATIVE, "inputs": [{"video": "gone.mp4", "prompt": "a"}], "composition": "IDM_VDMX",
              "models": {"idm": {"name": "toyI", "upscale": 9.0}, "vdm": {"name": "toyV"}}}
    (tmp_path / "native.json").write_text(json.dumps(native))
    assert main(["plan", str(tmp_path / "native.json")]) == 2
    err = error_of(capsys)
    assert "$.composition: unknown composition 'IDM_VDMX'" in err and "$.models.idm.upscale: 9.0" in err
    assert not re.search(r"pipeline_mode|mp4_files|idm_type|vdm_type", err), err
    original = {"mp4_files": ["gone.mp4"], "prompts": ["a"], "idm_type": "toyI_X9.0", "vdm_type": "toyVV",
                "pipeline_mode": "IDM_VDMX", "vdm_inverse_strength": 2}
    (tmp_path / "original.json").write_text(json.dumps(original))
    assert main(["plan", str(tmp_path / "original.json")]) == 2
    err = error_of(capsys)
    for expected in ("$.pipeline_mode: unknown composition 'IDM_VDMX'", "$.idm_type: 9.0 is outside",
                     "$.vdm_inverse_strength: 2.0 is outside"):
        assert expected in err, err
    assert not re.search(r"\$\.(models|composition|settings|inputs)\b", err), err


@pytest.mark.parametrize("changes, named", [
    ({"setings": {}}, "$: unknown key 'setings' (did you mean 'settings'"),
    ({"models": {"idm": {"nmae": "toyI"}}}, "$.models.idm: unknown key 'nmae' (did you mean 'name'?)"),
    ({"video": {"max_frame": 8}}, "$.video: unknown key 'max_frame' (did you mean 'max_frames'?)"),
    ({"settings": {"stable_step": [5]}}, "$.settings: unknown key 'stable_step' (did you mean 'stable_steps'"),
    ({"mp4_files": ["a.mp4"], "prompts": ["a"], "vdm_type": "toyV", "idm_type": "toyI", "pipline_mode": "VDM"},
     "$: unknown key 'pipline_mode' (did you mean 'pipeline_mode'"),
])
def test_an_unknown_key_is_answered_with_the_closest_known_ones(tmp_path, changes, named):
    problems = read_spec_data(tmp_path, changes).problems
    assert any(p.startswith(named) for p in problems), problems
