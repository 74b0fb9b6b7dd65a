"""The newer families on tiny random checkpoints in their download layouts: SDXL (two text encoders, pooled text, its
VAE's scaling) and Wan 2.1 (flow matching, a 3D VAE); each read as diffusers' own pipelines read it, their schedules
stepped as diffusers' schedulers step them, and composed with other latent spaces with exact plan totals."""

import json
import types

import attrs
import pytest
import torch
import yaml

from evs_framework.denoiser import Denoiser
from evs_framework.errors import PlanError, VideoError, WeightsError
from evs_framework.hookspecs import hookimpl
from evs_framework.io import video_io
from evs_framework.latent_space import Converter
from evs_framework.loading import LoadContext, WeightSettings
from evs_framework.plan import ConvertOp
from evs_framework.planner import make_plan
from evs_framework.plugins import load_plugins
from evs_framework.predictions import from_flow, from_sample, from_v
from evs_framework.registry import load_registry
from evs_framework.runner import run_job
from evs_framework.sampler import single_step
from evs_framework.schedules import BetaSchedule, FlowMatchingSchedule, ModelSchedule
from evs_framework.spec import spec_from_data
from evs_framework.testing.families import SDXL_FOLDER, WAN_FOLDER, write_tiny_sdxl, write_tiny_wan
from evs_framework.testing.zoo import make_synthetic_clip
from evs_plugins.samplers import EULER

PROMPT = "a red ball moving slowly"


@pytest.fixture(scope="module")
def family_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    write_tiny_sdxl(root / SDXL_FOLDER)
    write_tiny_wan(root / WAN_FOLDER)
    return root


