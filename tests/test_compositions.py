"""Compositions beyond a fixed list of stages: starting at the current level, latent ops and transfer
parameters named by a stage, cycles, and planner functions from plugins; each planned and counted exactly."""

import types

import attrs

import pytest
import torch

from evs_framework.composition import Composition, Cycle, Stage, StageOp, parse_composition
from evs_framework.errors import PlanError, SpecError
from evs_framework.executor import Trajectory, merged, unplanned_calls
from evs_framework.hookspecs import hookimpl
from evs_framework.plan import DenoiseOp, ForkOp, LatentOp, MergeOp, TransferOp
from evs_framework.plan_text import format_plan
from evs_framework.planner import make_plan
from evs_framework.plugins import load_plugins
from evs_framework.transfer import Transfer
from tests.planning import native, run_counted

EVERY_K = {
    "description": "one T2V step after every k T2I steps, at the level the trajectory is at",
    "stages": [{"model": "idm", "enter": "random", "start": 0.6, "steps": 3}],
    "cycle": {"until": "idm", "stages": [
        {"model": "vdm", "enter": "ddim", "start": "current", "steps": 1},
        {"model": "idm", "enter": "ddim", "start": "resume", "steps": 3},
    ]},
}


def with_composition(clip, composition, **settings):
    """The test spec with `composition` (a name, or a Composition object as a plugin or an inline mapping makes)."""
    if isinstance(composition, str):
        return native(clip, composition, **settings)
    return attrs.evolve(native(clip, "IDM", **settings), composition=composition)


def planned(clip, composition, plugins, registry, **settings):
    return make_plan(with_composition(clip, composition, **settings), registry, plugins)


def test_a_cycle_alternates_until_its_model_ends_and_current_starts_at_the_level_reached(clip_file, plugins, registry):
    plan = planned(clip_file, parse_composition(EVERY_K, "every_k", "test"), plugins, registry)
    denoise = [op for op in plan.ops if isinstance(op, DenoiseOp)]
    idm_steps = [op.steps for op in denoise if op.model == "idm"]
    idm = plan.models["idm"].schedule
    assert sum(idm_steps) == idm.steps - idm.start_level(0.6)  # the T2I runs all of its 60%, in pieces of 3
    assert idm_steps[:-1] == [3] * (len(idm_steps) - 1) and 1 <= idm_steps[-1] <= 3  # the last piece is cut
    models = [op.model for op in denoise]
    assert models[0] == models[-1] == "idm" and "vdm" in models
    assert all(not (a == b == "vdm") for a, b in zip(models, models[1:]))
    skipped = [n for n in plan.notes if "skipped" in n]  # near the end the T2V has no level that low
    assert models.count("vdm") + len(skipped) == len(idm_steps) - 1
    vdm = plan.models["vdm"].schedule
    for before, window in zip(denoise, denoise[1:]):
        if window.model == "vdm":  # the T2V's highest level at or below where the T2I stopped
            assert window.sigmas[0] <= before.sigmas[-1]
            assert window.first_level == 0 or vdm.levels[window.first_level - 1] > before.sigmas[-1]


def test_current_needs_a_model_to_have_run(clip_file, plugins, registry):
    composition = Composition("x", stages=(Stage("vdm", "random", "current", stop="end"),))
    with pytest.raises(PlanError, match="`start: current` continues at the trajectory's noise level, but no model"):
        planned(clip_file, composition, plugins, registry)


