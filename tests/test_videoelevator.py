"""VideoElevator as a composition: its example's model calls as docs/videoelevator.md counts them, a run on the tiny
models with exact totals, the 3D low-pass filter, and the PnP-inversion correction."""

import math

import pytest
import torch

from evs_framework.denoiser import Prediction
from evs_framework.errors import PlanError
from evs_framework.plan import DenoiseOp, TransferOp
from evs_framework.planner import make_plan
from evs_framework.transfer import TransferContext
from evs_plugins.latent_ops import lowpass
from evs_plugins.videoelevator import pnp_correct
from tests.planning import native, run_counted


def elevator_spec(clip, steps, windows, stable_num, strength=1.0):
    return native(clip, "videoelevator", idm={"steps": steps}, vdm={"name": "animatelcm", "steps": steps},
                  stable_steps=windows, stable_num=stable_num, idm_inverse_strength=strength)


def test_the_example_costs_what_its_code_costs_without_the_overwritten_corrections(clip_file, plugins, registry):
    """30 steps, windows at 26, 21, 15 and 9 steps left, 6 T2V steps each: 30 guided T2I steps (60 passes), 21
    corrections on the prompt alone, 25 + 20 + 14 + 8 inversions on the negative prompt alone; 4 x 6 guided T2V
    steps (48 passes). The code also corrects the 3 window steps whose result the inversion replaces."""
    plan = make_plan(elevator_spec(clip_file, 30, [26, 21, 15, 9], 6), registry, plugins)
    totals = plan.totals()
    assert totals["idm"] == {"steps": 30, "inversion_steps": 21 + 67, "unet_calls": 60 + 21 + 67}
    assert totals["vdm"] == {"steps": 24, "inversion_steps": 0, "unet_calls": 48}
    filtered = [op for op in plan.ops if getattr(op, "name", None) == "lowpass"]
    assert len(filtered) == 3 and filtered[0].params == {"d_s": 1.0, "d_t": 0.6}  # not before the last window
    assert not [note for note in plan.notes if "unused" in note]


def test_it_runs_with_exact_totals(clip_file, plugins, registry, tiny_backends):
    _, backends = tiny_backends
    backends = {**backends, "vdm": tiny_backends[0].load(registry.get("animatelcm"))}
    spec = elevator_spec(clip_file, 10, [7, 4], 2)
    plan = make_plan(spec, registry, plugins)
    records, calls = run_counted(spec, plan, backends, plugins)
    assert calls == {role: t["unet_calls"] for role, t in plan.totals().items()}
    assert all(r.unet_calls == r.planned_unet_calls for r in records)


def test_windows_it_cannot_open_are_named(clip_file, plugins, registry):
    with pytest.raises(PlanError, match=r"stable_steps \[12\]: each window opens after one of the T2I's steps 5..8"):
        make_plan(elevator_spec(clip_file, 10, [12], 2, strength=0.5), registry, plugins)


def test_lowpass_keeps_the_mean_and_damps_each_frequency_by_its_gaussian_weight():
    frames, height, width = 8, 4, 4
    t = torch.arange(frames, dtype=torch.float32)
    constant = torch.full((frames, 2, height, width), 3.0)
    torch.testing.assert_close(lowpass(constant), constant)
    flicker = (-1.0) ** t  # the highest temporal frequency, f_t = -1 after the shift
    latents = flicker.view(frames, 1, 1, 1).expand(frames, 2, height, width).clone()
    weight = math.exp(-((1.0 / 0.6) ** 2) / 2)
    torch.testing.assert_close(lowpass(latents), weight * latents, rtol=1e-5, atol=1e-5)


def test_the_correction_adds_the_kept_latent_minus_the_models_step_from_the_one_above():
    seen = []

    def denoise(x, sigma, guidance=None):
        seen.append((sigma, guidance))
        return Prediction(0.5 * x, 0.25 * x)

    above, here = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 1.5)
    state = {"videoelevator": {"kept": {0.0: torch.zeros(1, 1, 2, 2), 0.5: here, 1.0: above}}}
    present = torch.ones(1, 1, 2, 2)
    ctx = TransferContext(None, None, 0.5, 0.5, (0.0, 0.5), denoise, 7.5, None, params={"guidance": 1.0},
                          video_state=state, x=present)
    step_from_above = 0.5 * above + 0.5 * (0.25 * above)  # x0 + sigma_to * eps
    torch.testing.assert_close(pnp_correct(ctx), present + here - step_from_above)
    assert seen == [(1.0, 1.0)]


