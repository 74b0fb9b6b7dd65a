"""Loading specs: the original config verbatim, the native format, and one clear error per bad input."""

import json

import pytest

from evs_framework.composition import Composition
from evs_framework.errors import SpecError
from evs_framework.spec import load_spec, parse_idm_type, spec_from_data
from tests.conftest import SEED_EXAMPLE


def test_seed_example_config_loads_verbatim(seed_config, clip_file):
    spec = load_spec(seed_config())
    assert spec.models["idm"].name == "EP" and spec.models["idm"].upscale == 2.0
    assert spec.models["vdm"].name == "lightningEP"
    assert spec.composition == "IDM_VDM_IDM"
    assert spec.settings.stable_steps == (8,) and spec.settings.stable_num == 2
    assert spec.settings.idm_invert_mode_2 == "ddim"
    assert spec.inputs[0].video == clip_file and spec.seed == 23 and spec.using_attn


@pytest.mark.parametrize("idm_type,name,scale", [("EP_X2.0", "EP", 2.0), ("RV_X1.5", "RV", 1.5), ("SD", "SD", 1.0),
                                                 ("my_model_X2", "my_model", 2.0)])
def test_idm_type_names_model_and_upscale(idm_type, name, scale):
    choice = parse_idm_type(idm_type)
    assert (choice.name, choice.upscale) == (name, scale)


def test_native_spec_with_inline_stages(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("""
videos: [clips/a.mp4]
prompts: [a cat]
models: {idm: {name: SD, guidance: 5.0}}
composition:
  stages:
    - {model: idm, enter: random, start: 0.5, stop: end}
settings: {idm_inverse_strength: 0.5}
""")
    spec = load_spec(path)
    assert isinstance(spec.composition, Composition) and spec.composition.stages[0].start == 0.5
    assert spec.inputs[0].video == tmp_path / "clips" / "a.mp4"  # relative to the spec's folder
    assert spec.models["idm"].guidance == 5.0


def _problems(data) -> list[str]:
    with pytest.raises(SpecError) as caught:
        spec_from_data(data)
    return caught.value.problems


def _seed(**changes):
    return {"mp4_files": ["a.mp4"], "prompts": ["p"], **SEED_EXAMPLE, **changes}


def test_unknown_key_is_named_with_the_known_ones():
    [problem] = _problems(_seed(stable_step=[8]))
    assert "'stable_step'" in problem and "stable_steps" in problem


def test_wrong_types_are_not_coerced_and_all_are_reported():
    problems = _problems(_seed(idm_inverse_strength="0.4", stable_steps=8, using_attn="yes"))
    assert len(problems) == 3
    assert any(p.startswith("$.idm_inverse_strength: expected a number") for p in problems)
    assert any(p.startswith("$.stable_steps") for p in problems)
    assert any(p.startswith("$.using_attn: expected true/false") for p in problems)


def test_prompt_and_video_counts_must_match():
    [problem] = _problems(_seed(prompts=["one", "two"]))
    assert "1 mp4_files but 2 prompts" in problem


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan")])
def test_strength_outside_zero_one(value):
    [problem] = _problems(_seed(vdm_inverse_strength=value))
    assert problem.startswith("$.vdm_inverse_strength") and "(0, 1]" in problem


def test_native_spec_errors_carry_paths():
    problems = _problems({"inputs": [{"video": "a.mp4", "prompt": 3}], "models": {"idm": {"name": "SD", "upscal": 2}}})
    assert any(p.startswith("$.inputs[0].prompt") for p in problems)
    assert any(p.startswith("$.models.idm") and "'upscal'" in p for p in problems)


def test_inline_composition_shape_is_checked():
    problems = _problems({"inputs": [{"video": "a.mp4", "prompt": "p"}], "models": {"idm": {"name": "SD"}},
                          "composition": {"stages": [{"model": "the image model", "enter": "random", "start": 0.5}]}})
    assert any("$.composition.stages[0].model: 'the image model' is not a role name" in p for p in problems)
    assert any("exactly one of `stop`" in p for p in problems)


def test_a_stage_must_use_a_role_its_composition_declares():
    problems = _problems({"inputs": [{"video": "a.mp4", "prompt": "p"}], "models": {"idm": {"name": "SD"}},
                          "composition": {"roles": {"idm": "t2i", "style": "t2x"},
                                          "stages": [{"model": "stlye", "enter": "random", "start": 0.5, "stop": "end"}]}})
    assert "$.composition.roles.style: 't2x' is not a model type; use one of t2i, t2v" in problems
    assert ("$.composition.stages[0].model: 'stlye' is not a role of this composition (did you mean 'style'?); use one "
            "of idm, style") in problems


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(bad)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([1, 2]))
    with pytest.raises(SpecError, match="top level must be a mapping"):
        load_spec(listed)


def test_video_size_and_injection_settings_are_checked_together():
    problems = _problems({"inputs": [{"video": "a.mp4", "prompt": "p"}], "models": {"idm": {"name": "SD"}},
                          "video": {"size": [4, 320]},
                          "injection": {"features": "queries", "window": [0.7, 0.2], "models": ["idm", "t2v"],
                                        "cache_device": "gpu", "max_cache_gib": 0}})
    assert any(p.startswith("$.video.size: [4, 320] must be [width, height]") for p in problems)
    for path in ("features", "window", "models[1]", "cache_device", "max_cache_gib"):
        assert any(p.startswith(f"$.injection.{path}:") for p in problems), path
