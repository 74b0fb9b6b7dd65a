"""Everything about a job that can be checked before a weight loads, reported in one round.

The spec's own problems and the plan's come from spec.py and plan.py; this module adds what depends on the
machine: the device, the input videos (they exist, decode, are large enough, have the frame counts and sizes the
latent spaces take) and every weight file of every model (with the entries they build on).
"""

from __future__ import annotations

import torch

from evs_framework.io import video_io
from evs_framework.errors import EVSError, VideoError, WeightsError
from evs_framework.loaders.integrity import weight_file_problems
from evs_framework.loading import download_again
from evs_framework.plan import Plan
from evs_framework.spec import Spec

MULTIPLE = 8  # the VAE's downsampling: frame sides are cropped or padded to multiples of it


def parse_device(name: str) -> torch.device:
    """The torch device `name` names, checked to exist on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise EVSError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EVSError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu, "
                           f"or install the torch build for your CUDA")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise EVSError(f"--device {name}: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}; pick one of them")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise EVSError(f"--device {name}: Apple MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise EVSError(f"--device {name}: device type {device.type!r} is not supported; use cpu, cuda or cuda:N")
    return device


def working_size(spec: Spec, info: video_io.VideoInfo) -> tuple[int, int, int]:
    """(frames, height, width) of a clip as the run will read it: strided, capped, resized and fitted."""
    frames = -(-info.frame_count // spec.video.stride)
    frames = min(frames, spec.video.max_frames) if spec.video.max_frames else frames
    width, height = spec.video.size or (info.width, info.height)
    if spec.video.fit == "crop":
        return frames, height - height % MULTIPLE, width - width % MULTIPLE
    return frames, height + -height % MULTIPLE, width + -width % MULTIPLE


def input_lengths(spec: Spec) -> dict:
    """Each readable input's frame count as the run reads it, by input."""
    lengths = {}
    for item in spec.inputs:
        try:
            lengths[item] = working_size(spec, video_io.probe_video(item.video))[0]
        except VideoError:
            continue
    return lengths


def input_problems(spec: Spec, plan: Plan | None, sized: bool = True) -> list[str]:
    """Each input video exists and decodes, leaves a picture after fitting, and has the frame count and size every
    model's latent space takes. `sized=False` (the spec's video options had a problem) checks only that each
    decodes."""
    problems = []
    for item in spec.inputs:
        try:
            info = video_io.probe_video(item.video)
        except VideoError as exc:
            problems.append(str(exc))
            continue
        if not sized:
            continue
        frames, height, width = working_size(spec, info)
        if min(height, width) < MULTIPLE:
            problems.append(f"video {item.video} is {info.width}x{info.height}: cropping to multiples of {MULTIPLE} leaves "
                            f"nothing; use a larger video, video.size, or video.fit: pad")
        problems += clip_problems(plan, f"video {item.video}", frames, height, width)
    return problems


def clip_problems(plan: Plan | None, name: str, frames: int, height: int, width: int) -> list[str]:
    """What keeps a clip of `frames` frames of height x width (as the run reads it) from every model of the plan: a
    latent space's frame count and size. (A motion model runs a clip longer than it sees at once in context
    windows.)"""
    if plan is None:
        return []
    problems = []
    for model in plan.models.values():
        entry = model.entry
        problems.extend(f"{name}: {problem}"
                        for problem in entry.preset.latent_space.fit_problems(entry.name, frames, height, width))
    return list(dict.fromkeys(problems))  # two roles on one model say it once


def has_files(entry) -> bool:
    """False for an entry that names no weights at all (a plugin backend that builds its model from code)."""
    return bool(entry.weights.local or entry.weights.hub)


def entries_read(entries, context) -> list:
    """These registry entries and every entry they build on (through the backends' `required_models`), once each,
    in the order they are met."""
    return [entry for entry, _ in _entries_and_users(entries, context)]


def _entries_and_users(entries, context) -> list[tuple]:
    """entries_read's entries, each with the name of the entry that first needed it (None for those given)."""
    pending, found = [(entry, None) for entry in entries], {}
    while pending:
        entry, user = pending.pop(0)
        if entry.name in found:
            continue
        found[entry.name] = entry, user
        for needed in context.plugins.hook.required_models(entry=entry, context=context):
            pending.extend((other, entry.name) for other in needed or [])
    return list(found.values())


def weight_path(entry, context):
    """Where `entry`'s files are; None for an entry that names none. Raises WeightsError when they are missing."""
    return context.weights_path(entry) if has_files(entry) else None


def weight_problems(entries, context) -> list[str]:
    """Every missing or damaged weight file of these registry entries and of those they build on, without loading
    any (a damaged file shows in its header, its length or its JSON; loaders.integrity)."""
    problems = []
    for entry, user in _entries_and_users(entries, context):
        try:
            path = weight_path(entry, context)
        except WeightsError as exc:
            problems.append(f"model {user!r} builds on {entry.name!r}: {exc}" if user else str(exc))
            continue
        if path is not None:
            used = f" (which {user!r} builds on)" if user else ""
            problems += [f"model {entry.name!r}{used}: {problem}; {download_again(entry)}"
                         for problem in weight_file_problems(path)]
    return problems