def test_a_stage_names_latent_ops_that_run_before_its_transfer(clip_file, plugins, registry):
    composition = Composition("x", stages=(
        Stage("idm", "random", 0.6, steps=10),
        Stage("vdm", "ddim", 0.5, stop="end", ops=(StageOp("upscale", {"factor": 2.0, "mode": "bilinear"}),))))
    plan = planned(clip_file, composition, plugins, registry)
    kinds = [(type(op).__name__, getattr(op, "strategy", getattr(op, "name", None))) for op in plan.ops]
    assert kinds[2:4] == [("LatentOp", "upscale"), ("TransferOp", "ddim_inversion")]  # no prediction after an op
    assert plan.ops[2].params == {"factor": 2.0, "mode": "bilinear"}
    unknown = Composition("x", stages=(Stage("idm", "random", 0.6, stop="end", ops=(StageOp("sharpen"),)),))
    with pytest.raises(PlanError, match="unknown latent op 'sharpen'; use one of lowpass, upscale"):
        planned(clip_file, unknown, plugins, registry)


def recording_plugin():
    seen = []

    def scaled_noise(ctx):
        seen.append(dict(ctx.params))
        return ctx.clean + ctx.params["scale"] * ctx.sigma_to * torch.randn(ctx.clean.shape, generator=ctx.generator)

    module = types.ModuleType("evs_test_scaled")

    @hookimpl
    def register_transfers(register):
        register("scaled", Transfer("scaled", scaled_noise, parameters={"scale": 1.0}))

    module.register_transfers = register_transfers
    return module, seen


def test_transfer_parameters_reach_the_transfer_and_unknown_ones_are_named(clip_file, registry, tiny_backends):
    module, seen = recording_plugin()
    plugins = load_plugins(extra=[module])
    composition = Composition("x", stages=(Stage("idm", "scaled", 0.6, stop="end", transfer_params={"scale": 0.5}),))
    spec = with_composition(clip_file, composition)
    plan = make_plan(spec, registry, plugins)
    assert plan.ops[0].params == {"scale": 0.5}
    run_counted(spec, plan, tiny_backends[1], plugins)
    assert seen == [{"scale": 0.5}]
    wrong = Composition("x", stages=(Stage("idm", "scaled", 0.6, stop="end", transfer_params={"scael": 2}),))
    with pytest.raises(PlanError, match=r"transfer_params\.scael: transfer 'scaled' has no parameter 'scael' "
                                        r"\(did you mean 'scale'\?\)"):
        make_plan(with_composition(clip_file, wrong), registry, plugins)


def every_k_planner(builder):
    """A planner function: T2I in pieces of `stable_num`, a T2V step at the current level between them."""
    k = builder.setting("stable_num")
    builder.stage(Stage("idm", "random", builder.setting("idm_inverse_strength"), steps=k))
    while builder.remaining("idm") and not builder.failed:
        builder.stage(Stage("vdm", "ddim", "current", steps=1), fit=True)  # skipped once the T2V has no level left
        builder.stage(Stage("idm", "ddim", "resume", steps=min(k, builder.remaining("idm"))))


def planner_plugin(planner):
    module = types.ModuleType("evs_test_planner")

    @hookimpl
    def register_compositions(register):
        register("every_k", Composition("every_k", "planned by a function", planner=planner))

    module.register_compositions = register_compositions
    return module


def test_a_planner_function_plans_runs_and_counts_as_a_file_does(clip_file, registry, tiny_backends):
    plugins = load_plugins(extra=[planner_plugin(every_k_planner)])
    spec = native(clip_file, "every_k", stable_num=4, idm_inverse_strength=0.5)
    plan = make_plan(spec, registry, plugins)
    models = [op.model for op in plan.ops if isinstance(op, DenoiseOp)]
    assert models[:3] == ["idm", "vdm", "idm"] and models[-1] == "idm"
    assert all(op.steps <= 4 for op in plan.ops if isinstance(op, DenoiseOp) and op.model == "idm")
    records, made = run_counted(spec, plan, tiny_backends[1], plugins)
    assert unplanned_calls(records) == [] and made == {r: t["unet_calls"] for r, t in plan.totals().items()}


def test_a_planners_bad_stage_is_reported_like_a_files(clip_file, registry):
    def bad(builder):
        builder.stage(Stage("idm", "random", 0.6, steps=500))

    plugins = load_plugins(extra=[planner_plugin(bad)])
    with pytest.raises(PlanError, match=r"every_k stage 1 \(idm\): 500 steps, but only 30 of the model's 50 steps"):
        make_plan(native(clip_file, "every_k"), registry, plugins)


