"""Conditioning made of several tensors (SDXL's token embeddings and pooled embedding, say), one row per prompt.

A backend's `encode_prompts` may return a plain tensor or such an object: the Denoiser takes rows of it with
`conditioning[i:j]` (the positive prompt alone, when guidance is off), which slices every field alike.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Conditioning:
    """Subclass it as a frozen attrs class whose fields are tensors with one row per prompt."""

    def __getitem__(self, rows: slice):
        return attrs.evolve(self, **{field.name: getattr(self, field.name)[rows] for field in attrs.fields(type(self))})
