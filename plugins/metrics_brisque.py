"""`proxy.imaging_brisque`: BRISQUE (Mittal et al., 2012), a no-reference quality score, as a stand-in for VBench's
MUSIQ-based imaging quality. The features are our own code, following the `brisque` package's conventions (luma
in [0, 1], 36 natural-scene features at full and half scale); the LIVE-trained support-vector regression and its
feature ranges are that package's (plugins/data, Apache-2.0). Reported on VBench's scale, higher is better:
1 - clip(BRISQUE, 0, 100) / 100, frame mean, with VBench's preprocessing (longer side at most 512).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np

from evs_framework.hookspecs import hookimpl
from evs_framework.evaluation.metrics import ClipInfo, Metric, MetricResult
from evs_plugins.natural_scene import aggd, longer_side_at_most, mscn

DATA = Path(__file__).parent / "data"
RGB_TO_LUMA = np.array([0.2125, 0.7154, 0.0721])  # scikit-image's rgb2gray, which the model was trained with


@functools.cache
def model() -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray, np.ndarray]:
    """(support vectors, their coefficients, gamma, rho, feature minima, feature maxima) of the shipped SVR."""
    lines = (DATA / "brisque_live_svr.txt").read_text().splitlines()
    header = dict(line.split(" ", 1) for line in lines[:lines.index("SV")])
    ranges = json.loads((DATA / "brisque_live_range.json").read_text())
    rows = [line.split() for line in lines[lines.index("SV") + 1:] if line.strip()]
    vectors = np.zeros((len(rows), len(ranges["min"])))
    for i, row in enumerate(rows):
        for item in row[1:]:
            index, value = item.split(":")
            vectors[i, int(index) - 1] = float(value)
    coefficients = np.array([float(row[0]) for row in rows])
    return (vectors, coefficients, float(header["gamma"]), float(header["rho"]), np.array(ranges["min"]),
            np.array(ranges["max"]))


def features(luma: np.ndarray) -> list[float]:
    coefficients = mscn(luma, 1 / 255, cv2.BORDER_CONSTANT)
    shape, _, left, right = aggd(coefficients.ravel(), zero_is_right=True)
    found = [shape, (left + right) / 2]
    for products in (coefficients[:, :-1] * coefficients[:, 1:], coefficients[:-1, :] * coefficients[1:, :],
                     coefficients[:-1, :-1] * coefficients[1:, 1:], coefficients[1:, :-1] * coefficients[:-1, 1:]):
        found += list(aggd(products.ravel(), zero_is_right=True))
    return found


def brisque_frame(frame: np.ndarray) -> float:
    """The raw BRISQUE score of an RGB uint8 frame: about 0 for pristine photographs, higher for distorted ones."""
    luma = longer_side_at_most(frame).astype(np.float64) / 255.0 @ RGB_TO_LUMA
    half = cv2.resize(luma, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    vectors, coefficients, gamma, rho, low, high = model()
    scaled = -1 + 2 * (np.array(features(luma) + features(half)) - low) / (high - low)
    kernel = np.exp(-gamma * np.sum((vectors - scaled) ** 2, axis=1))
    return float(coefficients @ kernel - rho)


def imaging_brisque(frames: np.ndarray, clip: ClipInfo) -> MetricResult:
    scores = [1 - min(max(brisque_frame(frame), 0.0), 100.0) / 100 for frame in frames]
    return MetricResult(float(np.mean(scores)), tuple(scores))


@hookimpl
def register_metrics(register):
    register("proxy.imaging_brisque", Metric(
        "proxy.imaging_brisque", "proxy", imaging_brisque,
        description="1 - BRISQUE/100 (LIVE-trained SVR, frame mean), higher is better; not MUSIQ"))
