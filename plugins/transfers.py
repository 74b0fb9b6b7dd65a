"""Built-in transfer strategies: random noising, DDIM inversion, DDIM re-noising with the predicted noise."""

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
    x = ctx.clean
    for sigma, sigma_up in zip(ctx.levels[:-1], ctx.levels[1:]):
        prediction = ctx.denoise(x, sigma, timestep_sigma=sigma_up, guidance=ctx.guidance)
        x = x + (sigma_up - sigma) * prediction.eps
    return x


@hookimpl
def register_transfers(register):
    register("random", Transfer("random", random_noise, description=random_noise.__doc__))
    register("ddim_renoise", Transfer("ddim_renoise", ddim_renoise, needs_noise_prediction=True,
                                      description=ddim_renoise.__doc__))
    register("ddim_inversion", Transfer("ddim_inversion", ddim_inversion, model_steps=lambda levels_up: levels_up,
                                        description=ddim_inversion.__doc__.split("\n")[0]))
