"""Step caching (models.<role>.cache): off changes nothing, the shallow pass is the full pass given the same step's
deep features, features never cross an op, the plan's counts hold, and bad settings are named with their path."""

import pytest
import torch

from evs_framework.errors import PlanError, SpecError
from evs_framework.executor import execute
from evs_framework.loading import LoadContext, WeightSettings
from evs_framework.plan_text import format_plan
from evs_framework.planner import make_plan
from evs_framework.runner import VideoRun, make_denoisers, run_plan
from evs_plugins import step_cache
from evs_plugins.unet_split import full_pass, shallow_pass
from tests.planning import native

SOURCE_SHAPE = (4, 4, 8, 8)


def cached(interval=2, depth=1, roles=("idm", "vdm"), **settings):
    choice = {"cache": {"interval": interval, "depth": depth}}
    return native("clip.mp4", idm=choice if "idm" in roles else None, vdm=choice if "vdm" in roles else None,
                  **settings)


def video_run(spec, plan, backends, plugins, seed=1):
    denoisers = make_denoisers(plan, {role: backends[role] for role in plan.models}, "a red ball", "", plugins.catalogue)
    source = torch.randn(SOURCE_SHAPE, generator=torch.Generator().manual_seed(0))
    return VideoRun(spec, plan, backends, denoisers, source, torch.Generator().manual_seed(seed), plugins.catalogue,
                    torch.device("cpu"))


def run(spec, backends, registry, plugins, hook=None, seed=1):
    """The spec's plan through the runner's hooks on random latents: (final latents, op records, the run)."""
    video = video_run(spec, make_plan(spec, registry, plugins), backends, plugins, seed)
    latents, records, _ = run_plan(video, hook or plugins.hook)
    return latents, records, video


def relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_off_takes_no_other_path(tiny_backends, registry, plugins):
    """Without `cache`, a run through the plugins' hooks gives bit for bit what the executor gives with no hook at all,
    and no UNet's forward is replaced."""
    _, backends = tiny_backends
    spec = native("clip.mp4")
    latents, _, video = run(spec, backends, registry, plugins)
    plain = video_run(spec, video.plan, backends, plugins)
    alone, _ = execute(plain.plan, plain.denoisers, plain.source, plugins.catalogue, plain.generator)
    assert torch.equal(latents, alone)
    assert "step_cache" not in video.report
    assert all("forward" not in vars(backend.unet) for backend in backends.values())


def test_interval_one_is_the_exact_run(tiny_backends, registry, plugins):
    _, backends = tiny_backends
    exact, _, _ = run(native("clip.mp4"), backends, registry, plugins)
    latents, _, video = run(cached(interval=1), backends, registry, plugins)
    assert torch.equal(latents, exact)
    assert video.report["step_cache"]["idm"]["shallow_steps"] == 0
    assert all("forward" not in vars(backend.unet) for backend in backends.values())  # put back at the video's end


