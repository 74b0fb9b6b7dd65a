"""Each model is steered away from its own negative prompt (its preset's) unless the spec or a manifest row gives
one for every model: the toy models, trained with none, get none."""

import json

import attrs
import pytest

from evs_framework.api import load_context
from evs_framework.io import video_io
from evs_framework.planner import make_plan
from evs_framework.runner import negative_prompts, run_job
from evs_framework.spec import spec_from_data
from evs_framework.testing.zoo import make_synthetic_clip


def _spec(clip, out, **changes):
    return spec_from_data({"inputs": [{"video": str(clip), "prompt": "a green disc drifting left"}],
                           "models": {"idm": {"name": "toyI"}}, "composition": "IDM",
                           "settings": {"idm_inverse_strength": 0.2}, "output": {"dir": str(out)}, **changes})


def test_each_model_gets_its_presets_negative_prompt(plugins, registry, tmp_path):
    spec = spec_from_data({"inputs": [{"video": "a.mp4", "prompt": "a"}],
                           "models": {"idm": {"name": "EP"}, "vdm": {"name": "animatelcm"}}})
    plan = make_plan(spec, registry, plugins)
    assert negative_prompts(plan, None) == {"idm": registry.get("EP").preset.negative_prompt,
                                            "vdm": registry.get("animatelcm").preset.negative_prompt}
    assert "low quality" in negative_prompts(plan, None)["idm"]
    assert negative_prompts(plan, "blurry") == {"idm": "blurry", "vdm": "blurry"}
    toy = make_plan(attrs.evolve(spec, models={"idm": attrs.evolve(spec.models["idm"], name="toyI")},
                                 composition="IDM"), registry, plugins)
    assert negative_prompts(toy, None) == {"idm": ""}


@pytest.mark.parametrize("given", [None, "worst quality, low quality"])
def test_a_toy_run_without_a_negative_prompt_is_the_run_with_none(plugins, registry, tmp_path, given):
    context = load_context(plugins, registry, device="cpu")  # the toy weights that ship with EVS
    clip = video_io.write_video(tmp_path / "clip.mp4", make_synthetic_clip(4, 64, 64), 8.0)
    default = _spec(clip, tmp_path / "default")
    explicit = _spec(clip, tmp_path / "explicit", negative_prompt="" if given is None else given)
    plan = make_plan(default, registry, plugins)
    [made] = run_job(default, plan, context, progress=False)
    [compared] = run_job(explicit, plan, context, progress=False)
    same = made.output.read_bytes() == compared.output.read_bytes()
    assert same == (given is None)  # the toy model's own is none; the old default's words change the video
    assert json.loads(made.sidecar.read_text())["negative_prompts"] == {"idm": ""}
