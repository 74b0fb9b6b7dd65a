"""Samplers: the new ones against diffusers' schedulers and against an exact solution, a spec choosing one per
model, and plans whose call counts are what every built-in sampler, transfer and composition then makes."""

import math

import attrs
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from evs_framework.denoiser import Prediction
from evs_framework.errors import PlanError, PluginError, SpecError
from evs_framework.executor import unplanned_calls
from evs_framework.planner import make_plan
from evs_framework.plugins import Catalogue, load_plugins
from evs_framework.sampler import StepContext
from evs_framework.schedules import BetaSchedule, ModelSchedule
from evs_plugins.samplers import DDIM, DPMPP_2M, EULER, HEUN
from evs_plugins.schedules import betas
from tests.planning import native, run_counted
from tests.test_parity import follow, scheduler_config


def test_ddim_with_eta_is_the_ddim_scheduler_step(registry):
    preset = registry.get("SD").preset
    scheduler = DDIMScheduler(**scheduler_config(preset), clip_sample=False, set_alpha_to_one=True)  # as sd15_schedulers
    follow(scheduler, preset.sampling(betas(preset)), DDIM, preset.guidance, sigma_space=False, generators=True,
           params={"eta": 0.7}, step_options={"eta": 0.7})


def test_dpmpp_2m_is_diffusers_dpm_solver_plus_plus_2m(registry):
    # trailing spacing, where diffusers' DPM-Solver spaces timesteps as our schedules do (its `leading` does not);
    # 25 steps, since diffusers lowers the order near the end below 15
    preset = registry.get("SD").preset
    schedule = ModelSchedule(BetaSchedule("scaled_linear"), 25, "trailing")
    scheduler = DPMSolverMultistepScheduler(**{**scheduler_config(preset), "timestep_spacing": "trailing"},
                                            algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                            final_sigmas_type="zero")
    follow(scheduler, schedule, DPMPP_2M, preset.guidance, sigma_space=False)


def gaussian_data_error(sampler, steps: int) -> float:
    """Sample data N(0, 1) exactly denoised (x0 = x / (1 + sigma^2)) from sigma 10 to 0.5 over `steps` geometric
    steps; the exact ODE path ends at x * sqrt((1 + 0.25) / (1 + 100)). The relative error at the end."""
    def denoise(x, sigma):
        x0 = x / (1 + sigma**2)
        return Prediction(x0, (x - x0) / sigma)

    sigmas = tuple(10 * (0.05 ** (i / steps)) for i in range(steps + 1))
    x = start = torch.ones(3)
    state = {}
    for i in range(steps):
        x, _ = sampler.step(denoise, x, StepContext(i, sigmas, None, sampler.parameters, state, {}, None))
    exact = start * math.sqrt(1.25 / 101)
    return float(((x - exact).abs() / exact).max())


@pytest.mark.parametrize("sampler", [HEUN, DPMPP_2M], ids=lambda s: s.name)
def test_second_order_samplers_converge_at_second_order(sampler):
    coarse, fine = gaussian_data_error(sampler, 8), gaussian_data_error(sampler, 16)
    assert fine < coarse / 3.2, (coarse, fine)  # halving the step quarters a second-order error
    assert fine < gaussian_data_error(EULER, 16) / 4


def test_first_order_euler_only_halves_its_error():
    coarse, fine = gaussian_data_error(EULER, 8), gaussian_data_error(EULER, 16)
    assert coarse / 2.5 < fine < coarse / 1.6


def test_a_bare_function_is_refused_as_a_sampler():
    with pytest.raises(PluginError, match="plugin 'mine' registers sampler 'plain' as a function, not an "
                                          "evs_framework.sampler.Sampler"):
        Catalogue().add("samplers", "plain", lambda denoise, x, ctx: None, "mine")


def test_a_spec_chooses_the_sampler_and_its_parameters_per_model(clip_file, plugins, registry):
    plan = make_plan(native(clip_file, idm={"sampler": "heun"}, vdm={"sampler": "ddim", "sampler_params": {"eta": 1.0}}),
                     registry, plugins)
    assert (plan.models["idm"].sampler, plan.models["vdm"].sampler) == ("heun", "ddim")
    assert plan.models["vdm"].sampler_params == {"eta": 1.0}
    first = next(op for op in plan.ops if op.model == "idm" and hasattr(op, "sampler"))
    assert first.unet_calls == 2 * 2 * first.steps  # two evaluations a step, each guided


@pytest.mark.parametrize("models, error, message", [
    ({"idm": {"sampler": "hune"}}, PlanError,
     r"\$\.models\.idm\.sampler: sampler 'hune', which no loaded plugin provides; use one of"),
    ({"vdm": {"sampler": "ddim", "sampler_params": {"etta": 1}}}, PlanError,
     r"\$\.models\.vdm\.sampler_params\.etta: sampler 'ddim' has no parameter 'etta' \(did you mean 'eta'\?\)"),
    ({"vdm": {"sampler": "ddim", "sampler_params": {"eta": "high"}}}, SpecError,
     r"\$\.models\.vdm\.sampler_params\.eta: expected a number"),
])
def test_wrong_sampler_choices_are_named_with_the_fix(clip_file, plugins, registry, models, error, message):
    with pytest.raises(error, match=message):
        make_plan(native(clip_file, **models), registry, plugins)


SAMPLERS = ("euler", "ddim", "heun", "dpmpp_2m", "lcm")
COMPOSITIONS = ("IDM", "VDM", "basic", "IDM_VDM", "VDM_IDM", "IDM_VDM_IDM", "IDM_VDM_IDM_style", "IDM_VDMx2_IDM",
                "IV_mixed", "videoelevator")