@pytest.fixture(scope="module")
def family_context(plugins, registry, family_weights, zoo):
    return LoadContext(plugins, registry, WeightSettings([family_weights, zoo]), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def clip_9x64x32(tmp_path_factory):
    """9 frames (1 + 4k, as Wan's VAE takes them), 64x32 (multiples of 16, as its transformer's patches need)."""
    return video_io.write_video(tmp_path_factory.mktemp("clip9") / "ball.mp4", make_synthetic_clip(9, 64, 32), 8.0)


def test_sdxl_reads_prompts_and_sizes_as_the_sdxl_pipeline_does(family_context, registry):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    backend = family_context.load(registry.get("SDXL"))
    parts = backend.parts
    pipe = StableDiffusionXLPipeline(parts.vae, parts.text_encoder, parts.text_encoder_2, parts.tokenizer,
                                     parts.tokenizer_2, parts.unet, EulerDiscreteScheduler())
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=True,
                                                                   negative_prompt="")
    ours = backend.encode_prompts(["", PROMPT])
    torch.testing.assert_close(ours.embeds, torch.cat([negative, embeds]))
    torch.testing.assert_close(ours.pooled, torch.cat([negative_pooled, pooled]))

    x = torch.randn(1, 2, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    time_ids = pipe._get_add_time_ids((48, 64), (0, 0), (48, 64), torch.float32,
                                      text_encoder_projection_dim=parts.text_encoder_2.config.projection_dim)
    expected = parts.unet(x[0], 500, encoder_hidden_states=embeds.expand(2, -1, -1),
                          added_cond_kwargs={"text_embeds": pooled.expand(2, -1), "time_ids": time_ids.expand(2, -1)}).sample
    torch.testing.assert_close(backend.predict(x, 500, ours[1:2])[0], expected)
    assert backend.codec.space.scaling == 0.13025 and backend.codec.space.name == "sdxl"


def test_wan_reads_prompts_and_video_as_the_wan_pipelines_do(family_context, registry):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    backend = family_context.load(registry.get("wan2.1-1.3B"))
    parts = backend.parts
    pipe = WanPipeline(parts.tokenizer, parts.text_encoder, parts.vae, FlowMatchEulerDiscreteScheduler(), parts.transformer)
    expected = pipe._get_t5_prompt_embeds([PROMPT, "a blue car"], max_sequence_length=512, device=torch.device("cpu"))
    torch.testing.assert_close(backend.encode_prompts([PROMPT, "a blue car"]), expected)

    frames = make_synthetic_clip(9, 64, 32)
    latents = backend.codec.encode(frames, chunk=4)
    assert latents.shape == (3, 16, 4, 8)  # 1 + 4k frames -> 1 + k latent frames, 8x smaller, 16 channels
    config = parts.vae.config  # normalised as pipeline_wan_video2video normalises
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    raw = parts.vae.encode(frames.permute(1, 0, 2, 3)[None]).latent_dist.mode()
    torch.testing.assert_close(latents, ((raw - mean) / std)[0].permute(1, 0, 2, 3), rtol=1e-5, atol=1e-5)
    decoded = backend.codec.decode(latents, chunk=4)
    assert decoded.shape == frames.shape and decoded.abs().max() <= 1


def fake_velocity(x, timestep):
    return 0.3 * x + 1e-3 * timestep


def test_flow_matching_steps_are_flow_match_euler_steps():
    """sigma = t / (1 - t), the input divided by 1 + sigma, velocity read as eps - x0: Euler in sigma space is
    FlowMatchEulerDiscreteScheduler's step on the same t grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    schedule = ModelSchedule(FlowMatchingSchedule(shift=3.0), 6, "trailing")
    # the grid worked out here: t = 1, 5/6, ..., 1/6 bent by shift 3 (3t / (1 + 2t)); t = 1 stops at the betas'
    # terminal sigma 2^12 (alpha_cumprod 2^-24), t = 1 / (1 + 2^-12)
    grid = [3 * t / (1 + 2 * t) for t in (1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6)]
    ts = [1 / (1 + 2**-12)] + grid[1:]
    assert [s / (1 + s) for s in schedule.levels[:-1]] == pytest.approx(ts, rel=1e-9)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)  # the grid is already shifted
    scheduler.set_timesteps(sigmas=ts)

    seen = []

    class Backend:
        def predict(self, x, timestep, text):
            seen.append(timestep)
            return fake_velocity(x, timestep)

    denoiser = Denoiser(Backend(), schedule.train, torch.zeros(2, 1, 1), 1.0, from_flow)
    x_flow = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    for i, (sigma, sigma_next) in enumerate(zip(schedule.levels, schedule.levels[1:])):
        expected = scheduler.step(fake_velocity(x_flow, float(scheduler.timesteps[i])), scheduler.timesteps[i],
                                  x_flow).prev_sample
        x_next, _ = single_step(EULER, denoiser, x_flow * (1 + sigma), sigma, sigma_next)
        torch.testing.assert_close(x_next / (1 + sigma_next), expected, rtol=1e-5, atol=1e-5)
        assert seen[-1] == pytest.approx(float(scheduler.timesteps[i]), rel=1e-5)
        x_flow = expected
    assert ts[0] < 1 and schedule.levels[0] < 5000  # t = 1 stops at a finite sigma


@pytest.mark.parametrize("prediction, convert, zero_terminal_snr", [("v_prediction", from_v, True),
                                                                     ("sample", from_sample, False)])
def test_v_and_sample_predictions_step_as_ddim_does(prediction, convert, zero_terminal_snr):
    """v read as a eps - s x0 (with rescaled betas, zero terminal SNR) and a predicted sample: Euler (DDIM, eta 0)
    steps are DDIMScheduler's. With zero terminal SNR the pure-noise first level is finite here (diffusers has alpha
    0 there) and lands within 1e-3."""
    from diffusers import DDIMScheduler

    schedule = ModelSchedule(BetaSchedule("scaled_linear", zero_terminal_snr=zero_terminal_snr), 10, "trailing")
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              rescale_betas_zero_snr=zero_terminal_snr, prediction_type=prediction,
                              timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(10)
    assert list(scheduler.timesteps) == list(schedule.timesteps)

    class Backend:
        def predict(self, x, timestep, text):
            return fake_velocity(x, timestep)

    denoiser = Denoiser(Backend(), schedule.train, torch.zeros(2, 1, 1), 1.0, convert)
    ac = scheduler.alphas_cumprod
    x_vp = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    for i, (sigma, sigma_next) in enumerate(zip(schedule.levels, schedule.levels[1:])):
        t = int(scheduler.timesteps[i])
        expected = scheduler.step(fake_velocity(x_vp, t), t, x_vp).prev_sample
        x_next, _ = single_step(EULER, denoiser, x_vp * (1 + sigma**2) ** 0.5, sigma, sigma_next)
        prev_ac = float(ac[int(scheduler.timesteps[i + 1])]) if i + 1 < 10 else 1.0
        tolerance = 1e-3 if i == 0 and zero_terminal_snr else 1e-5
        torch.testing.assert_close(x_next * prev_ac**0.5, expected, rtol=tolerance, atol=tolerance)
        x_vp = expected


def test_cosine_betas_and_the_flow_shift_are_diffusers():
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    cosine = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(BetaSchedule("squaredcos_cap_v2").alphas_cumprod.float(), cosine.alphas_cumprod,
                               rtol=1e-5, atol=1e-7)
    steps = 6
    shifted = FlowMatchEulerDiscreteScheduler(shift=3.0)  # shifts the sigmas it is given
    shifted.set_timesteps(sigmas=[1 - i / steps for i in range(steps)])
    ours = FlowMatchingSchedule(shift=3.0).sampling_timesteps(steps)
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float32), shifted.timesteps, rtol=1e-6, atol=1e-3)


def test_a_vae_shift_factor_is_taken_off_before_scaling_and_put_back(zoo):
    from diffusers import AutoencoderKL

    from evs_framework.io.vae import FrameCodec, decode_latents, encode_frames, frame_vae_space

    vae = AutoencoderKL.from_pretrained(zoo / "stable-diffusion-v1-5", subfolder="vae")
    vae.register_to_config(shift_factor=0.25, scaling_factor=0.5)
    frames = make_synthetic_clip(2, 64, 48)
    raw = vae.encode(frames).latent_dist.mode()
    latents = encode_frames(vae, frames, chunk=2)
    torch.testing.assert_close(latents, (raw - 0.25) * 0.5)
    torch.testing.assert_close(decode_latents(vae, latents, chunk=2), vae.decode(raw).sample.clamp(-1, 1),
                               rtol=1e-4, atol=1e-4)
    assert FrameCodec(vae, frame_vae_space("x", vae)).space.shift == 0.25


def cross_space_spec(clip, idm, out, composition="IDM_VDM_IDM", vdm="wan2.1-1.3B", **video):
    return spec_from_data({
        "inputs": [{"video": str(clip), "prompt": PROMPT}],
        "models": {"idm": {"name": idm, "steps": 6}, "vdm": {"name": vdm, "steps": 6}},
        "composition": composition, "seed": 3, "video": {"max_frames": 9, **video}, "output": {"dir": str(out)},
        "settings": {"stable_steps": [2], "stable_num": 2, "idm_invert_mode": "random", "vdm_invert_mode": "random",
                     "idm_invert_mode_2": "ddim", "idm_inverse_strength": 0.5, "vdm_inverse_strength": 0.5},
    }, source="test")


@pytest.mark.parametrize("idm", ["SDXL", "SD"])
def test_a_t2i_and_wan_compose_across_latent_spaces_with_exact_totals(idm, clip_9x64x32, tmp_path, plugins, registry,
                                                                    family_context):
    spec = cross_space_spec(clip_9x64x32, idm, tmp_path)
    plan = make_plan(spec, registry, plugins)
    converts = [op for op in plan.ops if isinstance(op, ConvertOp)]
    space = registry.get(idm).preset.latent_space.name
    assert [(op.source_space, op.target_space) for op in converts] == [(space, "wan2.1"), ("wan2.1", space)]
    assert plan.source_model == plan.output_model == "idm"

    [result] = run_job(spec, plan, family_context, progress=False)
    assert result.error is None
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["unet_calls"] == {role: t["unet_calls"] for role, t in plan.totals().items()}
    assert sidecar["unplanned_calls"] == [] and [r["op"] for r in sidecar["ops"]].count("ConvertOp") == 2
    frames = video_io.read_video(result.output, max_frames=None).frames
    assert frames.shape == (9, 3, 32, 64)


def test_a_clip_wan_cannot_take_is_refused_before_loading_with_the_fix(clip_file, tmp_path, plugins, registry,
                                                                      family_context):
    spec = cross_space_spec(clip_file, "SD", tmp_path, max_frames=8, size=[72, 40])
    with pytest.raises(VideoError) as error:
        run_job(spec, make_plan(spec, registry, plugins), family_context, progress=False)
    assert "set video.max_frames to 5" in str(error.value) and "set video.size to 64x32" in str(error.value)


class Plugin(types.SimpleNamespace):
    """A plugin as a module object: hook implementations as attributes."""


def test_plugins_add_noise_schedules_and_cheaper_converters(clip_9x64x32, tmp_path, registry, family_weights, zoo):
    converted = []

    def shrink(latents, source, target):
        converted.append(latents.shape)
        return torch.zeros(3, 16, latents.shape[-2], latents.shape[-1])  # 9 frames -> Wan's 3 latent frames

    @hookimpl
    def register_noise_schedules(register):
        register("flow_shifted_twice", lambda preset: FlowMatchingSchedule(2 * preset.schedule_params["shift"]))

    @hookimpl
    def register_latent_converters(register):
        register("straight_to_wan", Converter("straight_to_wan", "sd1", "wan2.1", "no VAE at all", shrink))

    plugins = load_plugins([Plugin(register_noise_schedules=register_noise_schedules,
                                   register_latent_converters=register_latent_converters)])
    user_registry = tmp_path / "models.yaml"
    wan = registry.get("wan2.1-1.3B")
    user_registry.write_text(yaml.safe_dump({"models": {"wan-twice": {
        "kind": "wan", "type": "t2v", "weights": {"local": wan.weights.local},
        "preset": {"schedule": "flow_shifted_twice", "schedule_params": {"shift": 2.0}, "prediction": "flow",
                   "steps": 6, "latent_space": {"name": "wan2.1", "channels": 16, "spatial": 8, "temporal": 4,
                                                "size_multiple": 16}}}}}))
    registry = load_registry([user_registry], plugins)
    spec = cross_space_spec(clip_9x64x32, "SD", tmp_path, composition="IDM_VDM", vdm="wan-twice")
    plan = make_plan(spec, registry, plugins)
    assert plan.models["vdm"].schedule.levels[:-1] == ModelSchedule(FlowMatchingSchedule(4.0), 6).levels[:-1]
    [convert] = [op for op in plan.ops if isinstance(op, ConvertOp)]
    assert (convert.converter, convert.cost) == ("straight_to_wan", "no VAE at all")

    context = LoadContext(plugins, registry, WeightSettings([family_weights, zoo]), torch.device("cpu"), torch.float32)
    [result] = run_job(spec, plan, context, progress=False)
    assert result.error is None and converted == [(9, 4, 4, 8)]

    with pytest.raises(PlanError, match="noise schedule 'no_such_schedule', which no loaded plugin provides"):
        make_plan(spec, with_preset(registry, "wan-twice", schedule="no_such_schedule"), plugins)
    with pytest.raises(PlanError, match="schedule 'flow_matching' takes no parameter 'shfit'; it takes shift"):
        make_plan(spec, with_preset(registry, "wan-twice", schedule="flow_matching", schedule_params={"shfit": 3.0}),
                  plugins)


def with_preset(registry, name, **changes):
    """The registry with model `name`'s preset changed."""
    entry = registry.get(name)
    entries = {**registry.entries, name: attrs.evolve(entry, preset=attrs.evolve(entry.preset, **changes))}
    return attrs.evolve(registry, entries=entries)


