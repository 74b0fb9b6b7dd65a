"""Running a plan over one clip's latents, in sigma space.

The trajectory carries the current latent and its level, plus the latest clean estimate and noise
prediction (the source latent and no prediction at the start). Transfers and latent ops start from
those; a latent op or a conversion replaces the latent by its new clean estimate, at sigma 0; denoise ops call the role's sampler with the role's denoiser. Each op's model calls are counted and
recorded beside the plan's count for it, so a sampler or transfer that did not do what it declared shows. A plan
that branches keeps one trajectory per named latent: a fork copies one, a merge replaces several by their weighted
mean (latent, clean estimate and noise prediction alike). On CUDA
each op's peak memory is recorded too, which resets torch's peak-memory counter at the start of every op.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Protocol

import attrs
import torch

from evs_framework.denoiser import Denoiser
from evs_framework.errors import NumericalError
from evs_framework.composition import MAIN
from evs_framework.plan import ConvertOp, DenoiseOp, ForkOp, LatentOp, MergeOp, Plan, TransferOp
from evs_framework.plugins import Catalogue
from evs_framework.sampler import StepContext
from evs_framework.transfer import TransferContext


@attrs.define
class Trajectory:
    x: torch.Tensor
    sigma: float
    clean: torch.Tensor
    eps: torch.Tensor | None = None


def merged(parts: list[Trajectory], weights: tuple[float, ...]) -> Trajectory:
    """The weighted mean of trajectories at one level (the noise prediction only where every part has one)."""

    def mean(tensors):
        return sum(w * t for w, t in zip(weights, tensors))

    eps = None if any(p.eps is None for p in parts) else mean([p.eps for p in parts])
    return Trajectory(mean([p.x for p in parts]), parts[0].sigma, mean([p.clean for p in parts]), eps)


@attrs.frozen
class OpRecord:
    index: int  # counts from 1, as `evs plan` numbers ops and stages
    stage: int
    op: str
    model: str
    seconds: float
    unet_calls: int
    planned_unet_calls: int
    shape: tuple[int, ...] = ()  # the latents' shape after the op (frames, channels, h, w)
    peak_memory_bytes: int | None = None  # torch.cuda.max_memory_allocated during the op; None off CUDA


def describe_op(op) -> str:
    if isinstance(op, ConvertOp):
        return f"convert {op.source_space} -> {op.target_space} ({op.model})"
    if isinstance(op, LatentOp):
        return f"{op.name} ({op.model})"
    if isinstance(op, TransferOp):
        return f"transfer {op.strategy} -> {op.model}"
    if isinstance(op, ForkOp):
        return f"fork {op.latent} -> {', '.join(op.copies)}"
    if isinstance(op, MergeOp):
        return f"merge {', '.join(op.merged)} -> {op.latent}"
    return f"denoise {op.model}"


def _nan_settings(op, denoiser: Denoiser | None) -> list[str]:
    """The op's settings that are NaN or infinite (a value given in the spec, not the model's arithmetic)."""
    settings = dict(getattr(op, "params", {}))
    settings.update(getattr(op, "sampler_params", {}))
    if isinstance(op, DenoiseOp):
        settings["guidance"] = denoiser.guidance if op.guidance is None and denoiser is not None else op.guidance
    return [name for name, value in settings.items()
            if isinstance(value, float) and not math.isfinite(value)]


def _precision(denoiser: Denoiser | None) -> str:
    """The dtype of the weights the op's model runs with, in words."""
    unet = getattr(getattr(denoiser, "backend", None), "unet", None)
    weights = next(iter(unet.parameters()), None) if isinstance(unet, torch.nn.Module) else None
    return str(weights.dtype).removeprefix("torch.") if weights is not None else "an unknown precision"


def _numerical_error(index: int, op, sigma: float, denoiser: Denoiser | None) -> NumericalError:
    where = f"op {index + 1} ({describe_op(op)}) produced NaN or infinite latents at sigma {sigma:.4g}"
    bad = _nan_settings(op, denoiser)
    if bad:
        return NumericalError(f"{where}: its {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} NaN or infinite; "
                              f"give finite numbers in the spec")
    precision = _precision(denoiser)
    if precision in ("float16", "bfloat16"):
        return NumericalError(f"{where}, running in {precision}; half precision overflows in some models: try --dtype "
                              f"float32, or a lower guidance")
    return NumericalError(f"{where}, running in {precision} with finite settings; the weights may be damaged or not "
                          f"this model's: download them again, or lower the guidance")


def _check_finite(x: torch.Tensor, index: int, op, sigma: float, denoiser: Denoiser | None) -> None:
    if not torch.isfinite(x).all():
        raise _numerical_error(index, op, sigma, denoiser)


def _check_steps(finite: list[torch.Tensor], index: int, op: DenoiseOp, denoiser: Denoiser) -> None:
    """The steps' finiteness flags, kept on the device while the op ran, read once: the first bad step is named."""
    if not finite:
        return
    flags = torch.stack(finite)
    if not bool(flags.all()):
        raise _numerical_error(index, op, op.sigmas[int((~flags).nonzero()[0])], denoiser)


