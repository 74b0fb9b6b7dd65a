"""Proxies built on classical optical flow (OpenCV's Farneback), in VBench's protocols where VBench uses a network.

- `proxy.motion_smoothness_flowvfi`: VBench's motion smoothness protocol (even frames in, odd frames predicted,
  (255 - mean |prediction - frame|) / 255), with flow-based interpolation in place of AMT-S;
- `proxy.dynamic_degree_farneback` (0/1) and `proxy.dynamic_degree_farneback_ratio` (continuous): VBench's rule
  (about 8 fps, mean of the top 5 % flow magnitudes, threshold 6 min(H, W) / 256) with Farneback in place of RAFT;
- `proxy.warp_error_farneback` (Lai et al.'s warp error, lower is better) and `proxy.motion_compensated_flicker`
  (temporal flickering after motion compensation, VBench's scale): flicker that motion does not explain.
None of these is comparable to VBench's numbers; they move the right way on controlled degradations.
"""

from __future__ import annotations

import cv2
import numpy as np

from evs_framework.hookspecs import hookimpl
from evs_framework.evaluation.metrics import ClipInfo, Metric, MetricResult

# Farneback parameters measured to track uniform pans closely (10.15 px found for a 10 px pan)
FARNEBACK = dict(pyr_scale=0.5, levels=4, winsize=21, iterations=5, poly_n=7, poly_sigma=1.5, flags=0)


def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) from RGB frame a to b: a(x) ~ b(x + flow(x))."""
    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in (a, b)]
    return cv2.calcOpticalFlowFarneback(gray[0], gray[1], None, **FARNEBACK)


def warp(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Backward warp: result(x) = image(x + field(x)), bilinear, edges replicated."""
    height, width = field.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(image, grid_x + field[..., 0], grid_y + field[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def motion_smoothness(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    evens, odds = frames[0::2], frames[1::2]
    errors = []
    for first, second, middle in zip(evens[:-1], evens[1:], odds):
        forward, backward = flow(first, second), flow(second, first)
        to_first = -0.25 * forward + 0.25 * backward  # Super-SloMo's linear estimate of the flows from t = 1/2
        to_second = 0.25 * forward - 0.25 * backward
        predicted = 0.5 * (warp(first.astype(np.float32), to_first) + warp(second.astype(np.float32), to_second))
        errors.append(float(np.abs(np.clip(np.round(predicted), 0, 255) - middle.astype(np.float32)).mean()))
    return MetricResult((255.0 - float(np.mean(errors))) / 255.0 if errors else 1.0)


def top_motion(frames: np.ndarray, fps: float) -> tuple[list[float], float, int]:
    """Per sampled pair, the mean of the top 5 % flow magnitudes; the threshold; the sampled frame count."""
    sampled = frames[::max(1, round(fps / 8))]
    magnitudes = []
    for a, b in zip(sampled[:-1], sampled[1:]):
        speed = np.linalg.norm(flow(a, b), axis=-1).ravel()
        top = np.sort(speed)[-max(1, int(len(speed) * 0.05)):]
        magnitudes.append(float(top.mean()))
    return magnitudes, 6.0 * min(frames.shape[1:3]) / 256.0, len(sampled)


def dynamic_degree(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    magnitudes, threshold, count = top_motion(frames, clip.fps)
    moving = sum(m > threshold for m in magnitudes)
    return MetricResult(float(bool(magnitudes) and moving >= round(4 * count / 16)))


def dynamic_ratio(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    magnitudes, threshold, _ = top_motion(frames, clip.fps)
    return MetricResult(float(np.mean(magnitudes)) / threshold if magnitudes else 0.0)


def aligned_pairs(frames: np.ndarray):
    """For each pair (t-1, t): frame t-1, frame t warped onto it, and the mask of pixels visible in both (flow
    forward-backward consistent and off motion boundaries, Lai et al.'s test)."""
    for previous, current in zip(frames[:-1], frames[1:]):
        forward, backward = flow(previous, current), flow(current, previous)
        backward_seen = warp(backward, forward)
        mismatch = np.sum((forward + backward_seen) ** 2, axis=-1)
        occluded = mismatch > 0.01 * (np.sum(forward**2, axis=-1) + np.sum(backward_seen**2, axis=-1)) + 0.5
        du, dv = np.gradient(forward[..., 0]), np.gradient(forward[..., 1])  # each: (d/dy, d/dx)
        boundary = du[0] ** 2 + du[1] ** 2 + dv[0] ** 2 + dv[1] ** 2 > 0.01 * np.sum(forward**2, axis=-1) + 0.002
        yield previous.astype(np.float32), warp(current.astype(np.float32), forward), ~(occluded | boundary)


def warp_error(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    errors = [float((np.sum(((previous - warped) / 255.0) ** 2, axis=-1) * visible).sum() / max(visible.sum(), 1))
              for previous, warped, visible in aligned_pairs(frames)]
    return MetricResult(float(np.mean(errors)) if errors else 0.0)


def compensated_flicker(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    differences = [float((np.abs(previous - warped).mean(axis=-1) * visible).sum() / max(visible.sum(), 1))
                   for previous, warped, visible in aligned_pairs(frames)]
    return MetricResult(1.0 - float(np.mean(differences)) / 255.0 if differences else 1.0)


@hookimpl
def register_metrics(register):
    for metric in (
        Metric("proxy.motion_smoothness_flowvfi", "proxy", motion_smoothness,
               description="VBench's motion smoothness protocol with Farneback flow interpolation instead of AMT-S"),
        Metric("proxy.dynamic_degree_farneback", "proxy", dynamic_degree, aggregate="fraction",
               description="VBench's dynamic degree rule (0/1 per video) with Farneback flow instead of RAFT"),
        Metric("proxy.dynamic_degree_farneback_ratio", "proxy", dynamic_ratio,
               description="mean top-5% flow magnitude over VBench's threshold: above 1 moves, below 1 is still"),
        Metric("proxy.warp_error_farneback", "proxy", warp_error, higher_is_better=False,
               description="Lai et al.'s warp error with Farneback flow (x1, frames in [0, 1]); not FlowNet2's"),
        Metric("proxy.motion_compensated_flicker", "proxy", compensated_flicker,
               description="temporal flickering after warping each frame onto the previous one, visible pixels only"),
    ):
        register(metric.name, metric)
