"""Sampling helpers shared by training (sample grids) and synthesis."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def to_uint8_images(images) -> np.ndarray:
    """[N,H,W,3] float in [0,1] (or uint8) -> uint8."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return a


def grid_image(images, cols: int | None = None, pad: int = 2) -> np.ndarray:
    a = to_uint8_images(images)
    n, h, w, c = a.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = a[i]
    return out


def save_grid(images, path: Path, cols: int | None = None, scale: int = 1) -> Path:
    """Write a PNG grid of ``images`` atomically; ``scale`` enlarges small images (nearest)."""
    from medti.data.dataset import atomic_write_bytes, encode_png

    g = grid_image(images, cols=cols)
    if scale > 1:
        g = g.repeat(scale, axis=0).repeat(scale, axis=1)
    atomic_write_bytes(Path(path), encode_png(g))
    return Path(path)