def test_composition_files_cannot_name_a_planner_and_a_cycle_must_be_able_to_end():
    with pytest.raises(SpecError, match=r"\$\.planner: a planner is a Python function a plugin registers"):
        parse_composition({**EVERY_K, "planner": "os.system"}, "x", "test")
    stuck = {**EVERY_K, "cycle": {"until": "vdm", "stages": [{"model": "idm", "enter": "ddim", "start": "resume",
                                                             "steps": 1}]}}
    with pytest.raises(SpecError, match=r"cycle\.until: 'vdm' must be the model of one of the cycle's stages"):
        parse_composition(stuck, "x", "test")


def test_a_cycle_that_does_not_advance_is_an_error_not_a_hang(clip_file, plugins, registry):
    composition = Composition("x", stages=(Stage("idm", "random", 0.6, steps=3),), cycle=Cycle("idm", (
        Stage("vdm", "random", 0.5, steps=1), Stage("idm", "ddim", 0.6, steps=3))))  # restarts instead of resuming
    with pytest.raises(PlanError):
        planned(clip_file, composition, plugins, registry)


def test_every_k_cycle_runs_with_exact_totals(clip_file, plugins, registry, tiny_backends):
    spec = with_composition(clip_file, parse_composition(EVERY_K, "every_k", "test"))
    plan = make_plan(spec, registry, plugins)
    assert any(isinstance(op, TransferOp) and op.strategy == "ddim_renoise" for op in plan.ops)
    assert not any(isinstance(op, LatentOp) for op in plan.ops)
    records, made = run_counted(spec, plan, tiny_backends[1], plugins)
    assert unplanned_calls(records) == [] and made == {r: t["unet_calls"] for r, t in plan.totals().items()}


def test_iv_mixed_on_one_grid_makes_the_papers_two_t2i_and_three_t2v_evaluations_a_step(clip_file, tmp_path, plugins):
    """With the T2V on the T2I's own grid (as the IV-Mixed code runs both on one DDIM grid), each zig-zag step is
    one T2I step down, one T2V step down, one T2I and one T2V inversion step up, and the T2V's own step."""
    from evs_framework.registry import load_registry

    (tmp_path / "grid.yaml").write_text(
        "models:\n  lightningOnSDGrid:\n    kind: animatediff\n    type: t2v\n    base: EP\n"
        "    weights: {local: animatediff_lightning_8step_diffusers.safetensors}\n"
        "    preset: {beta_schedule: scaled_linear, steps: 8, spacing: leading, steps_offset: 1, guidance: 1.0}\n")
    registry = load_registry([tmp_path / "grid.yaml"])
    spec = native(clip_file, "IV_mixed", idm={"steps": 8}, vdm_inverse_strength=1.0)
    spec = attrs.evolve(spec, models={**spec.models, "vdm": attrs.evolve(spec.models["vdm"], name="lightningOnSDGrid")})
    plan = make_plan(spec, registry, plugins)
    assert plan.models["idm"].schedule.levels == plan.models["vdm"].schedule.levels
    zigzag_steps = 8 - 2  # the first and last T2V steps are plain
    totals = plan.totals()
    assert totals["idm"]["steps"] == totals["idm"]["inversion_steps"] == zigzag_steps
    assert totals["vdm"]["steps"] == 8 + zigzag_steps and totals["vdm"]["inversion_steps"] == zigzag_steps
    # guidance +-4 doubles the zig-zag's calls; the T2V's own steps are unguided (Lightning)
    assert totals["idm"]["unet_calls"] == 2 * 2 * zigzag_steps
    assert totals["vdm"]["unet_calls"] == 8 + 2 * 2 * zigzag_steps


