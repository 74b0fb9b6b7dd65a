"""Mutation pass over the sampling math: does every one-line bug fail a test?

Each mutation is an exact string replacement in one source file. For each, the script applies it, runs the
tests named as pinning it (one process, no workers: the pass stays cheap on a shared machine), restores the file (in a `finally`, so also on Ctrl-C or SIGTERM) and writes one JSON line:
caught (some test failed, and which) or survived. It works on a private copy of the tree unless `--tree` names
one, because other people run tests in the shared checkout while this runs.

    python bench/mutations.py [--out bench/results/mutations-DATE.jsonl] [--only NAME,...] [--tree PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parent.parent
TESTS = ("tests/test_parity.py", "tests/test_sigmas.py", "tests/test_inversion.py", "tests/test_lcm.py",
         "tests/test_samplers.py")
TIMEOUT_S = 600


@attrs.frozen
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...] = TESTS  # the tests that pin what it breaks


DENOISER, SIGMAS = "evs_framework/denoiser.py", "evs_framework/schedules.py"
EXECUTOR, VAE = "evs_framework/executor.py", "evs_framework/io/vae.py"
SAMPLERS, TRANSFERS = "plugins/samplers.py", "plugins/transfers.py"
LATENT_OPS, ELEVATOR, PREDICTIONS = "plugins/latent_ops.py", "plugins/videoelevator.py", "evs_framework/predictions.py"
FORMULAS, ELEVATOR_TESTS = "tests/test_formulas.py", "tests/test_videoelevator.py"
UPSCALE_TEST = f"{FORMULAS}::test_upscale_is_torch_interpolate_in_its_mode_with_unaligned_corners"
HAND_OVER_TEST = f"{FORMULAS}::test_a_hand_over_above_sigma_0_changes_the_clean_estimate_and_inverts_it_from_sigma_0"
AGREEMENT_TEST = f"{FORMULAS}::test_each_sampler_returns_a_prediction_that_agrees_with_its_latent"
STRENGTH_TEST = f"{FORMULAS}::test_a_strength_starts_where_diffusers_img2img_and_video_to_video_start"
LOWPASS_TESTS = (f"{ELEVATOR_TESTS}::test_lowpass_keeps_the_mean_and_damps_each_frequency_by_its_gaussian_weight",
                 f"{ELEVATOR_TESTS}::test_lowpass_at_d_s_2_damps_a_mixed_frequency_by_its_gaussian_weight")
CORRECTION_TESTS = (f"{ELEVATOR_TESTS}::test_the_correction_adds_the_kept_latent_minus_the_models_step_from_the_one_above",
                    f"{ELEVATOR_TESTS}::test_the_correction_steps_from_the_nearest_kept_level_above_when_several_are")
WINDOW_TEST = (f"{ELEVATOR_TESTS}::test_the_t2v_window_opens_at_the_same_fraction_of_its_schedule_when_step_counts_"
               "differ")
FLOW_TESTS = ("tests/test_families.py::test_flow_matching_steps_are_flow_match_euler_steps",
              "tests/test_families.py::test_cosine_betas_and_the_flow_shift_are_diffusers")
PREDICTION_TESTS = ("tests/test_families.py::test_v_and_sample_predictions_step_as_ddim_does", *FLOW_TESTS)
DPMPP_TESTS = ("tests/test_samplers.py::test_dpmpp_2m_is_diffusers_dpm_solver_plus_plus_2m",
               "tests/test_samplers.py::test_second_order_samplers_converge_at_second_order")

MUTATIONS = (
    Mutation("guidance_cond_plus_scaled_difference", DENOISER,
             "output = uncond + guidance * (cond - uncond)",
             "output = cond + guidance * (cond - uncond)",
             ("tests/test_parity.py::test_idm_only_equals_img2img_pipeline[ddim]",
              "tests/test_parity.py::test_idm_only_equals_img2img_pipeline[euler]",
              "tests/test_parity.py::test_vdm_only_animatelcm_equals_animatediff_video_to_video_with_lcm")),
    Mutation("guidance_one_uses_negative_prompt", DENOISER,
             "row = int(guidance)",
             "row = 0",
             ("tests/test_parity.py::test_vdm_only_lightning_equals_animatediff_video_to_video_with_euler",
              "tests/test_parity.py::test_guidance_one_is_one_call_with_the_positive_prompt[1.0]",
              "tests/test_parity.py::test_guidance_one_is_one_call_with_the_positive_prompt[7.5]")),
    Mutation("input_scaling_removed", DENOISER,
             "x_in = (x / divisor)[None]",
             "x_in = x[None]",
             ("tests/test_lcm.py::test_one_lcm_step_equals_lcm_scheduler_step[3]",
              "tests/test_lcm.py::test_one_lcm_step_equals_lcm_scheduler_step[7]",
              "tests/test_lcm.py::test_boundary_scalings_near_timestep_zero[1]")),
    Mutation("timestep_sigma_ignored", DENOISER,
             "t = self.timestep(sigma if timestep_sigma is None else timestep_sigma)",
             "t = self.timestep(sigma)",
             ("tests/test_inversion.py::test_inversion_reconstructs_with_an_exact_denoiser[scaled_linear]",
              "tests/test_inversion.py::test_inversion_reconstructs_with_an_exact_denoiser[linear]",
              "tests/test_parity.py::test_ddim_inversion_equals_ddim_inverse_scheduler")),
    Mutation("timestep_off_by_one", SIGMAS,
             "return low + min(max(weight, 0.0), 1.0)",
             "return high + min(max(weight, 0.0), 1.0)",
             ("tests/test_sigmas.py::test_timestep_at_inverts_sigma_at",
              "tests/test_lcm.py::test_one_lcm_step_equals_lcm_scheduler_step[3]",
              "tests/test_lcm.py::test_one_lcm_step_equals_lcm_scheduler_step[7]")),
    Mutation("sigma_at_off_by_one", SIGMAS,
             "return float(self.sigmas[int(timestep)])",
             "return float(self.sigmas[int(timestep) - 1])",
             ("tests/test_sigmas.py::test_the_two_schedules_differ_at_the_same_timestep",
              "tests/test_sigmas.py::test_timestep_at_inverts_sigma_at",
              "tests/test_sigmas.py::test_one_sigma_step_equals_ddim_step")),
    Mutation("leading_spacing_drops_steps_offset", SIGMAS,
             "ts = [i * ratio + steps_offset for i in range(steps)]",
             "ts = [i * ratio for i in range(steps)]",
             ("tests/test_sigmas.py::test_sampling_timesteps_match_diffusers[leading-50-1]",
              "tests/test_parity.py::test_idm_only_equals_img2img_pipeline[ddim]",
              "tests/test_parity.py::test_idm_only_equals_img2img_pipeline[euler]")),
    Mutation("trailing_spacing_off_by_one", SIGMAS,
             "ts = [round(train_steps - i * ratio) - 1 for i in range(steps)]",
             "ts = [round(train_steps - i * ratio) for i in range(steps)]",
             ("tests/test_sigmas.py::test_sampling_timesteps_match_diffusers[trailing-8-0]",
              "tests/test_sigmas.py::test_lightning_levels_are_the_trained_ones",
              "tests/test_sigmas.py::test_one_sigma_step_equals_euler_discrete_step")),
    Mutation("strength_runs_one_more_step", SIGMAS,
             "return steps - min(int(steps * strength), steps)",
             "return steps - min(int(steps * strength) + 1, steps)",
             ("tests/test_sigmas.py::test_start_level_follows_img2img_strength",
              "tests/test_parity.py::test_idm_only_equals_img2img_pipeline[ddim]",
              "tests/test_parity.py::test_idm_only_equals_img2img_pipeline[euler]")),
    Mutation("euler_uses_sigma_not_sigma_next", SAMPLERS,
             "return prediction.x0 + ctx.sigma_next * prediction.eps, prediction",
             "return prediction.x0 + ctx.sigma * prediction.eps, prediction",
             ("tests/test_sigmas.py::test_one_sigma_step_equals_ddim_step",
              "tests/test_sigmas.py::test_one_sigma_step_equals_euler_discrete_step",
              "tests/test_inversion.py::test_inversion_reconstructs_with_an_exact_denoiser[scaled_linear]")),
    Mutation("lcm_c_skip_c_out_swapped", SAMPLERS,
             "denoised = c_out * prediction.x0 + c_skip * (x / math.sqrt(1.0 + sigma**2))",
             "denoised = c_skip * prediction.x0 + c_out * (x / math.sqrt(1.0 + sigma**2))",
             ("tests/test_lcm.py::test_one_lcm_step_equals_lcm_scheduler_step[3]",
              "tests/test_lcm.py::test_one_lcm_step_equals_lcm_scheduler_step[7]",
              "tests/test_lcm.py::test_boundary_scalings_near_timestep_zero[1]")),
    Mutation("lcm_skip_term_in_sigma_space", SAMPLERS,
             "c_skip * (x / math.sqrt(1.0 + sigma**2))",
             "c_skip * x",
             ("tests/test_lcm.py::test_boundary_scalings_near_timestep_zero[0]",)),
    Mutation("lcm_noise_at_sigma_not_sigma_next", SAMPLERS,
             "denoised + sigma_next * fresh_noise(x, ctx.generator)",
             "denoised + sigma * fresh_noise(x, ctx.generator)",
             ("tests/test_lcm.py::test_one_lcm_step_equals_lcm_scheduler_step[3]",
              "tests/test_parity.py::test_vdm_only_animatelcm_equals_animatediff_video_to_video_with_lcm",
              "tests/test_parity.py::test_lcm_sampler_is_the_lcm_scheduler_step")),
    Mutation("ddim_fresh_noise_ignores_the_step", SAMPLERS,
             "fresh = eta * sigma_next * math.sqrt(max(0.0, 1 - sigma_next**2 / sigma**2))",
             "fresh = eta * sigma_next",
             ("tests/test_samplers.py::test_ddim_with_eta_is_the_ddim_scheduler_step",)),
    Mutation("dpmpp_2m_stays_first_order", SAMPLERS,
             'x0 = (1 + 1 / (2 * r)) * prediction.x0 - (1 / (2 * r)) * previous["x0"]',
             "x0 = prediction.x0",
             ("tests/test_samplers.py::test_dpmpp_2m_is_diffusers_dpm_solver_plus_plus_2m",
              "tests/test_samplers.py::test_second_order_samplers_converge_at_second_order[dpmpp_2m]")),
    Mutation("heun_drops_the_second_slope", SAMPLERS,
             "x_next = x + (ctx.sigma_next - ctx.sigma) * (first.eps + second.eps) / 2",
             "x_next = x + (ctx.sigma_next - ctx.sigma) * first.eps",
             ("tests/test_samplers.py::test_second_order_samplers_converge_at_second_order[heun]",)),
    Mutation("heun_declares_one_call_a_step", SAMPLERS,
             "return 1 if sigma_next == 0 else 2",
             "return 1",
             ("tests/test_samplers.py::test_a_spec_chooses_the_sampler_and_its_parameters_per_model",
              "tests/test_samplers.py::test_plan_totals_are_the_calls_every_sampler_and_transfer_makes[IDM]",
              "tests/test_samplers.py::test_plan_totals_are_the_calls_every_sampler_and_transfer_makes[VDM]")),
    Mutation("random_transfer_variance_preserving", TRANSFERS,
             "return ctx.clean + ctx.sigma_to * fresh_noise(ctx.clean, ctx.generator)",
             "return (ctx.clean + ctx.sigma_to * fresh_noise(ctx.clean, ctx.generator)) / (1 + ctx.sigma_to**2) ** 0.5",
             ("tests/test_parity.py::test_idm_only_equals_img2img_pipeline[ddim]",
              "tests/test_parity.py::test_idm_only_equals_img2img_pipeline[euler]",
              "tests/test_parity.py::test_vdm_only_lightning_equals_animatediff_video_to_video_with_euler")),
    Mutation("ddim_renoise_to_sigma_from", TRANSFERS,
             "return ctx.clean + ctx.sigma_to * ctx.eps",
             "return ctx.clean + ctx.sigma_from * ctx.eps",
             ("tests/test_parity.py::test_ddim_renoise_is_the_ddim_step_to_the_target_level",
              "tests/test_parity.py::test_a_model_switch_renoises_the_last_clean_estimate")),
    Mutation("inversion_at_lower_levels_timestep", TRANSFERS,
             "timestep_sigma=sigma_up",
             "timestep_sigma=sigma",
             ("tests/test_inversion.py::test_inversion_reconstructs_with_an_exact_denoiser[scaled_linear]",
              "tests/test_inversion.py::test_inversion_reconstructs_with_an_exact_denoiser[linear]",
              "tests/test_parity.py::test_ddim_inversion_equals_ddim_inverse_scheduler")),
    Mutation("inversion_step_from_zero", TRANSFERS,
             "x = x + (sigma_up - sigma) * prediction.eps",
             "x = x + sigma_up * prediction.eps",
             ("tests/test_inversion.py::test_inversion_reconstructs_with_an_exact_denoiser[scaled_linear]",
              "tests/test_inversion.py::test_inversion_reconstructs_with_an_exact_denoiser[linear]",
              "tests/test_inversion.py::test_inversion_beats_fresh_noise_with_a_real_unet")),
    Mutation("vae_decode_multiplies", VAE,
             "scaled = latents / vae.config.scaling_factor",
             "scaled = latents * vae.config.scaling_factor",
             ("tests/test_parity.py::test_vae_decode_divides_by_the_scaling_factor",)),
    Mutation("vae_encode_divides", VAE,
             "(torch.cat(latents) - shift) * vae.config.scaling_factor",
             "(torch.cat(latents) - shift) / vae.config.scaling_factor",
             ("tests/test_parity.py::test_vae_encode_multiplies_by_the_scaling_factor",)),
    Mutation("vae_float16_overflow_kept", VAE,
             "if param.dtype != torch.float16 or bool(torch.isfinite(out).all()):",
             "if True:", ("tests/test_acceleration.py",)),
    Mutation("vae_chunks_ignore_precision", VAE,
             "CHUNK_PIXEL_BYTES // (height * width * element_size)",
             "CHUNK_PIXEL_BYTES // (height * width * 2)", ("tests/test_acceleration.py",)),
    Mutation("timestep_rounded_on_the_device", "plugins/sd15.py",
             "torch.full((), timestep, dtype=torch.float32",
             "torch.full((), round(timestep), dtype=torch.float32", ("tests/test_acceleration.py",)),
    Mutation("source_size_never_resizes_back", "evs_framework/planner.py",
             "base = self.scale if self.size_before_source is None else self.size_before_source",
             "base = self.scale", ("tests/test_compositions.py",)),
    Mutation("executor_clean_estimate_is_noisy_latent", EXECUTOR,
             "state.clean, state.eps, state.sigma = prediction.x0, prediction.eps, sigma_next",
             "state.clean, state.eps, state.sigma = state.x, prediction.eps, sigma_next",
             ("tests/test_parity.py::test_a_model_switch_renoises_the_last_clean_estimate",)),
    Mutation("executor_transfer_from_noisy_latent", EXECUTOR,
             "TransferContext(state.clean, state.eps",
             "TransferContext(state.x, state.eps",
             ("tests/test_parity.py::test_a_model_switch_renoises_the_last_clean_estimate",)),
    # issue 21, items 13-17, and the formulas found unpinned beside them (each with the tests that pin it)
    Mutation("upscale_mode_ignored", LATENT_OPS,
             "mode=mode, **(", 'mode="bicubic", **(', (UPSCALE_TEST,)),
    Mutation("upscale_corners_aligned", LATENT_OPS,
             '{"align_corners": False}', '{"align_corners": True}', (UPSCALE_TEST,)),
    Mutation("executor_upscales_the_noisy_latent", EXECUTOR,
             'catalogue.get("latent_ops", op.name)(state.clean, **op.params)',
             'catalogue.get("latent_ops", op.name)(state.x, **op.params)', (HAND_OVER_TEST,)),
    Mutation("executor_latent_op_keeps_the_old_sigma", EXECUTOR,
             "(state.clean, **op.params)\n            state.x, state.sigma, state.eps = state.clean, 0.0, None",
             "(state.clean, **op.params)\n            state.x, state.sigma, state.eps = state.clean, state.sigma, None",
             (HAND_OVER_TEST,)),
    Mutation("executor_conversion_keeps_the_old_sigma", EXECUTOR,
             "convert(op, state.clean)\n            state.x, state.sigma, state.eps = state.clean, 0.0, None",
             "convert(op, state.clean)\n            state.x, state.sigma, state.eps = state.clean, state.sigma, None",
             (HAND_OVER_TEST,)),
    Mutation("planner_hands_a_changed_latent_over_from_the_old_level", "evs_framework/planner.py",
             "sigma_from = 0.0 if changed else self.sigma", "sigma_from = self.sigma",
             (f"{FORMULAS}::test_the_plan_hands_a_changed_latent_over_from_sigma_0_and_counts_every_inversion_step",)),
    Mutation("executor_sampler_state_shared_across_ops", EXECUTOR,
             "op_state: dict = {}", "op_state = video_state",
             (f"{FORMULAS}::test_a_multistep_samplers_history_stays_in_its_op",)),
    Mutation("ddim_returns_the_models_noise", SAMPLERS,
             "fresh_noise(x, ctx.generator)\n    return landed(x_next, prediction.x0, sigma_next, prediction.eps)",
             "fresh_noise(x, ctx.generator)\n    return x_next, prediction", (AGREEMENT_TEST,)),
    Mutation("dpmpp_2m_returns_the_models_noise", SAMPLERS,
             '"sigma": sigma}\n    return landed(x_next, prediction.x0, sigma_next, prediction.eps)',
             '"sigma": sigma}\n    return x_next, prediction', (AGREEMENT_TEST,)),
    Mutation("lcm_returns_the_noise_it_removed", SAMPLERS,
             "return landed(x_next, denoised, sigma_next, eps)",
             "return x_next, Prediction(denoised, eps)", (AGREEMENT_TEST, "tests/test_lcm.py")),
    Mutation("heun_returns_its_first_prediction", SAMPLERS,
             "return x_next, Prediction(x_next - ctx.sigma_next * second.eps, second.eps)",
             "return x_next, first", (AGREEMENT_TEST,)),
    Mutation("heun_second_slope_at_sigma", SAMPLERS,
             "second = denoise(x_euler, ctx.sigma_next)", "second = denoise(x_euler, ctx.sigma)",
             ("tests/test_samplers.py::test_second_order_samplers_converge_at_second_order",)),
    Mutation("dpmpp_2m_step_ratio_inverted", SAMPLERS,
             'r = (math.log(previous["sigma"]) - math.log(sigma)) / h',
             'r = h / (math.log(previous["sigma"]) - math.log(sigma))', DPMPP_TESTS),
    Mutation("ddim_eta_ignored", SAMPLERS,
             'float(ctx.params["eta"])', "0.0",
             ("tests/test_samplers.py::test_ddim_with_eta_is_the_ddim_scheduler_step",)),
    Mutation("lowpass_d_s_ignored", LATENT_OPS,
             "/ (2 * d_s**2)", "/ 2", LOWPASS_TESTS),
    Mutation("lowpass_temporal_ratio_inverted", LATENT_OPS,
             "((d_s / d_t) * f_t)", "((d_t / d_s) * f_t)", LOWPASS_TESTS),
    # (ifftshift for fftshift would be an equivalent mutant: the two are the same permutation on even sizes)
    Mutation("lowpass_mask_on_the_unshifted_spectrum", LATENT_OPS,
             "spectrum = torch.fft.fftshift(torch.fft.fftn(latents.float(), dim=dims), dim=dims)",
             "spectrum = torch.fft.fftn(latents.float(), dim=dims)", LOWPASS_TESTS),
    Mutation("pnp_steps_from_the_farthest_kept_level", ELEVATOR,
             "above = min(sigma for sigma in kept", "above = max(sigma for sigma in kept", CORRECTION_TESTS),
    Mutation("pnp_step_lands_at_the_level_above", ELEVATOR,
             "(prediction.x0 + ctx.sigma_to * prediction.eps)", "(prediction.x0 + above * prediction.eps)",
             CORRECTION_TESTS),
    Mutation("videoelevator_window_level_truncated", ELEVATOR,
             "round(level * vdm_total / total)", "int(level * vdm_total / total)", (WINDOW_TEST,)),
    Mutation("videoelevator_window_at_the_t2is_index", ELEVATOR,
             "round(level * vdm_total / total)", "level", (WINDOW_TEST,)),
    Mutation("strength_start_rounded", SIGMAS,
             "return steps - min(int(steps * strength), steps)",
             "return steps - min(round(steps * strength), steps)", (STRENGTH_TEST,)),
    Mutation("strength_start_with_an_epsilon", SIGMAS,
             "return steps - min(int(steps * strength), steps)",
             "return steps - min(int(steps * strength + 1e-9), steps)", (STRENGTH_TEST,)),
    Mutation("flow_shift_inverted", SIGMAS,
             "self.shift * t / (1.0 + (self.shift - 1.0) * t)", "t / (self.shift + (1.0 - self.shift) * t)",
             FLOW_TESTS),
    Mutation("flow_terminal_clamp_dropped", SIGMAS,
             "t = min(timestep / self.train_steps, self.max_t)", "t = min(timestep / self.train_steps, 1.0 - 1e-9)",
             FLOW_TESTS),
    Mutation("lcm_spacing_rounds_its_picks", SIGMAS,
             "origin[math.floor(i * (original_steps / steps))]", "origin[round(i * (original_steps / steps))]",
             ("tests/test_lcm.py",)),
    Mutation("v_prediction_noise_sign", PREDICTIONS,
             "return scale * x_in - s * output, s * x_in + scale * output",
             "return scale * x_in - s * output, s * x_in - scale * output", PREDICTION_TESTS),
    Mutation("sample_prediction_noise_sign", PREDICTIONS,
             "return output, (x - output) / sigma", "return output, (output - x) / sigma", PREDICTION_TESTS),
    Mutation("flow_prediction_clean_weight", PREDICTIONS,
             "return x_in - t * output, x_in + (1.0 - t) * output",
             "return x_in - (1.0 - t) * output, x_in + t * output", PREDICTION_TESTS),
    Mutation("epsilon_prediction_unscaled", PREDICTIONS,
             "return x - sigma * output, output", "return x - output, output",
             ("tests/test_parity.py::test_idm_only_equals_img2img_pipeline[ddim]",)),
    Mutation("videoelevator_inverts_on_the_prompt", ELEVATOR,
             "INVERSION_GUIDANCE = 0.0", "INVERSION_GUIDANCE = 1.0",
             (f"{ELEVATOR_TESTS}::test_the_inversion_runs_on_the_negative_prompt_alone_and_the_correction_on_the_"
              "prompt_alone",)),
    Mutation("iv_mixed_t2i_inverts_to_the_t2vs_present_level", "plugins/iv_mixed.py",
             "if sigma <= vdm[level + 1] * (1 + 1e-9))", "if sigma <= vdm[level] * (1 + 1e-9))",
             ("tests/test_compositions.py::test_iv_mixed_on_one_grid_makes_the_papers_two_t2i_and_three_t2v_"
              "evaluations_a_step",)),
    Mutation("invert_up_ignores_its_guidance", TRANSFERS,
             'guidance = ctx.guidance if ctx.params.get("guidance") is None else float(ctx.params["guidance"])',
             "guidance = ctx.guidance",
             ("tests/test_parity.py::test_ddim_invert_up_continues_an_inversion_from_the_present_latent",)),
)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def check_applies(tree: Path, mutation: Mutation) -> str:
    """The file's text, after checking that the mutation's text occurs in it exactly once."""
    original = (tree / mutation.file).read_text()
    if original.count(mutation.old) != 1:
        raise ValueError(f"{mutation.name}: expected the text once in {mutation.file}, found it "
                         f"{original.count(mutation.old)} times; update the mutation to the current source")
    return original


@contextmanager
def mutated(tree: Path, mutation: Mutation):
    """The file with the mutation applied; the original text is written back on any exit."""
    path = tree / mutation.file
    original = check_applies(tree, mutation)
    try:
        path.write_text(original.replace(mutation.old, mutation.new))
        yield
    finally:
        path.write_text(original)


def private_copy(into: Path) -> Path:
    """The working tree (uncommitted work included) under `into`, with `evs_plugins` importable from it."""
    tree = into / "tree"
    shutil.copytree(REPO, tree, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "outputs", "pretrained_models", "evs_plugins"))
    (tree / "evs_plugins").symlink_to("plugins")  # the installed package maps it to the shared checkout's plugins/
    return tree


def test_environment(tree: Path) -> dict:
    # no bytecode: a mutated module must never leave a .pyc that could outlive the mutation
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


def check_imports_from(tree: Path) -> None:
    code = "import evs_framework.denoiser as d, evs_plugins.samplers as s; print(d.__file__); print(s.__file__)"
    paths = subprocess.run([sys.executable, "-c", code], cwd=tree, env=test_environment(tree), check=True,
                           capture_output=True, text=True).stdout.split()
    outside = [p for p in paths if not Path(p).resolve().is_relative_to(tree.resolve())]
    if outside:
        raise RuntimeError(f"the tests would import {outside} instead of the copy under {tree}")


def run_tests(tree: Path, tests: tuple[str, ...] = TESTS) -> dict:
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-n", "0", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=tree, env=test_environment(tree), capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"rc": None, "failed": [], "seconds": round(time.perf_counter() - started, 1), "tail": "timeout"}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.MULTILINE)
    return {"rc": done.returncode, "failed": failed, "seconds": round(time.perf_counter() - started, 1),
            "tail": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]}


def outcome(result: dict) -> str:
    if result["rc"] is None:
        return "caught (timeout)"
    return "survived" if result["rc"] == 0 else "caught"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    parser.add_argument("--only", help="comma-separated mutation names")
    parser.add_argument("--tree", type=Path, help="mutate this tree in place instead of a private copy")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    out = args.out.open("w") if args.out else None

    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    with tempfile.TemporaryDirectory(prefix="evs-mutations-") as scratch:
        tree = args.tree.resolve() if args.tree else private_copy(Path(scratch))
        check_imports_from(tree)
        for mutation in mutations:
            check_applies(tree, mutation)
        baseline = run_tests(tree, tuple(dict.fromkeys(test for m in mutations for test in m.tests)))
        emit({"mutation": None, "status": "baseline", **baseline})
        if baseline["rc"] != 0:
            print("the tests fail without any mutation; fix that first", file=sys.stderr)
            return 2
        survived = 0
        for mutation in mutations:
            with mutated(tree, mutation):
                result = run_tests(tree, mutation.tests)
            status = outcome(result)
            survived += status == "survived"
            emit({"mutation": mutation.name, "file": mutation.file, "status": status, "caught_by": result["failed"],
                  "seconds": result["seconds"], "tail": result["tail"]})
    if out:
        out.close()
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
