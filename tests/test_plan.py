"""Planning without weights: exact schedules and call counts, and impossible schedules refused."""

import pytest

from evs_framework.errors import PlanError
from evs_framework.plan import DenoiseOp, LatentOp, TransferOp
from evs_framework.planner import make_plan
from evs_framework.plan_text import format_plan
from evs_framework.registry import load_registry
from evs_framework.spec import spec_from_data
from tests.conftest import SEED_EXAMPLE


def plan_of(plugins, registry, **changes):
    spec = spec_from_data({"mp4_files": ["a.mp4"], "prompts": ["p"], **SEED_EXAMPLE, **changes})
    return make_plan(spec, registry, plugins)


def test_seed_example_call_counts_from_first_principles(plugins, registry):
    # IDM: T_I = 50 steps, strength 0.4 -> 20 steps, guidance 7.5 -> 2 UNet calls a step -> 40 calls.
    # The switch comes when stable_steps = 8 IDM steps remain: 12 steps before it, 8 after.
    # VDM: Lightning 8 steps, strength 0.4 -> int(3.2) = 3 steps available, stable_num = 2 of them, no guidance -> 2 calls.
    # random and ddim re-noising cost no UNet call.
    # using_attn: the source is DDIM-inverted, unguided, from clean up to level 30 (the first IDM step): 20 calls;
    # the default window (first half of the IDM's 20 steps) injects at the 10 levels 30..39.
    plan = plan_of(plugins, registry)
    [capture] = plan.extras
    assert capture.unet_calls == {"idm": 20} and "at 10 levels, injected into 10 steps of idm" in capture.detail
    assert plan.totals() == {"idm": {"steps": 20, "inversion_steps": 0, "unet_calls": 60},
                             "vdm": {"steps": 2, "inversion_steps": 0, "unet_calls": 2}}
    kinds = [type(op) for op in plan.ops]
    assert kinds == [LatentOp, TransferOp, DenoiseOp, TransferOp, DenoiseOp, TransferOp, DenoiseOp]
    idm_first, vdm, idm_second = (op for op in plan.ops if isinstance(op, DenoiseOp))
    # leading spacing with offset 1: t = 20 k + 1; level 30 of 50 is t = 20 * 19 + 1
    assert idm_first.timesteps == tuple(range(381, 160, -20)) and idm_first.steps == 12
    assert idm_second.timesteps == (141, 121, 101, 81, 61, 41, 21, 1)
    assert vdm.timesteps == (374, 249)  # trailing: 999 - 125 k, starting 3 levels from the end
    assert plan.ops[0].params["factor"] == 2.0
    strategies = [op.strategy for op in plan.ops if isinstance(op, TransferOp)]
    assert strategies == ["random", "random", "ddim_renoise"]  # the seed's "ddim" mid-trajectory re-uses eps


def test_hand_overs_are_by_sigma_not_timestep(plugins, registry):
    plan = plan_of(plugins, registry)
    idm, vdm = plan.models["idm"].schedule, plan.models["vdm"].schedule
    to_vdm, back_to_idm = (op for op in plan.ops if isinstance(op, TransferOp) and op.sigma_from)
    assert to_vdm.sigma_from == pytest.approx(idm.train.sigma_at(141))
    assert to_vdm.sigma_to == pytest.approx(vdm.train.sigma_at(374))
    assert back_to_idm.sigma_from == pytest.approx(vdm.train.sigma_at(124))
    assert back_to_idm.sigma_to == pytest.approx(idm.train.sigma_at(141))


def test_basic_composition_pays_for_the_round_trip(plugins, registry):
    # VDM to the end: 3 steps; then DDIM inversion with the IDM from clean to the level where 8 steps remain:
    # 8 unguided calls; the IDM still denoises its 20 steps.
    totals = plan_of(plugins, registry, pipeline_mode="basic", using_attn=False).totals()
    assert totals == {"idm": {"steps": 20, "inversion_steps": 8, "unet_calls": 48},
                      "vdm": {"steps": 3, "inversion_steps": 0, "unet_calls": 3}}


