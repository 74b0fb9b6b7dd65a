"""Natural-scene statistics shared by the NIQE and BRISQUE proxies: contrast-normalised coefficients and the
moment fit of an asymmetric generalised Gaussian."""

from __future__ import annotations

import math

import cv2
import numpy as np

SHAPES = np.arange(0.2, 10.001, 0.001)  # candidate shape parameters
# (E|x|)^2 / E[x^2] of a generalised Gaussian as a function of its shape, inverted by table lookup
RATIOS = np.array([math.gamma(2 / a) ** 2 / (math.gamma(1 / a) * math.gamma(3 / a)) for a in SHAPES])


def mscn(luma: np.ndarray, constant: float, border: int) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients under a 7x7 Gaussian window (sigma 7/6)."""
    mu = cv2.GaussianBlur(luma, (7, 7), 7 / 6, borderType=border)
    sigma = np.sqrt(np.abs(cv2.GaussianBlur(luma * luma, (7, 7), 7 / 6, borderType=border) - mu * mu))
    return (luma - mu) / (sigma + constant)


def aggd(values: np.ndarray, zero_is_right: bool = False) -> tuple[float, float, float, float]:
    """Shape, mean and left/right variances of an asymmetric generalised Gaussian fitted by moments."""
    left, right = values[values < 0], values[values >= 0] if zero_is_right else values[values > 0]
    left_std = math.sqrt(float(np.mean(left**2))) if left.size else 1e-6
    right_std = math.sqrt(float(np.mean(right**2))) if right.size else 1e-6
    gamma_hat = left_std / max(right_std, 1e-12)
    r_hat = float(np.mean(np.abs(values))) ** 2 / max(float(np.mean(values**2)), 1e-12)
    ratio = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    shape = float(SHAPES[np.argmin((RATIOS - ratio) ** 2)])
    spread = math.sqrt(math.gamma(1 / shape) / math.gamma(3 / shape))
    mean = (right_std - left_std) * math.gamma(2 / shape) / math.gamma(1 / shape) * spread
    return shape, mean, left_std**2, right_std**2


def longer_side_at_most(frame: np.ndarray, side: int = 512) -> np.ndarray:
    """VBench's imaging-quality preprocessing: frames whose longer side exceeds `side` are scaled down to it."""
    height, width = frame.shape[:2]
    if max(height, width) <= side:
        return frame
    scale = side / max(height, width)
    return cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)
