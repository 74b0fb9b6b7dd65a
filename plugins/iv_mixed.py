"""IV-Mixed Sampler (Shao et al., "IV-Mixed Sampler: Leveraging Image Diffusion Models for Enhanced Video
Synthesis", ICLR 2025) as a composition: our implementation of its schedule, in sigma space, as a planner.

Its public code (xie-lab-ml/IV-mixed-Sampler, utils/iv_sampler_animatediff.py) runs, at every DDIM step of
AnimateDiff from level i to i+1, a zig-zag before the ordinary step: the T2I denoises one step (guidance 4), the
T2V denoises one step (guidance 4), the T2I inverts one step back up and the T2V inverts back to level i (DDIM
inversion, both with guidance -4), then the T2V takes its own step from i to i+1 with its usual guidance. With
both models on the same grid that is 2 T2I and 3 T2V evaluations a step, as in the code's default run (all 50
steps). Where the code labels its first two evaluations one step away from this zig-zag, we keep the consistent
zig-zag; where the models' grids differ, each hand-over goes to the receiving model's level at or below the
present one and the inversions walk the receiving model's levels. Here the T2V starts from the source at
`vdm_inverse_strength` (the code samples from pure noise), its first step is plain (there is no prediction yet to
zig-zag from), and so is its last (the zig-zag would start below the clean level).
"""

from __future__ import annotations

from evs_framework.composition import Composition, Stage
from evs_framework.hookspecs import hookimpl
from evs_plugins.compositions import PAPER_ROLES

NAME = "IV_mixed"
ZIGZAG_GUIDANCE = 4.0  # the code's i_sigma / v_sigma: +4 while denoising, -4 while inverting


def iv_mixed(builder) -> None:
    vdm, idm = builder.levels("vdm"), builder.levels("idm")
    if not vdm or not idm:
        return  # the builder has said why
    vdm_total = len(vdm) - 1
    if not builder.stage(Stage("vdm", "random", builder.setting("vdm_inverse_strength"), steps=1)):
        return
    while builder.remaining("vdm") > 1 and not builder.failed:
        level = vdm_total - builder.remaining("vdm")  # where this T2V step starts
        builder.stage(Stage("idm", "ddim", "current", steps=1, guidance=ZIGZAG_GUIDANCE), fit=True)
        builder.stage(Stage("vdm", "ddim", "current", steps=1, guidance=ZIGZAG_GUIDANCE), fit=True)
        back_to = next(i for i, sigma in enumerate(idm) if sigma <= vdm[level + 1] * (1 + 1e-9))
        if back_to < len(idm) - 1 and idm[back_to] > builder.sigma:  # else the T2V inverts the whole way
            builder.stage(Stage("idm", "ddim_invert_up", "current", steps=0,
                                transfer_params={"guidance": -ZIGZAG_GUIDANCE}), first_level=back_to)
        builder.stage(Stage("vdm", "ddim_invert_up", "current", steps=1, transfer_params={"guidance": -ZIGZAG_GUIDANCE}),
                      first_level=level)
    if builder.remaining("vdm"):
        builder.stage(Stage("vdm", "ddim", "resume", stop="end"))


@hookimpl
def register_compositions(register):
    register(NAME, Composition(NAME, "IV-Mixed Sampler: at each T2V step, T2I and T2V denoise, invert back, then the "
                                     "T2V steps", roles=PAPER_ROLES, planner=iv_mixed))