def settings_plugin():
    module = types.ModuleType("evs_test_every_k")

    @hookimpl
    def register_settings(register):
        register("every_k", {"k": 3, "strength": 0.6})

    @hookimpl
    def register_compositions(register):
        register("every_k_file", parse_composition({
            "stages": [{"model": "idm", "enter": "random", "start": "$every_k.strength", "steps": "$every_k.k"}],
            "cycle": {"until": "idm", "stages": [
                {"model": "vdm", "enter": "ddim", "start": "current", "steps": 1},
                {"model": "idm", "enter": "ddim", "start": "resume", "steps": "$every_k.k"}]}}, "every_k_file", "test"))

    module.register_settings, module.register_compositions = register_settings, register_compositions
    return module


def idm_pieces(plan):
    return [op.steps for op in plan.ops if isinstance(op, DenoiseOp) and op.model == "idm"]


def test_a_plugins_settings_have_defaults_and_a_spec_sets_them(clip_file, registry):
    plugins = load_plugins(extra=[settings_plugin()])
    default = make_plan(native(clip_file, "every_k_file"), registry, plugins)
    assert idm_pieces(default)[0] == 3
    spec = attrs.evolve(native(clip_file, "every_k_file"), plugin_settings={"every_k": {"k": 5, "strength": 0.8}})
    plan = make_plan(spec, registry, plugins)
    assert idm_pieces(plan)[0] == 5 and sum(idm_pieces(plan)) == 40  # 80% of EP's 50 steps


@pytest.mark.parametrize("settings, message", [
    ({"every_kk": {"k": 5}}, r"\$\.plugin_settings\.every_kk: no loaded plugin registers settings 'every_kk' "
                             r"\(known: every_k, videoelevator\)"),
    ({"every_k": {"kk": 5}}, r"\$\.plugin_settings\.every_k: unknown key 'kk' \(did you mean 'k'\?\); fix or drop it"),
    ({"every_k": {"k": "five"}}, r"\$\.plugin_settings\.every_k\.k: expected an integer, got string 'five'"),
])
def test_wrong_plugin_settings_are_named(clip_file, registry, settings, message):
    """Named alone: the stages are not planned from a value the spec did not give (or gave wrong)."""
    plugins = load_plugins(extra=[settings_plugin()])
    spec = attrs.evolve(native(clip_file, "every_k_file"), plugin_settings=settings)
    with pytest.raises(PlanError, match=message) as caught:
        make_plan(spec, registry, plugins)
    assert len(caught.value.problems) == 1, caught.value.problems


@pytest.mark.parametrize("re_entry, inversion_calls", [("ddim", 5), ("random", 0)])
def test_a_t2v_at_the_source_size_runs_its_window_there_and_hands_back_at_the_t2i_size(
        clip_file, plugins, registry, tiny_backends, re_entry, inversion_calls):
    """With the T2I upscaling x2, `source_size` shrinks the clean estimate to the source size for the T2V's window and
    brings it back for the T2I, whose ddim re-entry then inverts (the resize discards the noise prediction)."""
    spec = native(clip_file, idm={"upscale": 2.0}, vdm={"source_size": True}, idm_invert_mode_2=re_entry)
    plan = make_plan(spec, registry, plugins)
    resizes = [(op.model, op.params["factor"]) for op in plan.ops if isinstance(op, LatentOp)]
    assert resizes == [("idm", 2.0), ("vdm", 0.5), ("idm", 2.0)]
    [back] = [op for op in plan.ops if isinstance(op, TransferOp) and op.stage == 2]
    assert back.strategy == ("ddim_inversion" if re_entry == "ddim" else "random") and back.unet_calls == inversion_calls
    records, _ = run_counted(spec, plan, tiny_backends[1], plugins)  # from 8x8 source latents
    assert [(r.model, r.shape[-2:]) for r in records if r.op == "DenoiseOp"] == [
        ("idm", (16, 16)), ("vdm", (8, 8)), ("idm", (16, 16))]
    assert unplanned_calls(records) == []
    faithful = make_plan(native(clip_file, idm={"upscale": 2.0}), registry, plugins)
    assert [op.model for op in faithful.ops if isinstance(op, LatentOp)] == ["idm"]  # the default keeps one size


