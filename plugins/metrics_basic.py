"""Metrics that need no weights: VBench's temporal flickering (exact) and numpy-only proxies.

Frames come as uint8 (T, H, W, 3) RGB. The formulas follow shared notes on VBench (its `temporal_flickering.py`
and the consistency aggregation of `subject_consistency.py`); the proxies are labelled as such.
"""

from __future__ import annotations

import numpy as np

from evs_framework.hookspecs import hookimpl
from evs_framework.evaluation.metrics import ClipInfo, Metric, MetricResult

HSV_BINS = (12, 6, 6)
SUBJECT_SHARE = 0.3  # the most salient 30 % of the first frame's pixels are the subject, the rest the background


def temporal_flickering(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    """(255 - mean over consecutive pairs of the mean absolute difference) / 255, as VBench computes it."""
    if len(frames) < 2:
        return MetricResult(1.0)
    pixels = frames.astype(np.float32)
    differences = [float(np.abs(a - b).mean()) for a, b in zip(pixels[:-1], pixels[1:])]
    return MetricResult((255.0 - float(np.mean(differences))) / 255.0)


def tenengrad(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    """Mean squared Sobel gradient of the luma, averaged over frames. Sharpness only: noise raises it too."""
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    padded = np.pad(luma, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = (padded[:, :-2, 2:] + 2 * padded[:, 1:-1, 2:] + padded[:, 2:, 2:]
          - padded[:, :-2, :-2] - 2 * padded[:, 1:-1, :-2] - padded[:, 2:, :-2])
    gy = (padded[:, 2:, :-2] + 2 * padded[:, 2:, 1:-1] + padded[:, 2:, 2:]
          - padded[:, :-2, :-2] - 2 * padded[:, :-2, 1:-1] - padded[:, :-2, 2:])
    per_frame = (gx**2 + gy**2).mean(axis=(1, 2))
    return MetricResult(float(per_frame.mean()), tuple(map(float, per_frame)))


def hsv_histograms(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per frame, the square root of the normalised 12x6x6 HSV histogram of the masked pixels (cosine of two of
    them is their Bhattacharyya coefficient)."""
    rgb = frames.astype(np.float32) / 255.0
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(high == r, (g - b) / safe % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    hue = np.where(chroma > 0, hue, 0.0)
    saturation = np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0)
    bins = [np.minimum((channel * n).astype(np.int64), n - 1) for channel, n in zip((hue, saturation, high), HSV_BINS)]
    index = (bins[0] * HSV_BINS[1] + bins[1]) * HSV_BINS[2] + bins[2]
    histograms = np.stack([np.bincount(frame_index[mask], minlength=int(np.prod(HSV_BINS))) for frame_index in index])
    histograms = histograms / np.maximum(histograms.sum(axis=1, keepdims=True), 1)
    return np.sqrt(histograms)


def consistency(features: np.ndarray) -> MetricResult:
    """VBench's consistency: per frame t >= 1, half of (cos to frame t-1, clamped at 0) plus (cos to frame 0)."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    terms = [0.5 * (max(0.0, float(unit[t] @ unit[t - 1])) + max(0.0, float(unit[t] @ unit[0])))
             for t in range(1, len(unit))]
    return MetricResult(float(np.mean(terms)) if terms else 1.0, tuple(terms))


def subject_mask(frame: np.ndarray) -> np.ndarray:
    """The top 30 % of a blurred spectral-residual saliency map (OpenCV contrib, no weights); without contrib, the
    centre box holding 30 % of the pixels."""
    import cv2

    height, width = frame.shape[:2]
    if hasattr(cv2, "saliency"):
        found, saliency = cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency(frame[..., ::-1])
        if found:
            saliency = cv2.GaussianBlur(saliency, (0, 0), sigmaX=max(height, width) / 64)
            return saliency >= np.quantile(saliency, 1 - SUBJECT_SHARE)
    side = SUBJECT_SHARE**0.5
    mask = np.zeros((height, width), dtype=bool)
    dy, dx = round(height * (1 - side) / 2), round(width * (1 - side) / 2)
    mask[dy:height - dy, dx:width - dx] = True
    return mask


def subject_consistency_hist(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    return consistency(hsv_histograms(frames, subject_mask(frames[0])))


def background_consistency_hist(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    return consistency(hsv_histograms(frames, ~subject_mask(frames[0])))


@hookimpl
def register_metrics(register):
    register("temporal_flickering", Metric(
        "temporal_flickering", "vbench_exact", temporal_flickering,
        description="VBench's formula: 1 - mean |frame t+1 - frame t| / 255; on moving video it mostly measures motion"))
    register("proxy.subject_consistency_hist", Metric(
        "proxy.subject_consistency_hist", "proxy", subject_consistency_hist, aggregate="frame_weighted",
        description="VBench's consistency rule over HSV histograms of the salient 30 % of the first frame; "
                    "an appearance-drift detector, not DINO"))
    register("proxy.background_consistency_hist", Metric(
        "proxy.background_consistency_hist", "proxy", background_consistency_hist, aggregate="frame_weighted",
        description="the same over the rest of the frame; not CLIP"))
    register("proxy.sharpness_tenengrad", Metric(
        "proxy.sharpness_tenengrad", "proxy", tenengrad,
        description="mean squared Sobel gradient of the luma; sharpness, not quality (noise raises it)"))