@pytest.mark.parametrize("role", ["idm", "vdm"])
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10)])  # 7: the upsamplers are told the size to reach
def test_shallow_pass_with_the_same_inputs_deep_features_is_the_full_pass(tiny_backends, role, depth, size):
    """The correctness guard of the split: the outer blocks on the deep features of the same input give the
    UNet's own output (depth 2 of the tiny UNets skips the mid-block alone)."""
    _, backends = tiny_backends
    unet = backends[role].unet
    generator = torch.Generator().manual_seed(3)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    if role == "vdm":  # (batch, channels, frames, h, w), one text per frame
        sample, text = torch.randn(2, 4, 4, *size, generator=generator), text.repeat_interleave(4, dim=0)
    else:
        sample = torch.randn(2, 4, *size, generator=generator)
    timestep = torch.full((), 381.0)
    with torch.no_grad():
        full, deep = full_pass(unet.forward, unet, depth, True, sample, timestep, encoder_hidden_states=text)
        shallow = shallow_pass(unet, depth, sample, timestep, text, deep)
        other = shallow_pass(unet, depth, sample, torch.full((), 201.0), text, deep)
    assert type(shallow) is type(full) and shallow.sample.shape == full.sample.shape
    torch.testing.assert_close(shallow.sample, full.sample, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(other.sample, full.sample)  # the outer blocks do see the step's own timestep


def test_on_is_close_to_exact_and_well_inside_what_another_seed_changes(tiny_backends, registry, plugins):
    """Interval 2 on both models of IDM_VDM_IDM: the final latents differ from the exact run's, by less than a
    twentieth of what another noise seed changes (measured on these tiny models: 0.013
    against 1.2)."""
    _, backends = tiny_backends
    exact, _, _ = run(native("clip.mp4"), backends, registry, plugins)
    other_seed, _, _ = run(native("clip.mp4"), backends, registry, plugins, seed=2)
    latents, _, video = run(cached(interval=2), backends, registry, plugins)
    assert not torch.equal(latents, exact)
    assert relative(latents, exact) < relative(other_seed, exact) / 20
    report = video.report["step_cache"]
    assert report["idm"]["shallow_steps"] == report["idm"]["planned_shallow_steps"] > 0
    assert report["vdm"]["shallow_steps"] == report["vdm"]["planned_shallow_steps"] > 0


class Watching:
    """The plugins' hooks, with the op of each step noted and every kept feature traced to the op that made it."""

    def __init__(self, hook, monkeypatch):
        self.hook, self.op, self.made, self.reused, self.left_over = hook, None, {}, [], []
        monkeypatch.setattr(step_cache, "full_pass", self.full_pass)
        monkeypatch.setattr(step_cache, "shallow_pass", self.shallow_pass)

    def full_pass(self, *args, **kwargs):
        output, deep = full_pass(*args, **kwargs)
        if deep is not None:
            self.made[id(deep)] = self.op
        return output, deep

    def shallow_pass(self, unet, depth, sample, timestep, text, deep):
        self.reused.append((self.made[id(deep)], self.op))
        return shallow_pass(unet, depth, sample, timestep, text, deep)

    def step_start(self, video, op, step, sigma):
        self.op = op
        self.hook.step_start(video=video, op=op, step=step, sigma=sigma)
        if step == 0:
            self.left_over += [role for role, cache in video.state["step_cache"].items() if cache.kept]

    def __getattr__(self, name):
        return getattr(self.hook, name)


def test_features_never_cross_an_op(tiny_backends, registry, plugins, monkeypatch):
    """IDM_VDM_IDM switches T2I -> T2V -> T2I through transfers: every shallow pass reuses features made in its own
    op, and at each op's first step no role holds any."""
    _, backends = tiny_backends
    watching = Watching(plugins.hook, monkeypatch)
    _, _, video = run(cached(interval=3), backends, registry, plugins, hook=watching)
    assert watching.reused and all(made is now for made, now in watching.reused)
    assert {id(now) for _, now in watching.reused} == {id(op) for op in video.plan.ops if type(op).__name__ ==
                                                       "DenoiseOp" and op.steps > 1}
    assert watching.left_over == []


def test_the_plan_counts_shallow_steps_as_calls_and_says_how_many(tiny_backends, registry, plugins, zoo):
    _, backends = tiny_backends
    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32)
    spec = cached(interval=3, roles=("idm",))
    plan = make_plan(spec, registry, plugins, context)
    exact = make_plan(native("clip.mp4"), registry, plugins)
    assert plan.totals() == exact.totals()
    shallow, steps = step_cache.planned_shallow(plan, "idm", 3)
    assert f"+ step_cache: idm EP {shallow} of {steps} steps shallow (every 3rd step of an op in full, the others " \
           f"through the outer 1 of 2 down/up blocks on kept deep features); outputs approximate" in format_plan(plan)
    _, records, video = run(spec, backends, registry, plugins)
    assert all(r.unet_calls == r.planned_unet_calls for r in records)
    report = video.report["step_cache"]["idm"]
    assert report["steps"] == steps and report["shallow_steps"] == shallow > 0
    assert report["shallow_unet_calls"] == 2 * shallow  # guided: both halves in one batch
    assert report["shallow_passes"] == shallow and report["full_passes"] == steps - shallow
    assert "vdm" not in video.report["step_cache"]


@pytest.mark.parametrize("cache, found", [
    ({"interval": 0}, "$.models.idm.cache.interval: 0; give at least 1"),
    ({"depth": 0}, "$.models.idm.cache.depth: 0; give at least 1"),
    ({"interval": "3"}, "$.models.idm.cache.interval"),
    ({"intervall": 3}, "$.models.idm.cache"),
])
def test_bad_values_are_named_with_their_path(cache, found):
    with pytest.raises(SpecError) as raised:
        native("clip.mp4", idm={"cache": cache})
    assert found in str(raised.value)


def test_a_depth_beyond_the_unet_is_refused_at_plan_time_and_at_the_run(tiny_backends, registry, plugins, zoo):
    _, backends = tiny_backends
    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32)
    spec = cached(depth=3, roles=("vdm",))
    with pytest.raises(PlanError) as raised:
        make_plan(spec, registry, plugins, context)
    assert "$.models.vdm.cache.depth: lightningEP: depth 3 is beyond its UNet's 2 up-blocks; give 1 to 2" in \
           str(raised.value)
    plan = make_plan(spec, registry, plugins)  # no weights to read the config from: the run refuses it
    with pytest.raises(PlanError, match=r"\$\.models\.vdm\.cache: lightningEP: depth 3 is beyond"):
        run_plan(video_run(spec, plan, backends, plugins), plugins.hook)
    assert all("forward" not in vars(backend.unet) for backend in backends.values())


def test_compiling_a_cached_unet_is_refused(registry, plugins, zoo):
    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32,
                          compile=("idm",))
    with pytest.raises(PlanError, match=r"\$\.models\.idm\.cache: the idm UNet is compiled too"):
        make_plan(cached(roles=("idm",)), registry, plugins, context)