def test_source_size_and_upscale_on_one_model_are_refused(clip_file, plugins, registry):
    with pytest.raises(SpecError, match="models.vdm.source_size: a model at the source size cannot also upscale"):
        make_plan(native(clip_file, vdm={"source_size": True, "upscale": 2.0}), registry, plugins)


def test_a_composition_with_a_third_role_plans_and_runs_with_exact_totals(clip_file, plugins, registry, tiny_backends):
    """IDM_VDM_IDM_style: a T2I, a T2V, then a second T2I for the last steps, each role named by the spec."""
    spec = attrs.evolve(native(clip_file, "IDM_VDM_IDM_style", stable_steps=[8, 3]),
                        models={**native(clip_file).models, "style": native(clip_file).models["idm"]})
    plan = make_plan(spec, registry, plugins)
    denoise = [op for op in plan.ops if isinstance(op, DenoiseOp)]
    assert [op.model for op in denoise] == ["idm", "vdm", "idm", "style"]
    assert denoise[-1].steps == 3 and denoise[-1].sigmas[-1] == 0.0  # the style model takes the last 3 steps
    backends = {**tiny_backends[1], "style": tiny_backends[1]["idm"]}
    records, made = run_counted(spec, plan, backends, plugins)
    assert unplanned_calls(records) == [] and made == {r: t["unet_calls"] for r, t in plan.totals().items()}
    assert set(made) == {"idm", "vdm", "style"} and made["style"] > 0


def test_a_composition_needs_a_window_for_each_switch_its_stages_make(clip_file, plugins, registry):
    spec = attrs.evolve(native(clip_file, "IDM_VDM_IDM_style"),
                        models={**native(clip_file).models, "style": native(clip_file).models["idm"]})
    with pytest.raises(PlanError) as raised:
        make_plan(spec, registry, plugins)
    assert raised.value.problems == ["IDM_VDM_IDM_style: its stages switch models at 2 windows but "
                                     "$.settings.stable_steps has 1 ([5]); give 2 entries, the steps left at each "
                                     "switch"]


def test_a_role_the_spec_does_not_name_is_reported_with_the_closest_one(clip_file, plugins, registry):
    spec = attrs.evolve(native(clip_file, "IDM_VDM_IDM_style", stable_steps=[8, 3]),
                        models={**native(clip_file).models, "styel": native(clip_file).models["idm"]})
    with pytest.raises(PlanError) as raised:
        make_plan(spec, registry, plugins)
    assert any("uses the style model but the spec names none (did you mean 'styel'?); add models.style" in p
               for p in raised.value.problems)


def test_current_between_two_levels_evaluates_the_model_at_the_present_sigma(clip_file, plugins, registry,
                                                                             tiny_backends):
    """EVERY_K's T2V (8 Lightning levels) enters where the T2I (EP's 50) stopped, between two of its own levels: its
    first step is taken from that sigma, at that sigma's timestep, with no silent snap to a lower level."""
    spec = with_composition(clip_file, parse_composition(EVERY_K, "every_k", "test"))
    plan = make_plan(spec, registry, plugins)
    vdm = plan.models["vdm"].schedule
    entries = [(before, transfer, op) for before, transfer, op in zip(plan.ops, plan.ops[1:], plan.ops[2:])
               if isinstance(op, DenoiseOp) and op.off_grid]
    assert entries
    for before, transfer, op in entries:
        assert op.model == "vdm" and op.sigmas[0] == before.sigmas[-1] == transfer.sigma_to
        assert vdm.levels[op.first_level] < op.sigmas[0] < vdm.levels[op.first_level - 1]
        assert op.sigmas[1] == vdm.levels[op.first_level] and op.steps == 1
        assert op.timesteps[0] == pytest.approx(vdm.train.timestep_at(op.sigmas[0]))
    assert "off grid" in format_plan(plan, "spec")

    class Recording:
        """The T2V backend, with the timestep of every evaluation kept."""

        def __init__(self, backend):
            self.backend, self.asked = backend, []

        def __getattr__(self, name):
            return getattr(self.backend, name)

        def predict(self, x, t, conditioning):
            self.asked.append(t)
            return self.backend.predict(x, t, conditioning)

    recording = Recording(tiny_backends[1]["vdm"])
    records, _ = run_counted(spec, plan, {**tiny_backends[1], "vdm": recording}, plugins)
    assert unplanned_calls(records) == []
    for _, _, op in entries:
        assert any(t == pytest.approx(op.timesteps[0]) for t in recording.asked)


