"""Formulas pinned against references that do not come from the code under test (torch, diffusers' pipelines, or
numbers worked out here), at values other than the defaults: the latent upscale, the hand-over after a latent op
or a conversion, samplers' state and predictions, and the start level of a strength."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import AnimateDiffVideoToVideoPipeline, DDIMScheduler, StableDiffusionImg2ImgPipeline

from evs_framework.denoiser import Denoiser, Prediction
from evs_framework.executor import execute
from evs_framework.plan import ConvertOp, DenoiseOp, LatentOp, Plan, TransferOp
from evs_framework.sampler import StepContext
from evs_framework.schedules import BetaSchedule, ModelSchedule
from evs_plugins.latent_ops import upscale
from evs_plugins.samplers import DDIM, DPMPP_2M, EULER, HEUN, LCM


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest-exact"])
def test_upscale_is_torch_interpolate_in_its_mode_with_unaligned_corners(mode):
    latents = randn(3, 4, 6, 10)
    options = {} if mode == "nearest-exact" else {"align_corners": False}
    expected = F.interpolate(latents, size=(9, 15), mode=mode, **options)  # 6 x 10 times 1.5
    torch.testing.assert_close(upscale(latents, 1.5, mode), expected, rtol=0, atol=0)


class LinearDenoiser:
    """eps = `slope` x + the level the model is evaluated at (timestep_sigma, else sigma); x0 = x - sigma eps. Counts
    its calls as a Denoiser does."""

    def __init__(self, slope=0.1):
        self.slope, self.calls, self.guidance = slope, 0, 1.0

    def eps(self, x, level):
        return self.slope * x + level

    def __call__(self, x, sigma, *, timestep_sigma=None, guidance=None):
        self.calls += 1
        eps = self.eps(x, sigma if timestep_sigma is None else timestep_sigma)
        return Prediction(x - sigma * eps, eps)


def denoise_op(model, sampler, sigmas):
    return DenoiseOp(0, model, sampler, 0, len(sigmas) - 1, tuple(sigmas), (), len(sigmas) - 1)


def transfer_op(model, strategy, sigma_from, levels):
    return TransferOp(0, model, strategy, 0, sigma_from, levels[-1], tuple(levels), 0)


def run(ops, denoisers, source, plugins, convert=None, observer=None):
    plan = Plan("test", {}, tuple(ops), (), 1.0)
    x, _ = execute(plan, denoisers, source, plugins.catalogue, torch.Generator().manual_seed(5), observer=observer,
                   convert=convert)
    return x


def noised_then_one_euler_step(source):
    """What the first two ops below leave: `source` + 2 * the generator's first noise, one Euler step to sigma 1.
    Returns (x at sigma 1, the clean estimate of that step)."""
    x = source + 2.0 * randn(*source.shape, seed=5)
    eps = 0.1 * x + 2.0
    clean = x - 2.0 * eps
    return clean + 1.0 * eps, clean


HAND_OVERS = {
    "upscale": (LatentOp(0, "idm", "upscale", {"factor": 1.5, "mode": "bilinear"}), None,
                lambda clean: F.interpolate(clean, size=(6, 9), mode="bilinear", align_corners=False)),
    "conversion": (ConvertOp(0, "idm", "idm", "double", "a", "b", ""), lambda op, latents: 2 * latents,
                   lambda clean: 2 * clean),
}


@pytest.mark.parametrize("hand_over", HAND_OVERS)
def test_a_hand_over_above_sigma_0_changes_the_clean_estimate_and_inverts_it_from_sigma_0(hand_over, plugins):
    """An upscale or a conversion at sigma 1 works on the clean estimate, not the noisy latent; the latent it leaves
    is that clean latent at sigma 0, so an inversion up from the present latent walks every level from 0."""
    op, convert, change = HAND_OVERS[hand_over]
    source = randn(2, 4, 4, 6, seed=1)
    denoiser = LinearDenoiser()
    head = [transfer_op("idm", "random", 0.0, (0.0, 2.0)), denoise_op("idm", "euler", (2.0, 1.0)), op]
    x_at_1, clean = noised_then_one_euler_step(source)
    changed = change(clean)
    assert (change(x_at_1) - changed).abs().max() > 0.1  # the noisy latent would give another result
    torch.testing.assert_close(run(head, {"idm": denoiser}, source, plugins, convert), changed)

    denoiser.calls = 0
    inverted = run(head + [transfer_op("idm", "ddim_invert_up", 0.0, (0.0, 0.5, 1.5))], {"idm": denoiser}, source,
                   plugins, convert)
    first = changed + 0.5 * (0.1 * changed + 0.5)  # 0 -> 0.5, evaluated at 0.5's timestep
    second = first + 1.0 * (0.1 * first + 1.5)  # 0.5 -> 1.5
    torch.testing.assert_close(inverted, second)
    assert denoiser.calls == 1 + 2  # the Euler step, then both inversion steps


def test_the_plan_hands_a_changed_latent_over_from_sigma_0_and_counts_every_inversion_step(clip_file, plugins,
                                                                                             registry):
    from evs_framework.composition import Composition, Stage, StageOp
    from tests.test_compositions import planned

    composition = Composition("x", stages=(
        Stage("idm", "random", 0.6, steps=4),
        Stage("vdm", "ddim_invert_up", "current", stop="end", ops=(StageOp("upscale", {"factor": 1.5}),))))
    plan = planned(clip_file, composition, plugins, registry)
    transfer = next(op for op in plan.ops if isinstance(op, TransferOp) and op.strategy == "ddim_invert_up")
    assert transfer.sigma_from == 0.0
    assert transfer.evaluations == len(transfer.levels) - 1  # levels run from 0.0 up to the target


def test_a_multistep_samplers_history_stays_in_its_op(plugins):
    """DPM-Solver++(2M) extrapolates from the previous step's clean estimate, but only within one op: the next op,
    another model at another level, starts with a first-order step, x0 + sigma_next * eps, from its own model."""
    first, second = LinearDenoiser(0.1), LinearDenoiser(-0.2)
    ends = []

    class Observer:
        def step_start(self, op, step, sigma):
            pass

        def step_end(self, op, step, sigma, latents):
            ends.append(latents)

    ops = [transfer_op("idm", "random", 0.0, (0.0, 3.0)), denoise_op("idm", "dpmpp_2m", (3.0, 2.0, 1.0)),
           denoise_op("vdm", "dpmpp_2m", (1.0, 0.5, 0.0))]
    run(ops, {"idm": first, "vdm": second}, randn(2, 4, 4, 4, seed=2), plugins, observer=Observer())
    x = ends[1]  # where the first op stopped, at sigma 1
    eps = -0.2 * x + 1.0
    torch.testing.assert_close(ends[2], (x - 1.0 * eps) + 0.5 * eps)


class TimestepBackend:
    def predict(self, x, timestep, text):
        return torch.tanh(x) * (0.5 + timestep / 2000) + 0.1 * torch.cos(3 * x)


SCHEDULE = ModelSchedule(BetaSchedule("linear"), 8, "trailing")


@pytest.mark.parametrize("sampler, params", [(EULER, {}), (DDIM, {"eta": 0.7}), (HEUN, {}), (DPMPP_2M, {}),
                                             (LCM, {})], ids=lambda value: getattr(value, "name", ""))
def test_each_sampler_returns_a_prediction_that_agrees_with_its_latent(sampler, params):
    """x_next = x0 + sigma_next * eps at every step, the second-order ones' and the noise-adding ones' included."""
    denoiser = Denoiser(TimestepBackend(), SCHEDULE.train, torch.zeros(2, 1, 1), guidance=1.0)
    levels = SCHEDULE.levels[2:5]
    x, state = randn(2, 4, 6, 6, seed=3) * levels[0], {}
    for step in range(2):
        context = StepContext(step, levels, None, {**sampler.parameters, **params}, state, {},
                              torch.Generator().manual_seed(step))
        x, prediction = sampler.step(denoiser, x, context)
        torch.testing.assert_close(prediction.x0 + levels[step + 1] * prediction.eps, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps, strength", [(8, 0.37), (25, 0.37), (50, 0.58), (90, 0.7)])
def test_a_strength_starts_where_diffusers_img2img_and_video_to_video_start(steps, strength):
    """8 x 0.37 = 2.96 runs 2 steps (truncated, not rounded); 50 x 0.58 is 28.999999999999996 in floating point and
    runs 28, as both diffusers pipelines compute it."""
    schedule = ModelSchedule(BetaSchedule("scaled_linear"), steps, "leading", 1)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(steps)
    pipeline = SimpleNamespace(scheduler=scheduler)
    image, _ = StableDiffusionImg2ImgPipeline.get_timesteps(pipeline, steps, strength, "cpu")
    video, _ = AnimateDiffVideoToVideoPipeline.get_timesteps(pipeline, steps, scheduler.timesteps, strength, "cpu")
    ours = list(schedule.timesteps[schedule.start_level(strength):])
    assert ours == image.tolist() == video.tolist()
    if (steps, strength) == (8, 0.37):
        assert len(ours) == 2 != round(steps * strength)
    if (steps, strength) == (50, 0.58):
        assert len(ours) == 28 and math.isclose(steps * strength, 29)