class StepObserver(Protocol):
    def step_start(self, op: DenoiseOp, step: int, sigma: float) -> None: ...

    def step_end(self, op: DenoiseOp, step: int, sigma: float, latents: torch.Tensor) -> None: ...


@contextlib.contextmanager
def _guidance(denoiser: Denoiser, guidance: float | None):
    """The denoiser with a stage's own guidance for the op (its calls still count on it)."""
    if guidance is None:
        yield
        return
    model_guidance, denoiser.guidance = denoiser.guidance, guidance
    try:
        yield
    finally:
        denoiser.guidance = model_guidance


def unplanned_calls(records: list[OpRecord]) -> list[str]:
    """Each op whose model calls differ from the plan's count, in words (empty when the plan held)."""
    return [f"op {r.index} ({r.op}, {r.model}): {r.unet_calls} UNet calls made, {r.planned_unet_calls} planned"
            for r in records if r.unet_calls != r.planned_unet_calls]


def execute(plan: Plan, denoisers: dict[str, Denoiser], source: torch.Tensor, catalogue: Catalogue,
            generator: torch.Generator, observer: StepObserver | None = None, video_state: dict | None = None,
            convert: Callable[[ConvertOp, torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, list[OpRecord]]:
    """Run every op of `plan` from the clean `source` latents (frames, channels, h, w); returns clean latents.
    `video_state` is the video's state that samplers and transfers share (the runner passes the one its plugins
    see); a new one when None. `convert(op, latents)` carries out ConvertOps (the runner's goes through the
    models' VAEs); a plan that has them needs it."""
    latents = {MAIN: Trajectory(x=source, sigma=0.0, clean=source)}
    video_state = {} if video_state is None else video_state
    records = []
    cuda = source.device if source.device.type == "cuda" else None
    for index, op in enumerate(plan.ops):
        calls_before = sum(d.calls for d in denoisers.values())
        if cuda is not None:
            torch.cuda.reset_peak_memory_stats(cuda)
        started = time.perf_counter()
        state = None if isinstance(op, MergeOp) else latents[op.latent]  # a merge makes its latent
        if isinstance(op, ForkOp):
            del latents[op.latent]
            for name in op.copies:
                latents[name] = Trajectory(state.x.clone(), state.sigma, state.clean.clone(),
                                           None if state.eps is None else state.eps.clone())
        elif isinstance(op, MergeOp):
            state = merged([latents.pop(name) for name in op.merged], op.weights)
            latents[op.latent] = state
        elif isinstance(op, ConvertOp):
            if convert is None:
                raise ValueError("the plan converts between latent spaces; pass `convert` to execute it")
            state.clean = convert(op, state.clean)
            state.x, state.sigma, state.eps = state.clean, 0.0, None
        elif isinstance(op, LatentOp):
            state.clean = catalogue.get("latent_ops", op.name)(state.clean, **op.params)
            state.x, state.sigma, state.eps = state.clean, 0.0, None
        elif isinstance(op, TransferOp):
            transfer = catalogue.get("transfers", op.strategy)
            context = TransferContext(state.clean, state.eps, state.sigma, op.sigma_to, op.levels, denoisers[op.model],
                                      plan.inversion_guidance, generator, op, op.params, video_state, state.x)
            state.x, state.sigma = transfer.run(context), op.sigma_to
        else:
            sampler = catalogue.get("samplers", op.sampler)
            denoiser = denoisers[op.model]
            op_state: dict = {}
            finite = []  # one flag a step, left on the device: the loop never waits for the GPU to answer
            with _guidance(denoiser, op.guidance):
                for step, (sigma, sigma_next) in enumerate(zip(op.sigmas, op.sigmas[1:])):
                    if observer is not None:
                        observer.step_start(op, step, sigma)
                    context = StepContext(step, op.sigmas, op, op.sampler_params, op_state, video_state, generator)
                    state.x, prediction = sampler.step(denoiser, state.x, context)
                    state.clean, state.eps, state.sigma = prediction.x0, prediction.eps, sigma_next
                    finite.append(torch.isfinite(state.x).all())
                    if observer is not None:
                        observer.step_end(op, step, sigma_next, state.x)
            _check_steps(finite, index, op, denoiser)
        if isinstance(op, (ConvertOp, LatentOp, TransferOp)):
            _check_finite(state.x, index, op, state.sigma, denoisers.get(op.model))
        if cuda is not None:
            torch.cuda.synchronize(cuda)
        planned = op.unet_calls if isinstance(op, (TransferOp, DenoiseOp)) else 0
        records.append(OpRecord(index + 1, op.stage + 1, type(op).__name__, op.model, time.perf_counter() - started,
                                sum(d.calls for d in denoisers.values()) - calls_before, planned, tuple(state.x.shape),
                                torch.cuda.max_memory_allocated(cuda) if cuda is not None else None))
    return latents[plan.ops[-1].latent].x, records
