"""Our sampling math pinned to diffusers, not to ourselves.

Whole runs where a composition degenerates to one model are compared with diffusers' own pipelines on the tiny
zoo models, with the same noise; each formula (guidance, the denoiser's input scaling and timestep, every
transfer, the VAE scaling, each sampler) is compared with the diffusers code it mirrors, so that a one-line
change to any of them fails a test here. bench/mutations.py checks that claim.
"""

from pathlib import Path

import attrs
import diffusers.schedulers.scheduling_lcm
import pytest
import torch
from diffusers import (AnimateDiffVideoToVideoPipeline, DDIMInverseScheduler, DDIMScheduler, EulerDiscreteScheduler,
                       LCMScheduler, StableDiffusionImg2ImgPipeline)

from evs_framework.denoiser import Denoiser
from evs_framework.executor import execute
from evs_framework.loading import LoadContext, WeightSettings
from evs_framework.plan import TransferOp
from evs_framework.planner import make_plan
from evs_framework.runner import make_denoisers
from evs_framework.sampler import StepContext, single_step
from evs_framework.schedules import BetaSchedule
from evs_framework.spec import InputVideo, ModelChoice, Settings, Spec
from evs_framework.transfer import TransferContext
from evs_framework.io.vae import decode_latents, encode_frames
from evs_framework.testing.zoo import make_synthetic_clip, make_vae
from evs_plugins.samplers import EULER, LCM
from evs_plugins.schedules import betas
from evs_plugins.transfers import ddim_invert_up, ddim_inversion, ddim_renoise, random_noise

PROMPT, NEGATIVE = "a red ball rolling on green grass", "blurry, dark, low quality"
SEED = 11


def assert_within(ours, theirs, tolerance, what):
    difference = float((ours - theirs).abs().max())
    assert difference <= tolerance, f"{what}: max |ours - diffusers| = {difference:.3g} > tolerance {tolerance:g}"


def relative(tolerance, reference):
    """`tolerance` for values of order one, scaled up for latents as large as `reference` (float32 rounding)."""
    return tolerance * max(1.0, float(reference.abs().max()))


def vp(x, sigma):
    """A sigma-space latent in the variance-preserving form diffusers' DDIM-family schedulers work in."""
    return x / (1 + sigma**2) ** 0.5


def scheduler_config(preset) -> dict:
    """The diffusers scheduler settings of a registry preset."""
    return dict(beta_schedule=preset.beta_schedule, beta_start=preset.beta_start, beta_end=preset.beta_end,
                num_train_timesteps=preset.train_steps, timestep_spacing=preset.spacing,
                steps_offset=preset.steps_offset)


# --- whole runs against diffusers' pipelines ---------------------------------------------------------------


@pytest.fixture(scope="module")
def models(plugins, registry, zoo):
    """The tiny zoo's backends, loaded once for this module."""
    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32)
    return lambda name: context.load(registry.get(name))


def clean_latents(backend, frames):
    return encode_frames(backend.vae, make_synthetic_clip(frames, 64, 48, seed=3), frames)


def run_ours(role, model, backend, source, strength, plugins, registry):
    """The single-model composition (IDM or VDM) with random noising, through the planner and the executor."""
    spec = Spec(inputs=(InputVideo(Path("clip.mp4"), PROMPT),), models={role: ModelChoice(model)},
                composition=role.upper(), negative_prompt=NEGATIVE, seed=SEED,
                settings=Settings(**{f"{role}_invert_mode": "random", f"{role}_inverse_strength": strength}))
    plan = make_plan(spec, registry, plugins)
    denoisers = make_denoisers(plan, {role: backend}, PROMPT, NEGATIVE, plugins.catalogue)
    latents, _ = execute(plan, denoisers, source, plugins.catalogue, torch.Generator().manual_seed(SEED))
    return latents, denoisers[role]