def test_the_inversion_keeps_every_level_it_passes_on_the_negative_prompt():
    from evs_plugins.videoelevator import invert_and_keep

    calls = []

    def denoise(x, sigma, timestep_sigma=None, guidance=None):
        calls.append((sigma, timestep_sigma, guidance))
        return Prediction(0.5 * x, 0.1 * x + 1.0)

    clean, levels, state = torch.ones(1, 1, 2, 2), (0.0, 0.3, 0.9), {}
    ctx = TransferContext(clean, None, 0.0, 0.9, levels, denoise, 7.5, None, params={"guidance": 0.0},
                          video_state=state)
    first = clean + 0.3 * (0.1 * clean + 1.0)  # each level: x + (sigma_up - sigma) * eps at sigma_up's timestep
    second = first + 0.6 * (0.1 * first + 1.0)
    torch.testing.assert_close(invert_and_keep(ctx), second)
    assert calls == [(0.0, 0.3, 0.0), (0.3, 0.9, 0.0)]
    kept = state["videoelevator"]["kept"]
    assert sorted(kept) == [0.0, 0.3, 0.9]
    torch.testing.assert_close(kept[0.3], first)


def test_the_t2v_window_opens_at_the_same_fraction_of_its_schedule_when_step_counts_differ(clip_file, plugins,
                                                                                         registry):
    """T2I 25 steps, T2V 8: the window at 20 steps left opens after T2I step 5, a fifth of the way, where the T2V
    has taken 8 / 5 = 1.6 steps: its level 2; at 12 left, 13 / 25 of the way, 4.16: level 4."""
    spec = native(clip_file, "videoelevator", idm={"steps": 25}, vdm={"name": "animatelcm", "steps": 8},
                  stable_steps=[20, 12], stable_num=2, idm_inverse_strength=1.0)
    plan = make_plan(spec, registry, plugins)
    windows = [op for op in plan.ops if isinstance(op, DenoiseOp) and op.model == "vdm"]
    assert [op.first_level for op in windows] == [2, 4]


def test_lowpass_at_d_s_2_damps_a_mixed_frequency_by_its_gaussian_weight():
    """A wave of 1 cycle over 4 frames and 1 over 8 columns sits at normalised frequencies f_t = 1 / (4 / 2) = 0.5 and
    f_w = 1 / (8 / 2) = 0.25; with d_s = 2, d_t = 0.8 its weight is exp(-((2 / 0.8 * 0.5)^2 + 0.25^2) / (2 * 2^2))
    = exp(-(1.5625 + 0.0625) / 8)."""
    t = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    w = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 8)
    wave = (torch.cos(2 * math.pi * t / 4) * torch.cos(2 * math.pi * w / 8)).expand(4, 3, 6, 8).clone()
    torch.testing.assert_close(lowpass(wave, d_s=2.0, d_t=0.8), math.exp(-1.625 / 8) * wave, rtol=1e-5, atol=1e-5)


def test_the_correction_steps_from_the_nearest_kept_level_above_when_several_are():
    seen = []

    def denoise(x, sigma, guidance=None):
        seen.append(sigma)
        return Prediction(0.5 * x, 0.25 * x)

    kept = {sigma: torch.full((1, 1, 2, 2), value) for sigma, value in ((0.0, 0.0), (0.5, 1.5), (1.0, 2.0),
                                                                         (2.0, 3.0), (4.0, 5.0))}
    present = torch.ones(1, 1, 2, 2)
    ctx = TransferContext(None, None, 0.5, 0.5, (0.0, 0.5), denoise, 7.5, None, params={"guidance": 1.0},
                          video_state={"videoelevator": {"kept": kept}}, x=present)
    step_from_1 = 0.5 * 2.0 + 0.5 * (0.25 * 2.0)  # the kept latent at 1.0: x0 + sigma_to * eps
    torch.testing.assert_close(pnp_correct(ctx), present + 1.5 - torch.full((1, 1, 2, 2), step_from_1))
    assert seen == [1.0]


def test_the_inversion_runs_on_the_negative_prompt_alone_and_the_correction_on_the_prompt_alone(clip_file, plugins,
                                                                                                registry):
    """Its code inverts at guidance 0 (the negative prompt's embeddings) and evaluates the kept latents at guidance 1
    (docs/videoelevator.md, the inversion prompt)."""
    plan = make_plan(elevator_spec(clip_file, 10, [7, 4], 2), registry, plugins)
    guidance = {(op.strategy, op.params["guidance"]) for op in plan.ops if isinstance(op, TransferOp)
                and op.strategy in ("invert_and_keep", "pnp_correct")}
    assert guidance == {("invert_and_keep", 0.0), ("pnp_correct", 1.0)}
