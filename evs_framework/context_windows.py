"""Clips longer than a motion model's context: overlapping windows whose predictions are blended at every step.

A model whose plan gives it a context (`PlannedModel.context`: AnimateDiff-style motion modules) sees at most
`frames` frames per evaluation. Given a longer latent, its denoiser evaluates each window of `frames` consecutive
frames, `overlap` of them shared with the next window, at the same sigma, and blends the windows' clean estimates
and noise predictions frame by frame. Both blends use the same weights, so x = x0 + sigma * eps still holds and the
samplers see one ordinary prediction for the whole clip. A frame's weight in a window rises linearly from the
window's edges to its middle, so a window hands over to the next gradually across their shared frames. Windows
keep their place at every step; the last one ends at the clip's last frame.

`framed(plan, frames)` is the plan of a clip of that length: each op of a windowed model costs its calls times
the number of windows.
"""

from __future__ import annotations

import attrs
import torch

from evs_framework.plan import DenoiseOp, Plan, TransferOp


@attrs.frozen
class Context:
    """A model's resolved context: `frames` per evaluation, `overlap` shared by neighbouring windows."""

    frames: int
    overlap: int

    def starts(self, total: int) -> list[int]:
        """The first frame of each window over `total` frames; one window when the clip fits."""
        if total <= self.frames:
            return [0]
        stride = self.frames - self.overlap
        count = -(-(total - self.frames) // stride) + 1
        return [min(i * stride, total - self.frames) for i in range(count)]

    def windows(self, total: int) -> int:
        return len(self.starts(total))


def frame_weights(length: int, device=None) -> torch.Tensor:
    """A window's blending weight per frame: 1, 2, ... up to the middle and back down; never zero."""
    position = torch.arange(length, dtype=torch.float32, device=device)
    return torch.minimum(position + 1, length - position)


def blended(context: Context, x: torch.Tensor, predict) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) for latents x (frames, ...), `predict(window) -> (x0, eps)` evaluated on each window's frames and
    blended; `predict(x)` itself when the clip fits one window."""
    total = x.shape[0]
    starts = context.starts(total)
    if len(starts) == 1:
        return predict(x)
    x0, eps = torch.zeros_like(x), torch.zeros_like(x)
    weight_sum = torch.zeros(total, device=x.device, dtype=torch.float32)
    weights = frame_weights(context.frames, x.device)  # made on the device: no host copy in the sampling loop
    shape = (-1,) + (1,) * (x.dim() - 1)
    latent_weights = weights.view(shape).to(x.dtype)
    for start in starts:
        frames = slice(start, start + context.frames)
        window_x0, window_eps = predict(x[frames])
        x0[frames] += latent_weights * window_x0
        eps[frames] += latent_weights * window_eps
        weight_sum[frames] += weights
    norm = weight_sum.view(shape).to(x.dtype)
    return x0 / norm, eps / norm


def framed(plan: Plan, frames: int) -> Plan:
    """The plan of a clip of `frames` latent frames: an op of a model with a context counts its calls per window."""
    windows = {role: model.context.windows(frames) for role, model in plan.models.items() if model.context}
    if all(count == 1 for count in windows.values()):
        return plan
    ops = tuple(attrs.evolve(op, windows=windows[op.model], unet_calls=op.unet_calls * windows[op.model])
                if isinstance(op, (DenoiseOp, TransferOp)) and windows.get(op.model, 1) > 1 else op for op in plan.ops)
    notes = tuple(f"{role} {plan.models[role].entry.name}: {frames} frames run as {count} windows of "
                  f"{plan.models[role].context.frames} (overlap {plan.models[role].context.overlap}), blended at each "
                  f"step; its calls count once per window" for role, count in windows.items() if count > 1)
    return attrs.evolve(plan, ops=ops, notes=plan.notes + notes, frames=frames)
