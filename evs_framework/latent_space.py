"""Latent spaces and the way between two of them.

Models that declare the same latent space (registry presets, `latent_space.name`) exchange latents as they are:
an SD1.5 T2I and an AnimateDiff T2V over it share SD1.5's VAE. Where consecutive models of a composition work in
different spaces (an SD1.5 T2I and a Wan T2V, say), the clean estimate is carried across: decoded to frames by the
VAE of the model that owns it and encoded by the next model's (the default, VAE_ROUND_TRIP), or by a converter a
plugin registers for that pair of spaces.
"""

from __future__ import annotations

from typing import Callable

import attrs
import torch

VAE_ROUND_TRIP = "vae_round_trip"


@attrs.frozen
class LatentSpace:
    """A loaded model's latent space: the registry's declaration (name, channels, compression) with the VAE's
    normalisation, `latent = (z - shift) * scaling` (per channel where they are sequences, as Wan's VAE has them)."""

    name: str
    channels: int
    spatial: int
    temporal: int
    scaling: float | tuple[float, ...]
    shift: float | tuple[float, ...] = 0.0


@attrs.frozen
class Converter:
    """A way from latent space `source` to `target`; `convert(latents, source_backend, target_backend)` works on clean
    (frames, channels, h, w) latents; `cost` says in a few words what one conversion costs (`evs plan` shows it)."""

    name: str
    source: str
    target: str
    cost: str
    convert: Callable[[torch.Tensor, object, object], torch.Tensor]


def converter_between(catalogue, source: str, target: str) -> Converter | None:
    """The registered converter from `source` to `target`, if a plugin gives one."""
    return next((c for c in (catalogue.get("latent_converters", n) for n in catalogue.names("latent_converters"))
                 if (c.source, c.target) == (source, target)), None)


def check_declared(entry, space: LatentSpace) -> str | None:
    """What the loaded VAE contradicts in the registry's declaration of the model's latent space (None: nothing)."""
    declared = entry.preset.latent_space
    found = {"channels": space.channels, "spatial": space.spatial, "temporal": space.temporal}
    wrong = [f"{key} {getattr(declared, key)} (its VAE has {value})" for key, value in found.items()
             if getattr(declared, key) != value]
    if not wrong:
        return None
    return (f"model {entry.name!r}: its registry preset declares latent space {declared.name!r} with {', '.join(wrong)}; "
            f"fix `latent_space` in the preset")