def lcm_scheduler(preset):
    config = {**scheduler_config(preset), "original_inference_steps": preset.original_steps}
    del config["timestep_spacing"]  # "lcm": LCMScheduler spaces its timesteps its own way
    return LCMScheduler(**config)


def sd15_schedulers(preset):
    config = scheduler_config(preset)
    return {
        # our last step lands on sigma 0, the clean estimate: DDIM with a final alpha of one. SD1.5's shipped
        # config (set_alpha_to_one false) would stop at alphas_cumprod[0] instead, sigma 0.029.
        "ddim": DDIMScheduler(**config, clip_sample=False, set_alpha_to_one=True),
        "euler": EulerDiscreteScheduler(**config),
    }


@pytest.mark.parametrize("scheduler_name", ["ddim", "euler"])
def test_idm_only_equals_img2img_pipeline(scheduler_name, models, registry, plugins):
    backend, preset = models("SD"), registry.get("SD").preset
    source = clean_latents(backend, 2)
    ours, denoiser = run_ours("idm", "SD", backend, source, 0.6, plugins, registry)
    assert preset.guidance > 1 and denoiser.calls == 2 * 30

    pipeline = StableDiffusionImg2ImgPipeline(
        vae=backend.vae, text_encoder=backend.text_encoder, tokenizer=backend.parts.tokenizer, unet=backend.unet,
        scheduler=sd15_schedulers(preset)[scheduler_name], safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    # latents given as the image skip the VAE; the pipeline then draws its noise first, of the latents' shape,
    # from the generator, as our random transfer does
    theirs = pipeline(prompt=[PROMPT] * 2, negative_prompt=[NEGATIVE] * 2, image=source, strength=0.6,
                      num_inference_steps=preset.steps, guidance_scale=preset.guidance, output_type="latent",
                      generator=torch.Generator().manual_seed(SEED)).images
    assert_within(ours, theirs, 5e-5, f"IDM-only vs StableDiffusionImg2ImgPipeline ({scheduler_name})")


def frame_major_randn(shape, generator=None, device=None, dtype=None, **_):
    """randn_tensor for a (batch, channels, frames, h, w) shape, drawn frame by frame as our transfers and samplers
    draw (frames, channels, h, w) noise, so one generator gives both sides the same noise."""
    batch, channels, frames, height, width = shape
    noise = torch.randn((batch, frames, channels, height, width), generator=generator, dtype=torch.float32)
    return noise.permute(0, 2, 1, 3, 4).to(device=device, dtype=dtype)


def run_video_pipeline(backend, make_scheduler, source, strength, steps, guidance):
    """AnimateDiffVideoToVideoPipeline from `source` noised by diffusers' own add_noise, with the noise our
    random transfer draws first from a SEED generator; the rest of that generator feeds the scheduler's steps."""
    pipeline = AnimateDiffVideoToVideoPipeline(
        vae=backend.vae, text_encoder=backend.text_encoder, tokenizer=backend.parts.tokenizer, unet=backend.unet,
        motion_adapter=None, scheduler=make_scheduler())
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(SEED)
    noise = torch.randn(source.shape, generator=generator)
    noising = make_scheduler()
    noising.set_timesteps(steps)
    first_timestep = pipeline.get_timesteps(steps, noising.timesteps, strength, "cpu")[0][:1]
    start = noising.add_noise(source, noise, first_timestep)
    frames, channels, height, width = source.shape
    out = pipeline(prompt=PROMPT, negative_prompt=NEGATIVE, latents=start.permute(1, 0, 2, 3)[None],
                   strength=strength, num_inference_steps=steps, guidance_scale=guidance, height=8 * height,
                   width=8 * width, output_type="latent", generator=generator).frames
    return out[0].permute(1, 0, 2, 3)


def test_vdm_only_lightning_equals_animatediff_video_to_video_with_euler(models, registry, plugins):
    backend, preset = models("lightningEP"), registry.get("lightningEP").preset
    assert (preset.spacing, preset.beta_schedule, preset.guidance) == ("trailing", "linear", 1.0)
    source = clean_latents(backend, 4)
    ours, denoiser = run_ours("vdm", "lightningEP", backend, source, 0.5, plugins, registry)
    assert denoiser.calls == 4  # guidance 1: one UNet call a step

    def make():
        return EulerDiscreteScheduler(**scheduler_config(preset))

    theirs = run_video_pipeline(backend, make, source, 0.5, preset.steps, preset.guidance)
    assert_within(ours, theirs, 5e-5, "VDM-only Lightning vs AnimateDiffVideoToVideoPipeline (Euler, trailing)")


def test_vdm_only_animatelcm_equals_animatediff_video_to_video_with_lcm(models, registry, plugins, monkeypatch):
    backend, preset = models("animatelcm"), registry.get("animatelcm").preset
    assert (preset.sampler, preset.original_steps) == ("lcm", 100) and preset.guidance > 1
    source = clean_latents(backend, 4)
    ours, denoiser = run_ours("vdm", "animatelcm", backend, source, 0.5, plugins, registry)
    assert denoiser.calls == 2 * 4

    monkeypatch.setattr(diffusers.schedulers.scheduling_lcm, "randn_tensor", frame_major_randn)
    theirs = run_video_pipeline(backend, lambda: lcm_scheduler(preset), source, 0.5, preset.steps, preset.guidance)
    assert_within(ours, theirs, 5e-5, "VDM-only AnimateLCM vs AnimateDiffVideoToVideoPipeline (LCMScheduler)")


# --- the denoiser wrapper: guidance, input scaling, timestep ------------------------------------------------

TEXT = torch.tensor([0.0, 1.0]).view(2, 1, 1)  # stand-ins for the (negative, positive) prompt embeddings


def smooth_eps(x, timestep, text):
    """A noise prediction for (batch, frames, c, h, w) that depends non-linearly on the input, on the timestep and
    on the text, so that a wrong input scale, timestep or prompt shows in the result."""
    return torch.tanh(x) * (0.5 + timestep / 2000) + 0.1 * torch.cos(3 * x) + 0.3 * text.view(-1, 1, 1, 1, 1)


class RecordingBackend:
    """smooth_eps as a backend; records the input, timestep and text of every call."""


    def __init__(self):
        self.calls = []

    def predict(self, x, timestep, text):
        self.calls.append((x.clone(), timestep, text.clone()))
        return smooth_eps(x, timestep, text)


def guided_eps(sample, timestep, guidance):
    """What diffusers' pipelines feed a scheduler: classifier-free guidance over smooth_eps for frames `sample`."""
    cond = smooth_eps(sample[None], timestep, TEXT[1:2])[0]
    if guidance == 1.0:
        return cond
    uncond = smooth_eps(sample[None], timestep, TEXT[0:1])[0]
    return uncond + guidance * (cond - uncond)


class TextKeyedBackend:
    """Predicts `uncond` for the negative prompt's row of TEXT and `cond` for the positive one."""


    def __init__(self, uncond, cond):
        self.uncond, self.cond, self.texts = uncond, cond, []

    def predict(self, x, timestep, text):
        self.texts.append(text.clone())
        return torch.stack([self.cond if row.item() == 1.0 else self.uncond for row in text.flatten(1)])


def random_latents(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def keyed_denoiser(guidance):
    uncond, cond = random_latents(2, 4, 6, 8, seed=1), random_latents(2, 4, 6, 8, seed=2)
    return Denoiser(TextKeyedBackend(uncond, cond), BetaSchedule("scaled_linear"), TEXT, guidance), uncond, cond


def test_guidance_is_uncond_plus_scale_times_cond_minus_uncond():
    denoiser, uncond, cond = keyed_denoiser(7.5)
    x = random_latents(2, 4, 6, 8, seed=3)
    prediction = denoiser(x, 2.0)
    expected = uncond + 7.5 * (cond - uncond)
    torch.testing.assert_close(prediction.eps, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(prediction.x0, x - 2.0 * expected, atol=1e-5, rtol=0)
    [text] = denoiser.backend.texts  # one batched call with the negative prompt first
    assert torch.equal(text, TEXT) and denoiser.calls == 2


@pytest.mark.parametrize("model_guidance", [1.0, 7.5])
def test_guidance_one_is_one_call_with_the_positive_prompt(model_guidance):
    denoiser, _, cond = keyed_denoiser(model_guidance)
    x = random_latents(2, 4, 6, 8, seed=3)
    prediction = denoiser(x, 2.0, guidance=1.0)  # the model's own guidance, or a transfer's override
    torch.testing.assert_close(prediction.eps, cond, atol=0, rtol=0)
    [text] = denoiser.backend.texts
    assert torch.equal(text, TEXT[1:2]) and denoiser.calls == 1


@pytest.mark.parametrize("model", ["SD", "lightningEP"])
def test_denoiser_input_and_timestep_are_euler_discretes(model, registry):
    """At every level, the UNet sees what EulerDiscreteScheduler gives it: scale_model_input(x) at its timestep."""
    preset = registry.get(model).preset
    schedule = preset.sampling(betas(preset))
    scheduler = EulerDiscreteScheduler(**scheduler_config(preset))
    scheduler.set_timesteps(preset.steps)
    backend = RecordingBackend()
    denoiser = Denoiser(backend, schedule.train, TEXT, guidance=1.0)
    x = random_latents(2, 4, 6, 8) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        denoiser(x, schedule.levels[i])
        seen_x, seen_t, _ = backend.calls[-1]
        assert_within(seen_x[0], model_input, relative(1e-5, model_input),
                      f"{model} UNet input at step {i} (t={int(t)}, tolerance 1e-5 x max(1, |input|))")
        assert seen_t == float(t), f"{model} step {i}: the UNet got timestep {seen_t}, diffusers gives {float(t)}"
        x = scheduler.step(guided_eps(model_input, t, 1.0), t, x).prev_sample


def test_denoiser_timestep_between_table_entries_is_diffusers_sigma_to_t():
    """Karras sigmas fall between the training table's entries; EulerDiscreteScheduler maps them to fractional
    timesteps by interpolating log-sigma, as the denoiser must."""
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       use_karras_sigmas=True)
    scheduler.set_timesteps(12)
    backend = RecordingBackend()
    denoiser = Denoiser(backend, BetaSchedule("scaled_linear"), TEXT, guidance=1.0)
    fractional = 0
    for sigma, t in zip(scheduler.sigmas[:-1].tolist(), scheduler.timesteps.tolist()):
        denoiser(random_latents(1, 4, 2, 2), sigma)
        seen = backend.calls[-1][1]
        assert seen == pytest.approx(t, abs=2e-3), f"sigma {sigma}: timestep {seen}, diffusers' _sigma_to_t {t}"
        fractional += abs(t - round(t)) > 0.01
    assert fractional >= 6  # the check did exercise the interpolation


# --- transfers ------------------------------------------------------------------------------------------------

SD15_TRAIN = BetaSchedule("scaled_linear")


def transfer_context(clean, sigma_to, *, eps=None, sigma_from=0.0, levels=None, denoise=None, guidance=1.0):
    return TransferContext(clean, eps, sigma_from, sigma_to, levels or (0.0, sigma_to), denoise, guidance,
                           torch.Generator().manual_seed(SEED))


def test_random_transfer_is_ddim_add_noise_with_the_generators_noise(registry):
    t = 381
    sigma = SD15_TRAIN.sigma_at(t)
    clean = random_latents(2, 4, 6, 8)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(SEED))
    ours = random_noise(transfer_context(clean, sigma))
    expected = sd15_schedulers(registry.get("SD").preset)["ddim"].add_noise(clean, noise, torch.tensor([t]))
    assert_within(vp(ours, sigma), expected, 1e-5, "random transfer vs DDIMScheduler.add_noise")


def test_ddim_renoise_is_the_ddim_step_to_the_target_level(registry):
    scheduler = sd15_schedulers(registry.get("SD").preset)["ddim"]
    scheduler.set_timesteps(50)
    t, t_next = 381, 361
    sigma_from, sigma_to = SD15_TRAIN.sigma_at(t), SD15_TRAIN.sigma_at(t_next)
    x_vp, eps = random_latents(2, 4, 6, 8, seed=1), random_latents(2, 4, 6, 8, seed=2)
    expected = scheduler.step(eps, t, x_vp).prev_sample
    clean = x_vp * (1 + sigma_from**2) ** 0.5 - sigma_from * eps
    ours = ddim_renoise(transfer_context(clean, sigma_to, eps=eps, sigma_from=sigma_from))
    assert_within(vp(ours, sigma_to), expected, 1e-5, "ddim_renoise vs DDIMScheduler.step")


def unet_eps(unet, sample, timestep, text, guidance):
    """A diffusers pipeline's guided noise prediction for a batch of frames."""
    frames = sample.shape[0]
    if guidance == 1.0:
        return unet(sample, timestep, encoder_hidden_states=text[1:2].expand(frames, -1, -1)).sample
    both = unet(torch.cat([sample, sample]), timestep, encoder_hidden_states=text.repeat_interleave(frames, 0)).sample
    uncond, cond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


def inverse_scheduler(preset):
    """DDIMInverseScheduler from alpha 1 (the clean latent), evaluating the model at the higher timestep of a step."""
    inverse = DDIMInverseScheduler(**scheduler_config(preset), clip_sample=False, set_alpha_to_one=True)
    inverse.set_timesteps(preset.steps)
    return inverse


def inversion_setup(models, registry):
    backend, preset = models("SD"), registry.get("SD").preset
    schedule = preset.sampling(betas(preset))
    levels = tuple(reversed(schedule.levels[schedule.start_level(0.4):]))  # clean .. t=381, 20 levels up
    text = backend.encode_prompts([NEGATIVE, PROMPT])
    denoiser = Denoiser(backend, schedule.train, text, guidance=preset.guidance)
    inverse = inverse_scheduler(preset)
    timesteps = inverse.timesteps[:len(levels) - 1]
    assert int(timesteps[-1]) == schedule.timesteps[schedule.start_level(0.4)]
    return backend, text, denoiser, inverse, timesteps, levels


def test_ddim_inversion_equals_ddim_inverse_scheduler(models, registry):
    backend, text, denoiser, inverse, timesteps, levels = inversion_setup(models, registry)
    clean = clean_latents(backend, 2)
    ours = ddim_inversion(transfer_context(clean, levels[-1], levels=levels, denoise=denoiser, guidance=1.0))
    x = clean
    with torch.no_grad():
        for t in timesteps:
            x = inverse.step(unet_eps(backend.unet, x, t, text, 1.0), t, x).prev_sample
    # inversion amplifies rounding (steps agree to 3e-7; 20 of them to 2.5e-5 on the random UNet)
    assert_within(vp(ours, levels[-1]), x, 1e-4, "ddim_inversion vs DDIMInverseScheduler, 20 steps")


def test_ddim_invert_up_continues_an_inversion_from_the_present_latent(models, registry):
    """From the latent an inversion reached half-way, ddim_invert_up walks the rest of the same levels and lands
    where the whole inversion does; from a clean latent with its own `guidance` it is that inversion at that
    guidance (IV-Mixed inverts with negative guidance)."""
    backend, _, denoiser, _, _, levels = inversion_setup(models, registry)
    clean = clean_latents(backend, 2)
    half = len(levels) // 2
    x_half = ddim_inversion(transfer_context(clean, levels[half], levels=levels[:half + 1], denoise=denoiser))
    rest = attrs.evolve(transfer_context(clean, levels[-1], sigma_from=levels[half], levels=levels, denoise=denoiser),
                        x=x_half)
    whole = ddim_inversion(transfer_context(clean, levels[-1], levels=levels, denoise=denoiser))
    torch.testing.assert_close(ddim_invert_up(rest), whole, atol=1e-5, rtol=0)

    from_clean = attrs.evolve(transfer_context(clean, levels[-1], levels=levels, denoise=denoiser),
                              x=clean, params={"guidance": -4.0})
    negative = ddim_inversion(transfer_context(clean, levels[-1], levels=levels, denoise=denoiser, guidance=-4.0))
    torch.testing.assert_close(ddim_invert_up(from_clean), negative, atol=1e-5, rtol=0)
    assert (negative - whole).abs().max() > 1e-3  # the guidance reached the model


def test_ddim_inversion_steps_with_guidance_are_ddim_inverse_scheduler_steps(models, registry):
    backend, text, denoiser, inverse, timesteps, levels = inversion_setup(models, registry)
    x = clean_latents(backend, 2)
    for t, sigma, sigma_up in zip(timesteps, levels, levels[1:]):
        with torch.no_grad():
            expected = inverse.step(unet_eps(backend.unet, x, t, text, 3.0), t, x).prev_sample
        context = transfer_context(x * (1 + sigma**2) ** 0.5, sigma_up, levels=(sigma, sigma_up), denoise=denoiser,
                                   guidance=3.0)
        assert_within(vp(ddim_inversion(context), sigma_up), expected, 1e-5,
                      f"ddim_inversion step to t={int(t)} vs DDIMInverseScheduler.step, guidance 3")
        x = expected


# --- the VAE's scaling factor ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae():
    vae = make_vae(1).eval()
    assert abs(vae.config.scaling_factor - 1) > 0.5  # a factor far from 1, so either direction shows
    return vae


def test_vae_encode_multiplies_by_the_scaling_factor(vae):
    frames = make_synthetic_clip(3, 64, 48)
    with torch.no_grad():
        expected = vae.encode(frames).latent_dist.mode() * vae.config.scaling_factor
    assert_within(encode_frames(vae, frames, chunk=2), expected, 1e-5, "encode_frames vs vae.encode * scaling_factor")


def test_vae_decode_divides_by_the_scaling_factor(vae):
    latents = random_latents(3, 4, 6, 8)
    with torch.no_grad():
        expected = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
    ours = decode_latents(vae, latents, chunk=2)
    # 5e-5: convolutions round differently in chunks of 2 frames than in one batch of 3
    assert_within(ours, expected, 5e-5, "decode_latents vs vae.decode(latents / scaling_factor)")
    assert (ours.abs() < 1).float().mean() > 0.5  # mostly unclamped, so the clamp cannot hide a wrong scale


# --- samplers, step by step through a real Denoiser ----------------------------------------------------------


def follow(scheduler, schedule, sampler, guidance, sigma_space, generators=False, params=None, step_options=None):
    """Run `scheduler` over `schedule`'s levels with guided_eps as the model; at every step, run our
    `sampler` from the same latent through a Denoiser and compare (its per-op state carried from step to step, as
    in a run). `sigma_space`: the scheduler's samples are our sigma-space latents (Euler); otherwise they are
    variance-preserving (DDIM, LCM, DPM-Solver). `step_options` go to scheduler.step."""
    denoiser = Denoiser(RecordingBackend(), schedule.train, TEXT, guidance)
    scheduler.set_timesteps(schedule.steps)
    x = random_latents(2, 4, 6, 8) * scheduler.init_noise_sigma
    params, state = {**sampler.parameters, **(params or {})}, {}
    for i in range(schedule.steps):
        t, sigma, sigma_next = scheduler.timesteps[i], schedule.levels[i], schedule.levels[i + 1]
        eps = guided_eps(scheduler.scale_model_input(x, t), t, guidance)
        extra = {"generator": torch.Generator().manual_seed(i)} if generators else {}
        expected = scheduler.step(eps, t, x, **extra, **(step_options or {})).prev_sample
        context = StepContext(i, schedule.levels, None, params, state, {}, torch.Generator().manual_seed(i))
        ours, _ = sampler.step(denoiser, x if sigma_space else x * (1 + sigma**2) ** 0.5, context)
        assert_within(ours if sigma_space else vp(ours, sigma_next), expected, relative(1e-5, expected),
                      f"{type(scheduler).__name__} step {i} (t={int(t)}, tolerance 1e-5 x max(1, |x|))")
        x = expected


@pytest.mark.parametrize("scheduler_name", ["ddim", "euler"])
def test_euler_sampler_is_the_sd15_scheduler_step(scheduler_name, registry):
    preset = registry.get("SD").preset
    follow(sd15_schedulers(preset)[scheduler_name], preset.sampling(betas(preset)), EULER, preset.guidance,
           sigma_space=scheduler_name == "euler")


def test_euler_sampler_is_lightnings_euler_discrete_step(registry):
    preset = registry.get("lightningEP").preset
    follow(EulerDiscreteScheduler(**scheduler_config(preset)), preset.sampling(betas(preset)), EULER, preset.guidance,
           sigma_space=True)


def test_lcm_sampler_is_the_lcm_scheduler_step(registry):
    preset = registry.get("animatelcm").preset
    follow(lcm_scheduler(preset), preset.sampling(betas(preset)), LCM, preset.guidance, sigma_space=False, generators=True)


# --- the executor's wiring between models ------------------------------------------------------------------


def test_a_model_switch_renoises_the_last_clean_estimate(registry, plugins):
    """IDM then VDM with `ddim` (re-noising): written out by hand from the schedules, the executor's trajectory."""
    spec = Spec(inputs=(InputVideo(Path("clip.mp4"), PROMPT),),
                models={"idm": ModelChoice("SD"), "vdm": ModelChoice("lightningSD")}, composition="IDM_VDM",
                settings=Settings(idm_inverse_strength=0.6, vdm_inverse_strength=0.5, vdm_invert_mode="ddim",
                                  stable_steps=(10,)))
    plan = make_plan(spec, registry, plugins)
    assert [op.strategy for op in plan.ops if isinstance(op, TransferOp)] == ["random", "ddim_renoise"]
    denoisers = {role: Denoiser(RecordingBackend(), model.schedule.train, TEXT, model.guidance)
                 for role, model in plan.models.items()}
    source = random_latents(2, 4, 6, 8, seed=4)
    ours, _ = execute(plan, denoisers, source, plugins.catalogue, torch.Generator().manual_seed(SEED))

    idm, vdm = plan.models["idm"].schedule, plan.models["vdm"].schedule
    first, stop = idm.start_level(0.6), idm.steps - 10
    x = source + idm.levels[first] * torch.randn(source.shape, generator=torch.Generator().manual_seed(SEED))
    for sigma, sigma_next in zip(idm.levels[first:stop], idm.levels[first + 1:stop + 1]):
        x, prediction = single_step(EULER, denoisers["idm"], x, sigma, sigma_next)
    first = vdm.start_level(0.5)
    x = prediction.x0 + vdm.levels[first] * prediction.eps
    for sigma, sigma_next in zip(vdm.levels[first:], vdm.levels[first + 1:]):
        x, _ = single_step(EULER, denoisers["vdm"], x, sigma, sigma_next)
    torch.testing.assert_close(ours, x, atol=1e-6, rtol=0)
