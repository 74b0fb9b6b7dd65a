"""Transfers: how a latent is moved onto a model's noise level when a stage begins.

A transfer starts from what the trajectory knows: the latest clean estimate (`clean`, the source latent
at the very start), the latest noise prediction (`eps`, None before any model ran) and the current level.
Strategies are provided by plugins (`register_transfers`); the built-ins live in evs_plugins.transfers.
"""

from __future__ import annotations

from typing import Callable

import attrs
import torch

from evs_framework.denoiser import Denoiser


@attrs.frozen
class TransferContext:
    """`x` is the present latent at `sigma_from` (the source latent at the start)."""

    clean: torch.Tensor
    eps: torch.Tensor | None
    sigma_from: float
    sigma_to: float
    # the target model's schedule levels from clean up to sigma_to, ascending (0.0 first, sigma_to last)
    levels: tuple[float, ...]
    denoise: Denoiser
    guidance: float
    generator: torch.Generator
    op: object = None  # the evs_framework.plan.TransferOp being run
    params: dict = attrs.Factory(dict)  # the transfer's parameters: its defaults, overridden by the stage
    # lives for the whole video, shared with its samplers and other transfers: key it by your plugin's name
    video_state: dict = attrs.Factory(dict)
    x: torch.Tensor | None = None


def no_evaluations(levels: tuple[float, ...], sigma_from: float, params) -> int:
    return 0


@attrs.frozen
class Transfer:
    name: str
    run: Callable[[TransferContext], torch.Tensor]
    # model evaluations it makes (before guidance doubles them), from what its context will hold: the target
    # model's levels from clean up to the target, the level it starts from, its parameters
    evaluations: Callable[[tuple[float, ...], float, dict], int] = no_evaluations
    needs_noise_prediction: bool = False
    description: str = ""
    parameters: dict = attrs.Factory(dict)  # every parameter it reads, with its default; `guidance`, when declared,
    # is the guidance its model evaluations use (the plan doubles their count unless it is 1)


def fresh_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device, then moved, so a seed gives the same noise anywhere."""
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)
