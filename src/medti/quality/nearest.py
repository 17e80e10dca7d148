"""Nearest training image of every query image, in pixel space and in a feature space.

What the memorisation audit asks of each synthetic (or held-out real) image: which training image is it closest
to, how close, and under which small transform.

Pixel space (:class:`PixelSearch`): normalised correlation, i.e. each image minus its mean, divided by its norm,
so a copy whose brightness or contrast was changed is still a copy (a global gain and offset cancel out). Copies
rarely arrive untouched, so the search also tries

- a horizontal flip of every training image (a mirrored patient is still that patient);
- every translation of up to ``shift`` pixels each way: the correlation is taken over the central window the
  shifted images share, and the best translation wins;
- images box-averaged to about ``resolution`` pixels first: a light blur that makes re-noised copies and
  sub-pixel shifts look like their source, and shrinks each image to a few thousand numbers so the search is
  matrix products over all pairs (float32, chunked), not Python loops.

Feature space (:class:`FeatureSearch`): cosine similarity of a network's features (see
:mod:`medti.quality.features`), against every training image and its mirror image.

Both return a :class:`Nearest`: per query, the best similarity, the index of the training image, and the transform
that maps the training image onto the query.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: query images per matrix product: 1024 x a few thousand float32 numbers keeps each block ~10 MB
CHUNK = 1024
#: reference windows per matrix product (several shifts of every training image at once)
GROUP_BYTES = 64 * 2**20


@dataclass
class Nearest:
    """Per query image: ``similarity`` (float32), ``index`` of its nearest reference image, whether that image was
    mirrored (``flip``), and the translation (dy, dx) in original pixels that carries the reference onto the query
    (``shift``, N x 2)."""

    similarity: np.ndarray
    index: np.ndarray
    flip: np.ndarray
    shift: np.ndarray

    def __len__(self) -> int:
        return len(self.similarity)

    def transform(self, i: int) -> str:
        """How reference ``index[i]`` maps onto query ``i``, in words: ``identity``, ``flip``,
        ``shift +1,-2`` (down, right in pixels) or ``flip, shift ...``."""
        parts = ["flip"] if self.flip[i] else []
        dy, dx = (int(v) for v in self.shift[i])
        if dy or dx:
            parts.append(f"shift {dy:+d},{dx:+d}")
        return ", ".join(parts) or "identity"


def _standardise(x: np.ndarray) -> np.ndarray:
    """Rows minus their mean, divided by their norm (a constant row stays all zeros: it correlates with nothing)."""
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-6)


def box_factor(size: tuple[int, int], resolution: int) -> int:
    """The integer box-averaging factor that brings the shorter side of ``size`` down to about ``resolution``."""
    return max(1, min(size) // max(1, resolution))


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """N x C x H x W (uint8 or float) -> float32 box averages over ``factor`` x ``factor`` blocks (edges that do
    not fill a block are dropped)."""
    h2, w2 = images.shape[2] // factor, images.shape[3] // factor
    if factor == 1:
        return images.astype(np.float32)
    # a sum of strided views: several times faster than a reshape-and-mean over two axes
    out = np.zeros((*images.shape[:2], h2, w2), np.float32)
    for a in range(factor):
        for b in range(factor):
            out += images[:, :, a: h2 * factor: factor, b: w2 * factor: factor]
    return out / (factor * factor)


class PixelSearch:
    """Nearest of ``reference`` (N x C x H x W uint8) for query images of the same shape, by normalised correlation,
    trying mirror images (``flip``) and translations of up to ``shift`` pixels each way, compared after box
    averaging to about ``resolution`` pixels.

    Each image is standardised (minus its mean, over its norm), then the mean of the standardised reference images
    is subtracted and the result standardised again: the anatomy every case shares would otherwise make every
    pair look alike (any two prostate phantom slices correlate at 0.95 or more), and what is left is what makes
    an image this patient's. Both steps are the same for query and reference, so a copy still correlates at 1."""

    def __init__(self, reference: np.ndarray, *, shift: int = 3, flip: bool = True, resolution: int = 32,
                 chunk: int = CHUNK):
        if reference.ndim != 4 or len(reference) == 0:
            raise ValueError(f"reference images must be a non-empty N x C x H x W array, got shape {reference.shape}")
        h, w = reference.shape[2:]
        if shift < 0 or 4 * shift >= min(h, w):
            raise ValueError(f"shift {shift} leaves too little of a {h}x{w} image to compare; use 0 to "
                             f"{max(0, (min(h, w) - 1) // 4)}")
        self.shift, self.flip, self.chunk = shift, flip, chunk
        self.shape = reference.shape[1:]
        self.factor = box_factor((h, w), resolution)
        k = self.factor
        self.window = ((h - 2 * shift) // k * k, (w - 2 * shift) // k * k)
        self.ref = reference
        # every (mirror, dy, dx), in original pixels: the window of the reference that lies under the query's
        # central window; shifting before box averaging keeps odd shifts exact
        self.variants = [(f, dy, dx) for f in ((False, True) if flip else (False,))
                         for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
        total = sum(self._windows(reference[i: i + chunk], 0, 0, residual=False).sum(axis=0)
                    for i in range(0, len(reference), chunk))
        self.mean = (total / len(reference))[None].astype(np.float32)

    @property
    def description(self) -> str:
        k, s = self.factor, self.shift
        flip = " and its mirror image" if self.flip else ""
        return (f"normalised correlation of what differs from the training images' mean, after {k}x{k} box "
                f"averaging; best over every training image{flip} shifted by up to {s} px each way")

    def _windows(self, x: np.ndarray, dy: int, dx: int, mirror: bool = False, residual: bool = True) -> np.ndarray:
        """The (shifted) central window of each image, box-averaged, standardised, minus the reference mean,
        standardised again; N x D float32."""
        if mirror:
            x = x[..., ::-1]
        s, (h, w) = self.shift, self.window
        z = _standardise(downsample(x[:, :, s + dy: s + dy + h, s + dx: s + dx + w], self.factor).reshape(len(x), -1))
        if not residual:
            return z
        r = _standardise(z - self.mean)
        r[~z.any(axis=1)] = 0  # a blank window stays blank: two blank images are not copies of each other
        return r

    def _groups(self) -> Iterator[tuple[list[int], np.ndarray]]:
        """The variants in groups, each with its reference windows stacked (variant-major) into one matrix of at
        most ~GROUP_BYTES: one product per group is several times faster than one per variant."""
        per_variant = len(self.ref) * self.mean.shape[1] * 4
        size = max(1, GROUP_BYTES // per_variant)
        for g in range(0, len(self.variants), size):
            vs = list(range(g, min(g + size, len(self.variants))))
            yield vs, np.concatenate([self._windows(self.ref[i: i + self.chunk], *self.variants[v][1:],
                                                    mirror=self.variants[v][0])
                                      for v in vs for i in range(0, len(self.ref), self.chunk)])

    def __call__(self, images: np.ndarray) -> Nearest:
        if images.shape[1:] != self.shape:
            raise ValueError(f"query images are {images.shape[1:]}, the reference images {self.shape}")
        n, t = len(images), len(self.ref)
        best = np.full(n, -np.inf, dtype=np.float32)
        column = np.zeros(n, dtype=np.int64)  # variant * t + reference index
        query = np.concatenate([self._windows(images[i: i + self.chunk], 0, 0) for i in range(0, n, self.chunk)]) \
            if n else np.zeros((0, self.mean.shape[1]), np.float32)
        for vs, ref in self._groups():
            for i in range(0, n, self.chunk):
                sims = query[i: i + self.chunk] @ ref.T
                j = sims.argmax(axis=1)
                s = np.take_along_axis(sims, j[:, None], axis=1)[:, 0]
                better = s > best[i: i + self.chunk]
                best[i: i + self.chunk][better] = s[better]
                column[i: i + self.chunk][better] = vs[0] * t + j[better]
        variant, index = np.divmod(column, t)
        flips = np.array([self.variants[v][0] for v in variant], dtype=bool)
        # query(y, x) ~ ref(y + dy, x + dx): the reference moved by (-dy, -dx)
        shifts = -np.array([self.variants[v][1:] for v in variant], dtype=np.int64).reshape(n, 2)
        return Nearest(np.clip(best, -1.0, 1.0), index, flips, shifts)


class FeatureSearch:
    """Nearest of the reference features (N x D, with those of the mirrored reference images when given) by cosine
    similarity about the reference mean: pooled ReLU features all point into one corner of feature space (raw
    cosines of any two prostate slices are 0.99 or more), and centring them, as the pixel search subtracts the
    mean image, leaves what tells one case from another."""

    def __init__(self, reference: np.ndarray, mirrored: np.ndarray | None = None, *, chunk: int = CHUNK):
        self.n = len(reference)
        refs = np.concatenate([reference] if mirrored is None else [reference, mirrored]).astype(np.float32)
        self.mean = refs.mean(axis=0, keepdims=True)
        self.ref = _unit(refs - self.mean)
        self.chunk = chunk

    def __call__(self, features: np.ndarray) -> Nearest:
        q = _unit(features.astype(np.float32) - self.mean)
        n = len(q)
        best = np.zeros(n, dtype=np.float32)
        index = np.zeros(n, dtype=np.int64)
        for i in range(0, n, self.chunk):
            sims = q[i: i + self.chunk] @ self.ref.T
            j = sims.argmax(axis=1)
            best[i: i + self.chunk] = np.take_along_axis(sims, j[:, None], axis=1)[:, 0]
            index[i: i + self.chunk] = j
        return Nearest(np.clip(best, -1.0, 1.0), index % self.n, index >= self.n, np.zeros((n, 2), np.int64))


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12)
