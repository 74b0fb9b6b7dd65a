"""Built-in transfer strategies: random noising, DDIM inversion (from the clean estimate, or up from the present
latent), DDIM re-noising with the predicted noise."""

from __future__ import annotations

from evs_framework.hookspecs import hookimpl
from evs_framework.transfer import Transfer, TransferContext, fresh_noise


def random_noise(ctx: TransferContext):
    """The clean estimate plus fresh Gaussian noise at the target level (SDEdit)."""
    return ctx.clean + ctx.sigma_to * fresh_noise(ctx.clean, ctx.generator)


def ddim_renoise(ctx: TransferContext):
    """The clean estimate plus the latest predicted noise at the target level: deterministic and free."""
    return ctx.clean + ctx.sigma_to * ctx.eps


def ddim_inversion(ctx: TransferContext):
    """Run the target model's deterministic DDIM update backwards from the clean estimate up to the target.

    Each step evaluates the model at the next (higher) level's timestep on the latent of the current level,
    as diffusers' DDIMInverseScheduler does.
    """
    return invert(ctx, ctx.clean, ctx.levels, ctx.guidance)


def ddim_invert_up(ctx: TransferContext):
    """DDIM-invert the present latent up from its level through the target model's levels above it to the target;
    with `guidance` when given (IV-Mixed Sampler inverts with negative guidance), else the spec's inversion
    guidance. From a clean latent this is `ddim_inversion`."""
    path = (ctx.sigma_from, *levels_above(ctx.levels, ctx.sigma_from))
    guidance = ctx.guidance if ctx.params.get("guidance") is None else float(ctx.params["guidance"])
    return invert(ctx, ctx.x, path, guidance)


def invert(ctx: TransferContext, x, path: tuple[float, ...], guidance: float, keep: dict | None = None):
    """DDIM inversion of `x` from path[0] up through the levels of `path`; `keep`, when given, receives the latent at
    every level of the path, by sigma."""
    if keep is not None:
        keep[path[0]] = x
    for sigma, sigma_up in zip(path[:-1], path[1:]):
        prediction = ctx.denoise(x, sigma, timestep_sigma=sigma_up, guidance=guidance)
        x = x + (sigma_up - sigma) * prediction.eps
        if keep is not None:
            keep[sigma_up] = x
    return x


def levels_above(levels, sigma: float) -> tuple[float, ...]:
    return tuple(level for level in levels if level > sigma * (1 + 1e-9))


def levels_above_clean(levels, sigma_from, params) -> int:
    return len(levels) - 1


def levels_above_start(levels, sigma_from, params) -> int:
    return len(levels_above(levels, sigma_from))


@hookimpl
def register_transfers(register):
    register("random", Transfer("random", random_noise, description=random_noise.__doc__))
    register("ddim_renoise", Transfer("ddim_renoise", ddim_renoise, needs_noise_prediction=True,
                                      description=ddim_renoise.__doc__))
    register("ddim_inversion", Transfer("ddim_inversion", ddim_inversion, evaluations=levels_above_clean,
                                        description=ddim_inversion.__doc__.split("\n")[0]))
    register("ddim_invert_up", Transfer("ddim_invert_up", ddim_invert_up, evaluations=levels_above_start,
                                        parameters={"guidance": None},
                                        description=ddim_invert_up.__doc__.split("\n")[0]))