THREE_ROLES = {"IDM_VDM_IDM_style": {"stable_steps": [8, 3]}}  # the style role is the T2I's model again


@pytest.mark.parametrize("composition", COMPOSITIONS)
def test_plan_totals_are_the_calls_every_sampler_and_transfer_makes(composition, tiny_backends, plugins, registry):
    backends = {**tiny_backends[1], "style": tiny_backends[1]["idm"]}
    transfers_seen = set()
    for sampler in SAMPLERS:
        for idm_invert, using_attn in (("random", False), ("ddim", True)):
            spec = native("clip.mp4", composition, idm={"sampler": sampler}, vdm={"sampler": sampler},
                          using_attn=using_attn, idm_invert_mode=idm_invert, vdm_invert_mode="ddim",
                          idm_invert_mode_2="ddim", **THREE_ROLES.get(composition, {}))
            if composition in THREE_ROLES:
                spec = attrs.evolve(spec, models={**spec.models, "style": spec.models["idm"]})
            plan = make_plan(spec, registry, plugins)
            records, made = run_counted(spec, plan, backends, plugins)
            assert unplanned_calls(records) == [], (sampler, composition)
            assert made == {role: t["unet_calls"] for role, t in plan.totals().items()}, (sampler, composition, idm_invert)
            transfers_seen |= {op.strategy for op in plan.ops if hasattr(op, "strategy")}
    assert transfers_seen <= set(plugins.catalogue.names("transfers"))
    if composition == "IDM_VDM_IDM":
        assert transfers_seen == {"random", "ddim_inversion", "ddim_renoise"}
    if composition == "IV_mixed":
        assert "ddim_invert_up" in transfers_seen
    if composition == "videoelevator":
        assert {"invert_and_keep", "pnp_correct"} <= transfers_seen


def test_a_sampler_that_miscounts_is_reported_in_the_sidecar(clip_file, tmp_path, context, plugins, registry, monkeypatch):
    import json

    import attrs

    from evs_framework.runner import run_job

    def twice(denoise, x, ctx):  # declares one evaluation, makes two
        denoise(x, ctx.sigma)
        return EULER.step(denoise, x, ctx)

    monkeypatch.setitem(plugins.catalogue.sections["samplers"], "euler",
                        attrs.evolve(plugins.catalogue.sections["samplers"]["euler"],
                                     value=attrs.evolve(EULER, step=twice)))
    spec = native(clip_file, "VDM")
    spec = attrs.evolve(spec, output=attrs.evolve(spec.output, dir=tmp_path / "out"))
    plan = make_plan(spec, registry, plugins)
    [result] = run_job(spec, plan, context, progress=False)
    planned = plan.ops[1].unet_calls  # the T2V's denoise op, after its transfer; unguided, one call a step
    assert planned == plan.ops[1].steps > 0
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["unplanned_calls"] == [f"op 2 (DenoiseOp, vdm): {2 * planned} UNet calls made, {planned} planned"]


def test_every_built_in_sampler_and_composition_is_tested_here():
    catalogue = load_plugins().catalogue
    assert set(catalogue.names("samplers")) == set(SAMPLERS)
    assert set(catalogue.names("compositions")) == set(COMPOSITIONS)


@pytest.mark.parametrize("guidance, row", [(1.0, 1), (0.0, 0)])
def test_guidance_one_or_zero_costs_one_call_with_one_prompt(guidance, row):
    """At guidance 1 only the prompt's half is evaluated, at 0 only the negative prompt's (a null-text DDIM
    inversion); the plan counts one call for either."""
    from evs_framework.denoiser import Denoiser
    from evs_framework.plan import calls_per_evaluation

    seen = []

    class Backend:
        def predict(self, x, timestep, conditioning):
            seen.append(conditioning.clone())
            return torch.zeros_like(x)

    conditioning = torch.tensor([[10.0], [20.0]])  # negative, positive
    denoiser = Denoiser(Backend(), BetaSchedule("scaled_linear"), conditioning, guidance)
    denoiser(torch.ones(2, 4, 8, 8), 1.0)
    assert [c.tolist() for c in seen] == [[conditioning[row].tolist()]]
    assert denoiser.calls == calls_per_evaluation(guidance) == 1
    assert calls_per_evaluation(7.5) == calls_per_evaluation(-4.0) == 2


def test_a_sampler_whose_calls_depend_on_the_step_index_declares_them_and_the_plan_holds(clip_file, registry,
                                                                                        tiny_backends):
    """A corrector on every second step of an op (two evaluations there, one elsewhere), counted by step index."""
    from evs_framework.hookspecs import hookimpl
    from evs_framework.sampler import Sampler

    def every_second_corrected(denoise, x, ctx):
        prediction = denoise(x, ctx.sigma)
        if ctx.step % 2:
            prediction = denoise(prediction.x0 + ctx.sigma * prediction.eps, ctx.sigma)
        return prediction.x0 + ctx.sigma_next * prediction.eps, prediction

    class Plugin:
        @hookimpl
        def register_samplers(self, register):
            register("every_second", Sampler("every_second", every_second_corrected,
                                             step_evaluations=lambda step, sigmas, params: 1 + step % 2))

    plugins = load_plugins(extra=[Plugin()])
    spec = native(clip_file, "IDM_VDM_IDM", idm={"sampler": "every_second"})
    plan = make_plan(spec, registry, plugins)
    idm_steps = [op.steps for op in plan.ops if getattr(op, "sampler", None) == "every_second"]
    assert plan.totals()["idm"]["unet_calls"] == 2 * sum(steps + steps // 2 for steps in idm_steps)  # 2: guidance
    records, made = run_counted(spec, plan, tiny_backends[1], plugins)
    assert unplanned_calls(records) == [] and made["idm"] == plan.totals()["idm"]["unet_calls"]
