"""Small vectorised drawing helpers shared by the phantom generators.

All shapes are drawn on a normalised grid: ``x`` runs left to right and ``y`` top to bottom,
both over ``[-1, 1]`` at pixel centres, so one set of anatomy parameters renders the same
picture at any image size.  Edges are soft (a logistic ramp about one pixel wide), which
anti-aliases them without supersampling.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) coordinate arrays of shape (size, size) over [-1, 1] at pixel centres (read-only)."""
    c = ((np.arange(size, dtype=np.float64) + 0.5) / size) * 2.0 - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def soft_inside(signed: np.ndarray, size: int, width_px: float = 0.6) -> np.ndarray:
    """Map a signed distance (normalised units, negative inside) to a soft 0..1 inside mask."""
    width = width_px * 2.0 / size
    return 0.5 * (1.0 - np.tanh(signed / (2.0 * width)))


def blob_distance(
    x: np.ndarray,
    y: np.ndarray,
    cx: float,
    cy: float,
    a: float,
    b: float,
    angle: float = 0.0,
    harmonics: tuple[tuple[float, float], ...] = (),
) -> np.ndarray:
    """Approximate signed distance to an ellipse whose radius is modulated by harmonics.

    ``harmonics`` is ``((amp_k, phase_k), ...)`` for k = 2, 3, ...: the boundary radius is
    ``1 + sum(amp_k * cos(k * phi + phase_k))`` in the ellipse's own frame.
    """
    ca, sa = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    u = (dx * ca + dy * sa) / a
    v = (-dx * sa + dy * ca) / b
    rho = np.sqrt(u * u + v * v)
    radius = 1.0
    if harmonics:
        phi = np.arctan2(v, u)
        radius = 1.0 + sum(amp * np.cos((k + 2) * phi + ph) for k, (amp, ph) in enumerate(harmonics))
    return (rho - radius) * min(a, b)


def ellipse(
    x: np.ndarray,
    y: np.ndarray,
    size: int,
    cx: float,
    cy: float,
    a: float,
    b: float,
    angle: float = 0.0,
    harmonics: tuple[tuple[float, float], ...] = (),
    width_px: float = 0.6,
) -> np.ndarray:
    """Soft 0..1 mask of a (harmonically perturbed, rotated) ellipse."""
    return soft_inside(blob_distance(x, y, cx, cy, a, b, angle, harmonics), size, width_px)


def smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field whose correlation length is ``scale`` (normalised)."""
    sigma = max(scale * size / 2.0, 0.5)
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    std = field.std()
    return field / std if std > 0 else field


def bias_field(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Smooth multiplicative field exp(low-order polynomial) with roughly ``strength`` amplitude."""
    x, y = grid(size)
    c = rng.normal(0.0, 1.0, 5)
    poly = c[0] * x + c[1] * y + 0.5 * c[2] * x * y + 0.5 * c[3] * (x * x - 0.33) + 0.5 * c[4] * (y * y - 0.33)
    return np.exp(strength * poly / 2.0)


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a 2-D array (no-op for sigma <= 0)."""
    if sigma_px <= 0:
        return img
    return ndimage.gaussian_filter(img, sigma_px, mode="nearest")
