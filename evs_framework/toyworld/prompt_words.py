"""The attributes a toy-world prompt asks for, read back from its words (for clips that have no ground truth)."""

from __future__ import annotations

import re

import attrs

from evs_framework.errors import EVSError
from evs_framework.toyworld.world import (BACKGROUNDS, COLOURS, DIRECTIONS, QUICK_FROM, SHAPES, SPEEDS, STYLES,
                                          TEXTURES)

SPEED_RANGES = {"slowly": (SPEEDS[0], QUICK_FROM), "quickly": (QUICK_FROM, SPEEDS[1])}  # fraction of the frame per frame


class PromptWordsError(EVSError):
    """A prompt is not in the toy world's words."""


@attrs.frozen
class PromptWords:
    colour: str
    texture: str
    shape: str
    speed: str  # a key of SPEED_RANGES
    direction: str
    background: str
    style: str  # "" or one of STYLES


def _either(words) -> str:
    return "|".join(map(re.escape, words))


_PROMPT = re.compile(
    rf"an? (?P<colour>{_either(COLOURS)}) (?P<texture>{_either(TEXTURES)}) (?P<shape>{_either(SHAPES)}) drifting "
    rf"(?P<speed>{_either(SPEED_RANGES)}) (?P<direction>{_either(DIRECTIONS)}) over a "
    rf"(?P<background>{_either(BACKGROUNDS)}) gradient(?: in (?P<style>{_either(STYLES)}))?")


def spec_words(prompt: str) -> PromptWords:
    """The colour, texture, shape, speed word, direction, background and style that `prompt` names."""
    found = _PROMPT.fullmatch(prompt.strip())
    if found is None:
        raise PromptWordsError(f"the prompt {prompt!r} is not a toy-world prompt; write it as ClipSpec.prompt does, "
                               "e.g. 'a red striped disc drifting slowly left over a blue gradient'")
    return PromptWords(**{name: value or "" for name, value in found.groupdict().items()})