def test_several_windows(plugins, registry):
    plan = plan_of(plugins, registry, stable_steps=[12, 6])
    windows = [op.first_level for op in plan.ops if isinstance(op, DenoiseOp) and op.model == "idm"]
    assert windows == [30, 38, 44]
    assert plan.totals()["vdm"]["steps"] == 4 and plan.totals()["idm"]["steps"] == 20


def test_ddim_at_the_start_means_inversion(plugins, registry):
    plan = plan_of(plugins, registry, idm_invert_mode="ddim")
    first_transfer = next(op for op in plan.ops if isinstance(op, TransferOp))
    assert first_transfer.strategy == "ddim_inversion" and first_transfer.unet_calls == 20


@pytest.mark.parametrize("mode,calls", [("IDM", {"idm": 40}), ("VDM", {"vdm": 3}), ("IDM_VDM", {"idm": 24, "vdm": 3}),
                                        ("VDM_IDM", {"vdm": 2, "idm": 40})])
def test_other_compositions(plugins, registry, mode, calls):
    plan = plan_of(plugins, registry, pipeline_mode=mode, using_attn=False)
    assert {role: t["unet_calls"] for role, t in plan.totals().items()} == calls


@pytest.mark.parametrize("changes,message", [
    ({"stable_steps": [20]}, "stable_steps[0]=20 must be smaller than the 20 steps"),
    ({"stable_steps": [8, 8]}, "windows overlap"),
    ({"stable_steps": [4, 8]}, "windows overlap"),
    ({"stable_num": 4}, "only 3 of the model's 8 steps remain"),
    ({"idm_type": "EPP_X2.0"}, "unknown model name 'EPP' (did you mean 'EP'"),
    ({"vdm_type": "RV"}, "'RV' is a t2i model but the vdm role needs a t2v model"),
    ({"pipeline_mode": "IDM_VMD_IDM"}, "unknown composition"),
    ({"vdm_invert_mode": "noise"}, "unknown transfer (invert mode) 'noise'"),
    ({"idm_invert_mode": "ddim_renoise"}, "needs a noise prediction"),
    ({"pipeline_mode": "IDM_VDM", "stable_steps": [8, 4]}, "2 windows given but composition IDM_VDM switches models at 1"),
])
def test_impossible_schedules_are_refused(plugins, registry, changes, message):
    with pytest.raises(PlanError) as caught:
        plan_of(plugins, registry, **changes)
    assert message in str(caught.value)


def test_a_sampler_no_plugin_provides_is_named(plugins, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("models:\n  dpmEP:\n    kind: animatediff\n    type: t2v\n    base: EP\n    weights: {local: x}\n"
                     "    preset: {beta_schedule: linear, steps: 8, sampler: dpmpp}\n")
    with pytest.raises(PlanError, match="model 'dpmEP' needs sampler 'dpmpp', which no loaded plugin provides"):
        plan_of(plugins, load_registry([extra]), vdm_type="dpmEP")


def test_plan_text_shows_timesteps_and_totals(plugins, registry):
    text = format_plan(plan_of(plugins, registry))
    assert "381 361 341" in text and "374 249" in text
    assert "idm EP: 20 denoising steps, 60 unet calls" in text and "all models: 62 unet calls" in text
    assert "+ feature_injection: using_attn: DDIM inversion of the source with EP" in text


def test_lightning_windows_say_whether_they_land_on_its_trained_levels(plugins, registry):
    default = plan_of(plugins, registry)
    assert "levels 5..7, on trained levels" in format_plan(default)
    assert not [note for note in default.notes if "distilled" in note]
    # 6 trailing steps: t = 999, 832, 666, 499, 332, 166; strength 0.4 runs the last two
    spec = spec_from_data({"inputs": [{"video": "a.mp4", "prompt": "p"}],
                           "models": {"idm": {"name": "EP"}, "vdm": {"name": "lightningEP", "steps": 6}}})
    plan = make_plan(spec, registry, plugins)
    assert "off trained t=332 166" in format_plan(plan)
    assert any("t=[332, 166] are not among the timesteps it was distilled on" in note for note in plan.notes)
