"""The plugin surface of EVS. Each hook's docstring is its contract.

Catalogue hooks take a `register` callable: the host owns the names, refuses duplicates (naming both
plugins) and remembers which plugin provided what. Call hooks by keyword.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("evs")
hookimpl = pluggy.HookimplMarker("evs")


@hookspec
def register_backends(register):
    """Provide model backend kinds: `register(kind, loader)`.

    `loader(entry, context) -> backend` loads the registry entry `entry` (a `ModelEntry`) with the
    `LoadContext` `context` (device, dtype, weight resolution, shared-component cache). The backend it
    returns satisfies `evs_framework.loading.Backend`: `encode_prompts`, `predict_noise`, `vae`,
    `frames_as_batch`, and `unet` / `text_encoder` (the modules --offload moves, or None).
    """


@hookspec
def register_transfers(register):
    """Provide transfer strategies that move a latent onto a model's noise level: `register(name, transfer)`.

    `transfer` is an `evs_framework.transfer.Transfer`: a name, the function that maps a
    `TransferContext` to the new latent, how many model evaluations it spends for a given number of
    schedule levels, and whether it needs a noise prediction from an earlier step.
    """


@hookspec
def register_samplers(register):
    """Provide per-step samplers: `register(name, step)`.

    `step(denoise, x, sigma, sigma_next, generator) -> (x_next, prediction)` takes one step from
    `sigma` to `sigma_next`, calling `denoise(x, sigma)` (which returns a `Prediction`) as often as it needs.
    """


@hookspec
def register_compositions(register):
    """Provide named compositions: `register(name, composition)` with an `evs_framework.composition.Composition`."""


@hookspec
def register_latent_ops(register):
    """Provide operations on clean latents (e.g. `upscale`): `register(name, op)`.

    `op(latents, **params) -> latents` works on (frames, channels, height, width) clean latents.
    """


@hookspec(firstresult=True)
def resolve_weights(location, settings):
    """Find the local files for a registry weight location; the first non-None answer wins.

    `location` is a `WeightLocation` (local relative path and/or hub id); `settings` a `WeightSettings`
    (weights folders, offline flag). Return a `pathlib.Path` that exists, or None to let the next plugin try.
    A plugin that searched should append the places it looked to `settings.searched`.
    """


@hookspec
def plan_ready(plan, video):
    """Observe the plan before a video is processed (`video` is the input path)."""


@hookspec
def step_end(op, step, sigma, latents):
    """Observe the latent after each denoising step of op `op` (`step` counts from 0 within the op)."""


@hookspec
def video_done(result):
    """Observe a finished video (`result` is an `evs_framework.runner.VideoResult`)."""