def test_the_ensemble_composition_branches_merges_and_counts_every_branch(clip_file, plugins, registry, tiny_backends):
    spec = native(clip_file, "IDM_VDMx2_IDM")
    plan = make_plan(spec, registry, plugins)
    assert plan.branches
    fork, merge = (next(op for op in plan.ops if isinstance(op, kind)) for kind in (ForkOp, MergeOp))
    assert (fork.latent, fork.copies) == ("main", ("first", "second"))
    assert (merge.merged, merge.latent, merge.weights) == (("first", "second"), "main", (0.5, 0.5))
    branches = [op for op in plan.ops if isinstance(op, DenoiseOp) and op.model == "vdm"]
    assert [op.latent for op in branches] == ["first", "second"] and branches[0].sigmas == branches[1].sigmas
    assert fork.sigma == plan.ops[plan.ops.index(fork) - 1].sigmas[-1] and merge.sigma == branches[0].sigmas[-1]
    text = format_plan(plan)
    assert "main -> first, second" in text and "first, second -> main (mean)" in text
    assert f"by latent: main {plan.totals()['idm']['unet_calls']}, first {branches[0].unet_calls}" in text
    records, made = run_counted(spec, plan, tiny_backends[1], plugins)
    assert unplanned_calls(records) == [] and made == {r: t["unet_calls"] for r, t in plan.totals().items()}
    assert made["vdm"] == 2 * branches[0].unet_calls


def test_a_merge_is_the_weighted_mean_of_latent_estimate_and_noise():
    parts = [Trajectory(torch.full((1,), float(v)), 0.5, torch.full((1,), 10.0 * v), torch.full((1,), -v))
             for v in (1, 3)]
    joined = merged(parts, (0.25, 0.75))
    assert (joined.x.item(), joined.clean.item(), joined.eps.item(), joined.sigma) == (2.5, 25.0, -2.5, 0.5)
    assert merged([parts[0], Trajectory(parts[1].x, 0.5, parts[1].clean)], (0.5, 0.5)).eps is None


BRANCHES = {"roles": {"idm": "t2i", "vdm": "t2v"}, "stages": [
    {"model": "idm", "enter": "random", "start": 0.6, "steps": 3},
    {"fork": ["a", "b"]},
    {"model": "vdm", "latent": "a", "enter": "random", "start": 0.5, "steps": 2},
    {"model": "vdm", "latent": "b", "enter": "random", "start": 0.5, "steps": 1},
    {"merge": ["a", "b"]},
    {"model": "idm", "enter": "ddim", "start": "resume", "stop": "end"}]}


