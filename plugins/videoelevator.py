"""VideoElevator (Zhang et al., "VideoElevator: Elevating Video Generation Quality with Versatile Text-to-Image
Diffusion Models", 2024) as a composition: our implementation of the loop its public code runs, in sigma space, as
a planner. docs/videoelevator.md has our reading of that code, its defaults and its model-call counts.

The T2I takes every step of its schedule. A window opens at each `stable_steps` entry (steps left, as in its code)
right after the T2I's step at that level: the T2I's clean estimate is low-pass filtered in 3D frequency (latent op
`lowpass`, with `videoelevator.d_s` and `.d_t`; not at the last window), noised afresh to the level of the T2V's
step at the same place in its schedule (the same index when both have as many steps), denoised `stable_num` T2V steps, and the T2V's clean estimate DDIM-inverted with the T2I on the negative
prompt alone (guidance 0) up to the T2I's next level. The inversion's path is kept for the video, and each later T2I
step is corrected by it (PnP inversion): the T2I evaluates the kept latent of the step's level on the prompt alone
(guidance 1), and the step gains the difference between the kept latent one level down and that evaluation's DDIM
step. The last step, into the clean level, has no kept latent below it and is not corrected, as in the code.

Where the code differs from this reading, we keep the consistent version: it noises at the T2I's timestep but runs
the T2V from its own grid's step of the same index (we noise to the level that step starts from), and it computes a correction at window steps that the
inversion then overwrites (we skip it). For enhancement the T2I starts from the source at
`idm_inverse_strength`; windows above that level are skipped.
"""

from __future__ import annotations

from evs_framework.composition import Composition, Stage, StageOp
from evs_framework.hookspecs import hookimpl
from evs_plugins.compositions import PAPER_ROLES
from evs_framework.schedules import start_level
from evs_framework.transfer import Transfer, TransferContext
from evs_plugins.transfers import invert, levels_above_clean

NAME = "videoelevator"
INVERSION_GUIDANCE = 0.0  # the code inverts on the negative prompt's embeddings alone
CORRECTION_GUIDANCE = 1.0  # and evaluates the kept latents on the prompt alone


def kept_path(ctx: TransferContext) -> dict[float, object]:
    return ctx.video_state.setdefault(NAME, {}).setdefault("kept", {})


def invert_and_keep(ctx: TransferContext):
    """DDIM inversion of the clean estimate up to the target level with the target model, every level's latent kept
    for the corrections that follow (the latents of an earlier window's inversion are dropped)."""
    kept = kept_path(ctx)
    kept.clear()
    return invert(ctx, ctx.clean, ctx.levels, float(ctx.params["guidance"]), keep=kept)


def pnp_correct(ctx: TransferContext):
    """The present latent, just stepped down to `sigma_to`, plus the kept latent there minus the DDIM step that the
    model takes from the kept latent one level up (PnP inversion)."""
    kept = kept_path(ctx)
    above = min(sigma for sigma in kept if sigma > ctx.sigma_to * (1 + 1e-9))
    here = next(latent for sigma, latent in kept.items() if abs(sigma - ctx.sigma_to) <= 1e-9 * max(sigma, 1.0))
    prediction = ctx.denoise(kept[above], above, guidance=float(ctx.params["guidance"]))
    return ctx.x + here - (prediction.x0 + ctx.sigma_to * prediction.eps)


def one_evaluation(levels, sigma_from, params) -> int:
    return 1


def videoelevator(builder) -> None:
    idm, vdm = builder.levels("idm"), builder.levels("vdm")
    if not idm or not vdm:
        return  # the builder has said why
    total, vdm_total = len(idm) - 1, len(vdm) - 1
    strength = builder.setting("idm_inverse_strength")
    first = start_level(total, strength)
    windows = [total - left for left in builder.windows() if first <= total - left < total - 1]
    if not windows or len(windows) < len(builder.settings.stable_steps):
        builder.problem(f"stable_steps {list(builder.settings.stable_steps)}: each window opens after one of the T2I's "
                        f"steps {first}..{total - 2} (steps left {total - first}..2) at idm_inverse_strength {strength}, "
                        f"and one at least is needed; give such windows or raise the strength")
        return
    stable_num = builder.settings.stable_num
    filter_params = {"d_s": builder.setting(f"{NAME}.d_s"), "d_t": builder.setting(f"{NAME}.d_t")}
    corrected = {"guidance": CORRECTION_GUIDANCE}
    at = None  # the T2I level the next corrected step starts from, once a window has been inverted
    for k, level in enumerate(windows):
        if at is None:
            builder.stage(Stage("idm", "random", strength, steps=level + 1 - first))
        for _ in range(at or level + 1, level + 1):  # each stage's transfer corrects the step before it
            builder.stage(Stage("idm", "pnp_correct", "resume", steps=1, transfer_params=corrected))
        ops = (StageOp("lowpass", filter_params),) if k < len(windows) - 1 else ()
        # the T2V step at the same place in its schedule (its code: the same index, both having 30 steps)
        vdm_level = min(round(level * vdm_total / total), vdm_total - 1)
        builder.stage(Stage("vdm", "random", "current", steps=stable_num, ops=ops), fit=True, first_level=vdm_level)
        builder.stage(Stage("idm", "invert_and_keep", "current", steps=1,
                            transfer_params={"guidance": INVERSION_GUIDANCE}), first_level=level + 1)
        if builder.failed:
            return
        at = level + 2
    for _ in range(at, total):
        builder.stage(Stage("idm", "pnp_correct", "resume", steps=1, transfer_params=corrected))


@hookimpl
def register_transfers(register):
    register("invert_and_keep", Transfer("invert_and_keep", invert_and_keep, evaluations=levels_above_clean,
                                         parameters={"guidance": INVERSION_GUIDANCE},
                                         description=invert_and_keep.__doc__.split("\n")[0]))
    register("pnp_correct", Transfer("pnp_correct", pnp_correct, evaluations=one_evaluation,
                                     parameters={"guidance": CORRECTION_GUIDANCE},
                                     description=pnp_correct.__doc__.split("\n")[0]))


@hookimpl
def register_settings(register):
    register(NAME, {"d_s": 1.0, "d_t": 0.6})


@hookimpl
def register_compositions(register):
    register(NAME, Composition(NAME, "VideoElevator: every T2I step, a filtered T2V window at each stable_steps "
                                     "entry, inverted back with the T2I and kept to correct the steps after it",
                               roles=PAPER_ROLES, planner=videoelevator))
