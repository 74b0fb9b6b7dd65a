"""Mutation pass over the sampling math: does every one-line bug fail a test?

Each mutation is an exact string replacement in one source file. For each, the script applies it, runs the
math tests, restores the file (in a `finally`, so also on Ctrl-C or SIGTERM) and writes one JSON line:
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

MUTATIONS = (
    Mutation("guidance_cond_plus_scaled_difference", DENOISER,
             "eps = eps_uncond + guidance * (eps_cond - eps_uncond)",
             "eps = eps_cond + guidance * (eps_cond - eps_uncond)"),
    Mutation("guidance_one_uses_negative_prompt", DENOISER,
             "self.text[1:2]",
             "self.text[0:1]"),
    Mutation("input_scaling_removed", DENOISER,
             "x_in = (x / math.sqrt(sigma**2 + 1.0))[None]",
             "x_in = x[None]"),
    Mutation("timestep_sigma_ignored", DENOISER,
             "t = self.timestep(sigma if timestep_sigma is None else timestep_sigma)",
             "t = self.timestep(sigma)"),
    Mutation("timestep_off_by_one", SIGMAS,
             "return low + min(max(weight, 0.0), 1.0)",
             "return high + min(max(weight, 0.0), 1.0)"),
    Mutation("sigma_at_off_by_one", SIGMAS,
             "return float(self.sigmas[timestep])",
             "return float(self.sigmas[timestep - 1])"),
    Mutation("leading_spacing_drops_steps_offset", SIGMAS,
             "ts = [i * ratio + steps_offset for i in range(steps)]",
             "ts = [i * ratio for i in range(steps)]"),
    Mutation("trailing_spacing_off_by_one", SIGMAS,
             "ts = [round(train_steps - i * ratio) - 1 for i in range(steps)]",
             "ts = [round(train_steps - i * ratio) for i in range(steps)]"),
    Mutation("strength_runs_one_more_step", SIGMAS,
             "run = min(int(self.steps * strength + 1e-9), self.steps)",
             "run = min(int(self.steps * strength + 1e-9) + 1, self.steps)"),
    Mutation("euler_uses_sigma_not_sigma_next", SAMPLERS,
             "return prediction.x0 + ctx.sigma_next * prediction.eps, prediction",
             "return prediction.x0 + ctx.sigma * prediction.eps, prediction"),
    Mutation("lcm_c_skip_c_out_swapped", SAMPLERS,
             "denoised = c_out * prediction.x0 + c_skip * (x / math.sqrt(1.0 + sigma**2))",
             "denoised = c_skip * prediction.x0 + c_out * (x / math.sqrt(1.0 + sigma**2))"),
    Mutation("lcm_skip_term_in_sigma_space", SAMPLERS,
             "c_skip * (x / math.sqrt(1.0 + sigma**2))",
             "c_skip * x"),
    Mutation("lcm_noise_at_sigma_not_sigma_next", SAMPLERS,
             "denoised + sigma_next * fresh_noise(x, ctx.generator)",
             "denoised + sigma * fresh_noise(x, ctx.generator)"),
    Mutation("ddim_fresh_noise_ignores_the_step", SAMPLERS,
             "fresh = eta * sigma_next * math.sqrt(max(0.0, 1 - sigma_next**2 / sigma**2))",
             "fresh = eta * sigma_next"),
    Mutation("dpmpp_2m_stays_first_order", SAMPLERS,
             'x0 = (1 + 1 / (2 * r)) * prediction.x0 - (1 / (2 * r)) * previous["x0"]',
             "x0 = prediction.x0"),
    Mutation("heun_drops_the_second_slope", SAMPLERS,
             "x_next = x + (ctx.sigma_next - ctx.sigma) * (first.eps + second.eps) / 2",
             "x_next = x + (ctx.sigma_next - ctx.sigma) * first.eps"),
    Mutation("heun_declares_one_call_a_step", SAMPLERS,
             "return 1 if sigma_next == 0 else 2",
             "return 1"),
    Mutation("random_transfer_variance_preserving", TRANSFERS,
             "return ctx.clean + ctx.sigma_to * fresh_noise(ctx.clean, ctx.generator)",
             "return (ctx.clean + ctx.sigma_to * fresh_noise(ctx.clean, ctx.generator)) / (1 + ctx.sigma_to**2) ** 0.5"),
    Mutation("ddim_renoise_to_sigma_from", TRANSFERS,
             "return ctx.clean + ctx.sigma_to * ctx.eps",
             "return ctx.clean + ctx.sigma_from * ctx.eps"),
    Mutation("inversion_at_lower_levels_timestep", TRANSFERS,
             "timestep_sigma=sigma_up",
             "timestep_sigma=sigma"),
    Mutation("inversion_step_from_zero", TRANSFERS,
             "x = x + (sigma_up - sigma) * prediction.eps",
             "x = x + sigma_up * prediction.eps"),
    Mutation("vae_decode_multiplies", VAE,
             "scaled = latents / vae.config.scaling_factor",
             "scaled = latents * vae.config.scaling_factor"),
    Mutation("vae_encode_divides", VAE,
             "(torch.cat(latents) - shift) * vae.config.scaling_factor",
             "(torch.cat(latents) - shift) / vae.config.scaling_factor"),
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
             "state.clean, state.eps, state.sigma = state.x, prediction.eps, sigma_next"),
    Mutation("executor_transfer_from_noisy_latent", EXECUTOR,
             "TransferContext(state.clean, state.eps",
             "TransferContext(state.x, state.eps"),
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
        ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "outputs", "pretrained_models"))
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
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
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