def test_sd15_with_animatediff_needs_no_conversion_and_injection_stays_in_one_space(clip_9x64x32, tmp_path, plugins,
                                                                                  registry):
    from tests.planning import native

    assert not [op for op in make_plan(native(clip_9x64x32), registry, plugins).ops if isinstance(op, ConvertOp)]
    spec = attrs.evolve(cross_space_spec(clip_9x64x32, "SD", tmp_path), using_attn=True)
    make_plan(spec, registry, plugins)  # by default the T2I alone receives its features
    spec = attrs.evolve(spec, injection=attrs.evolve(spec.injection, models=("idm", "vdm")))
    with pytest.raises(PlanError, match=r"\['vdm'\] work in another latent space than the T2I \(sd1\)"):
        make_plan(spec, registry, plugins)


def test_a_registry_that_misdeclares_a_latent_space_is_refused_at_load(clip_9x64x32, tmp_path, plugins, registry,
                                                                       family_context):
    space = registry.get("wan2.1-1.3B").preset.latent_space
    wrong = with_preset(registry, "wan2.1-1.3B", latent_space=attrs.evolve(space, channels=4))
    spec = cross_space_spec(clip_9x64x32, "SD", tmp_path)
    context = attrs.evolve(family_context, registry=wrong)
    with pytest.raises(WeightsError, match=r"declares latent space 'wan2.1' with channels 4 \(its VAE has 16\)"):
        run_job(spec, make_plan(spec, wrong, plugins), context, progress=False)