@pytest.mark.parametrize("change, expected", [
    ({}, "inline stage 5 (merge): the latents merged are at different noise levels (a at sigma"),
    ({2: {"model": "vdm", "latent": "c", "enter": "random", "start": 0.5, "steps": 2}},
     "inline stage 3 (vdm): latent 'c' does not exist at this point; make it with `{fork: [c]}` (present: a, b)"),
    ({4: {"merge": ["a", "c"]}}, "inline stage 5 (merge): latent 'c' does not exist at this point; fork it first"),
    ({4: {"merge": ["a", "b"], "into": "a", "weights": [0.5, 0.6]}}, "inline.stages[4].weights: [0.5, 0.6]; give one"),
    ({1: {"fork": ["a", "a"]}}, "inline.stages[1].fork: ['a', 'a'] names a latent twice"),
])
def test_branch_problems_are_named(clip_file, plugins, registry, change, expected):
    data = {**BRANCHES, "stages": [change.get(i, step) for i, step in enumerate(BRANCHES["stages"])]}
    with pytest.raises((PlanError, SpecError)) as raised:
        planned(clip_file, parse_composition(data, "inline", "test", "inline"), plugins, registry)
    assert any(p.startswith(expected) for p in raised.value.problems), raised.value.problems


def test_a_branch_never_merged_is_a_problem(clip_file, plugins, registry):
    data = {**BRANCHES, "stages": BRANCHES["stages"][:3] + [
        {"model": "vdm", "latent": "a", "enter": "random", "start": 0.3, "stop": "end"}]}
    with pytest.raises(PlanError) as raised:
        planned(clip_file, parse_composition(data, "branchy", "test"), plugins, registry)
    assert "branchy: latent(s) b are never merged; merge every branch back, or drop its fork" in raised.value.problems


@attrs.frozen
class RefinerSettings:
    """A plugin's typed settings: a list setting and a check of its own."""

    steps_left: tuple[int, ...] = (4,)
    guidance: float = 2.0

    def problems(self):
        return [f"steps_left: {list(self.steps_left)}; give steps left in decreasing order"] \
            if list(self.steps_left) != sorted(self.steps_left, reverse=True) else []


def refiner_plugin():
    """A package of its own: a settings record and a composition with a role the core has never heard of."""

    def planner(builder):
        steps_left = builder.setting("refiner.steps_left")
        if steps_left is None:
            return
        total = builder.total_steps("base")
        builder.stage(Stage("base", "random", 0.6, steps=total - round(total * 0.4) - steps_left[0]))
        builder.stage(Stage("refiner", "ddim", "current", stop="end", guidance="$refiner.guidance"))

    class Plugin:
        @hookimpl
        def register_settings(self, register):
            register("refiner", RefinerSettings)

        @hookimpl
        def register_compositions(self, register):
            register("refined", Composition("refined", "a base T2I, then a refiner T2I for the last steps",
                                            roles={"base": "t2i", "refiner": "t2i"}, planner=planner))

    return Plugin()


def test_a_plugin_with_its_own_settings_record_and_roles_needs_no_core_edit(clip_file, registry, tiny_backends):
    plugins = load_plugins(extra=[refiner_plugin()])
    models = {"base": native(clip_file).models["idm"], "refiner": native(clip_file).models["idm"]}
    spec = attrs.evolve(native(clip_file, "refined"), models=models,
                        plugin_settings={"refiner": {"steps_left": [3], "guidance": 1}})
    plan = make_plan(spec, registry, plugins)
    refiner = [op for op in plan.ops if isinstance(op, DenoiseOp) and op.model == "refiner"]
    assert len(refiner) == 1 and refiner[0].guidance == 1.0
    backends = {"base": tiny_backends[1]["idm"], "refiner": tiny_backends[1]["idm"]}
    records, made = run_counted(spec, plan, backends, plugins)
    assert unplanned_calls(records) == [] and made == {r: t["unet_calls"] for r, t in plan.totals().items()}
    for given, expected in (({"steps_left": [2, 5]}, "$.plugin_settings.refiner.steps_left: [2, 5]; give steps left "
                                                     "in decreasing order"),
                            ({"steps_left": 3}, "$.plugin_settings.refiner.steps_left: expected a list, got number 3; "
                                                "write it as [...]")):
        with pytest.raises(PlanError) as raised:
            make_plan(attrs.evolve(spec, plugin_settings={"refiner": given}), registry, plugins)
        assert raised.value.problems == [expected]
