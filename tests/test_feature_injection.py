"""Selective Feature Injection (using_attn): reconstruction, no-op settings, restored models, cache accounting."""

import re

import pytest
import torch

from evs_framework.errors import PlanError
from evs_framework.planner import make_plan
from evs_framework.runner import VideoRun, load_backends, make_denoisers, run_plan
from evs_framework.spec import spec_from_data
from evs_framework.io.vae import encode_frames
from evs_framework.testing.zoo import make_synthetic_clip

ALL_SELF_ATTENTION = ["*attn1"]
PROMPT = "a red ball rolling on grass"


def inversion_spec(**injection):
    """DDIM-invert the source with the T2I model to strength 0.6, then denoise it back with the same prompt."""
    return spec_from_data({
        "inputs": [{"video": "unused.mp4", "prompt": PROMPT}],
        "models": {"idm": {"name": "SD", "guidance": 1.0, "steps": 20}},
        "composition": {"stages": [{"model": "idm", "enter": "ddim_inversion", "start": 0.6, "stop": "end"}]},
        "using_attn": bool(injection),
        **({"injection": injection} if injection else {}),
    })


@pytest.fixture(scope="module")
def source(zoo):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(zoo / "stable-diffusion-v1-5", subfolder="vae")
    return encode_frames(vae, make_synthetic_clip(frames=4, width=96, height=64), chunk=4)


def run(spec, source, plugins, registry, context):
    plan = make_plan(spec, registry, plugins)
    backends = load_backends(plan, context)
    denoisers = make_denoisers(plan, backends, PROMPT, spec.negative_prompt, plugins.catalogue)
    video = VideoRun(spec, plan, backends, denoisers, source, torch.Generator().manual_seed(0), plugins.catalogue,
                     context.device)
    latents, _, _ = run_plan(video, plugins.hook)
    return latents, video, plan


def test_injecting_the_inversions_own_features_reconstructs_the_source_better(source, plugins, registry, context):
    plain, _, _ = run(inversion_spec(), source, plugins, registry, context)
    injected, video, _ = run(inversion_spec(layers=ALL_SELF_ATTENTION, window=[0.0, 1.0]), source, plugins, registry,
                             context)
    error_plain = (plain - source).pow(2).mean().item()
    error_injected = (injected - source).pow(2).mean().item()
    assert video.report["feature_injection"]["levels"] == 12  # strength 0.6 of 20 steps, every step injected
    # Random-weight UNets invert poorly and their self-attention carries little of the signal, so the gain is small:
    # measured 0.11617 without and 0.11533 with injection (mean squared latent error). Demand 2e-4 of it.
    assert error_injected < error_plain - 2e-4, (error_injected, error_plain)


def test_attention_maps_work_too(source, plugins, registry, context):
    plain, _, _ = run(inversion_spec(), source, plugins, registry, context)
    injected, video, _ = run(inversion_spec(features="attention_maps", layers=ALL_SELF_ATTENTION, window=[0.0, 1.0]),
                             source, plugins, registry, context)
    assert video.report["feature_injection"]["cache_bytes"] > 0
    # measured 0.11617 without and 0.11330 with injected attention maps; demand 1e-3 of it
    assert (injected - source).pow(2).mean() < (plain - source).pow(2).mean() - 1e-3


@pytest.mark.parametrize("injection, named", [({"layers": ["no.such.layer"]}, "match no self-attention layer"),
                                              ({"window": [0.5, 0.5]}, "window: [0.5, 0.5] selects none"),
                                              ({"steps": [40]}, "steps: [40] selects none")],
                         ids=["no_layers", "empty_window", "steps_beyond_the_run"])
def test_injection_that_selects_nothing_is_refused(source, plugins, registry, context, injection, named):
    with pytest.raises(PlanError, match=re.escape(named)):
        run(inversion_spec(**injection), source, plugins, registry, context)


def test_models_are_exactly_as_before_after_a_run_with_injection(source, plugins, registry, context):
    unet = context.load(registry.get("SD")).unet
    processors = dict(unet.attn_processors)
    sample, text = torch.randn(2, 4, 8, 12), torch.randn(2, 77, 32)
    with torch.no_grad():
        before = unet(sample, 500, encoder_hidden_states=text).sample
    run(inversion_spec(layers=ALL_SELF_ATTENTION, window=[0.0, 1.0]), source, plugins, registry, context)
    assert unet.attn_processors == processors  # the very same processor objects are back
    with torch.no_grad():
        assert torch.equal(unet(sample, 500, encoder_hidden_states=text).sample, before)


def test_a_cache_over_its_limit_stops_with_the_number(source, plugins, registry, context):
    from evs_framework.errors import EVSError

    with pytest.raises(EVSError, match=r"limit of 0\.00 GiB \(injection.max_cache_gib\)"):
        run(inversion_spec(layers=ALL_SELF_ATTENTION, max_cache_gib=1e-6), source, plugins, registry, context)
    unet = context.load(registry.get("SD")).unet
    assert not [p for p in unet.attn_processors.values() if type(p).__name__ == "InjectionProcessor"]


@pytest.mark.parametrize("features", ["kv", "attention_maps"])
def test_the_cache_size_in_the_plan_is_what_the_run_holds(features, seed_config, tmp_path, plugins, registry, context):
    import json

    from evs_framework.plan_text import format_plan
    from evs_framework.runner import run_job
    from evs_framework.spec import load_spec

    config = seed_config()  # the seed's example: using_attn with the default layers and window, x2 upscale
    data = json.loads(config.read_text())
    native = {"inputs": [{"video": data["mp4_files"][0], "prompt": data["prompts"][0]}],
              "models": {"idm": {"name": "EP", "upscale": 2.0}, "vdm": {"name": "lightningEP"}},
              "using_attn": True, "injection": {"features": features, "layers": ALL_SELF_ATTENTION},
              "output": {"dir": str(tmp_path / "out")}}
    (tmp_path / "spec.json").write_text(json.dumps(native))
    spec = load_spec(tmp_path / "spec.json")
    plan = make_plan(spec, registry, plugins, context)
    [extra] = plan.extras
    assert extra.memory_bytes > 0 and f"holds {extra.memory_bytes / 2**20:.1f} MiB" in format_plan(plan)
    [result] = run_job(spec, plan, context, progress=False)
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["plugins"]["feature_injection"]["cache_bytes"] == extra.memory_bytes


def test_a_plan_over_the_cache_limit_is_refused_with_the_number(seed_config, plugins, registry, context):
    from evs_framework.errors import PlanError
    from evs_framework.spec import load_spec

    video = load_spec(seed_config()).inputs[0].video
    tight = spec_from_data({"inputs": [{"video": str(video), "prompt": PROMPT}],
                            "models": {"idm": {"name": "EP", "upscale": 2.0}, "vdm": {"name": "lightningEP"}},
                            "using_attn": True, "injection": {"max_cache_gib": 1e-4}})
    with pytest.raises(PlanError, match=r"would hold 0\.0\d+ GiB, over its limit of 0\.0001 GiB"):
        make_plan(tight, registry, plugins, context)


def test_a_composition_without_the_t2i_model_says_injection_is_off(seed_config, plugins, registry, context):
    from evs_framework.plan_text import format_plan
    from evs_framework.runner import run_job
    from evs_framework.spec import load_spec

    spec = load_spec(seed_config(pipeline_mode="VDM"))
    plan = make_plan(spec, registry, plugins, context)
    assert "using_attn is off here" in format_plan(plan) and plan.totals()["vdm"]["unet_calls"] == 3
    [result] = run_job(spec, plan, context, progress=False)
    assert result.error is None
