"""Reference scorers: finding evidence measured from image pixels alone.

They never look at labels or masks; they are what later steps use to check that *generated*
images show what their prompt asked for (a sampled "csPCa" image should carry a lesion, an
inpainted mask should gain lesion evidence, a composed "pleural_effusion AND pneumonia"
radiograph should show both).  They are deliberately simple and interpretable, work on any
image size >= 32 px (all lengths scale with the image) and smooth before measuring, so the
blur and noise of a small diffusion model do not break them.

Prostate (``lesion_score``), channels R = T2W, G = ADC, B = high-b DWI:
    after smoothing, each channel is compared with its median over the central search disc
    (where the gland lies); the lesion map is ``DWI excess + 0.5 * ADC drop + 0.25 * T2 drop``
    with the ADC and T2 terms each capped at the DWI excess (restricted diffusion must be
    present for the drops to count).  The score is the maximum of the map over the search
    disc, or over ``region`` when given.

Chest x-ray (``cxr_scores``), grey radiograph:
    the smoothed image is normalised to an opacity ``o`` (0 = aerated lung, 1 = mediastinal
    soft tissue) and thresholded at 0.5 into an aerated-lung mask.

    * ``cardiomegaly`` = the cardiothoracic ratio: the widest non-aerated gap across the
      midline with aerated lung on both sides (rows in the lower half of the lungs, above the
      right hemidiaphragm, bounds not in a lateral costophrenic recess) over the widest
      aerated extent (between the lateral lung edges); edges are located to sub-pixel.
    * ``pleural_effusion`` = per hemithorax, the slope (Theil-Sen, rows per column) of the
      lung's lower boundary over the lateral 40 % of its columns, measured from the chest wall
      inward: a normal sharp costophrenic angle is the lowest point and the dome rises
      medially (< 0); fluid with a meniscus is highest at the wall and falls medially (> 0).
      The larger of the two sides, or, when larger, ``4 x (|difference in height of the two
      costophrenic angles| / lung height - 0.08)``: an angle raised beyond the normal dome
      asymmetry, which catches fluid at a base too narrow to show a meniscus (next to a big
      heart) but is blind to symmetric bilateral effusions, which the slope sees.
    * ``pneumonia`` = the largest smoothed opacity inside the lung fields, taken only
      between the first and last aerated pixel of each column (so that the heart, the
      diaphragm and a basal effusion are outside it): a consolidation surrounded by
      aerated lung.

``FINDING_THRESHOLDS`` holds the decision threshold of each score (above = present).  They
were chosen by ``experiments/phantom_scorers.py`` on phantoms (seed 1000, n = 600, 64 px) as
the midpoint between the classes that maximises balanced accuracy, rounded; cardiomegaly uses
the clinical definition CTR > 0.5.  The AUCs and the thresholds' accuracies are recorded in
``docs/results.md`` (section ``phantom-scorers``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: score > threshold => finding present (see module docstring for how they were chosen).
FINDING_THRESHOLDS: dict[str, float] = {
    "csPCa": 0.25,
    "pleural_effusion": 0.08,
    "pneumonia": 0.42,
    "cardiomegaly": 0.5,
}

MIN_SIZE = 32
#: Effusion score from costophrenic-angle asymmetry: gain x (height difference / lung height - free).
ASYMMETRY_GAIN, ASYMMETRY_FREE = 4.0, 0.08


def _as_float_image(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"image must be HxW or HxWx3, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=-1)
    if min(a.shape[:2]) < MIN_SIZE:
        raise ValueError(f"image is {a.shape[0]}x{a.shape[1]}; the scorers need at least {MIN_SIZE} px")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"image dtype {a.dtype} is not uint8 or a real float")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    return np.clip(a, 0.0, 1.0)


def _norm_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    y = ((np.arange(h) + 0.5) / h) * 2 - 1
    x = ((np.arange(w) + 0.5) / w) * 2 - 1
    return np.meshgrid(x, y)


def _check_region(region: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if region is None:
        return None
    r = np.asarray(region)
    if r.shape != shape:
        raise ValueError(f"region has shape {r.shape}, image is {shape}")
    r = r.astype(bool)
    if not r.any():
        raise ValueError("region is empty")
    return r


# ----------------------------------------------------------------------------------- prostate
def lesion_map(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lesion evidence map, search-disc mask) of a prostate T2W/ADC/DWI image."""
    img = _as_float_image(image)
    h, w = img.shape[:2]
    scale = min(h, w) / 64.0
    sm = np.stack([ndimage.gaussian_filter(img[..., c], 1.0 * scale, mode="nearest") for c in range(3)])
    x, y = _norm_grid(h, w)
    disc = (x * x + y * y) < 0.7**2
    search = disc & (sm[0] > 0.1)
    if search.sum() < 10:
        search = disc
    ref = np.median(sm[:, search], axis=1)
    d_dwi = sm[2] - ref[2]
    cap = np.maximum(d_dwi, 0.0)
    d_adc = np.clip(ref[1] - sm[1], 0.0, cap)
    d_t2 = np.clip(ref[0] - sm[0], 0.0, cap)
    return d_dwi + 0.5 * d_adc + 0.25 * d_t2, search


def lesion_score(image: np.ndarray, region: np.ndarray | None = None) -> float:
    """csPCa evidence: max of the lesion map over the central search disc or over ``region``."""
    m, search = lesion_map(image)
    r = _check_region(region, m.shape)
    return float(m[r if r is not None else search].max())


# ----------------------------------------------------------------------------------- chest x-ray
def _crossing(a: float, b: float) -> float:
    """Fractional position in [0, 1] where a linear ramp from a to b crosses 0.5."""
    d = b - a
    return 0.5 if d == 0 else float(np.clip((0.5 - a) / d, 0.0, 1.0))


def cxr_opacity(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(opacity, body mask): the smoothed grey image normalised so that aerated lung ~ 0 and
    the mediastinum ~ 1, and the patient (opacity > 0.25 with the enclosed lungs filled in)."""
    img = _as_float_image(image).mean(axis=-1)
    h, w = img.shape
    scale = min(h, w) / 64.0
    sm = ndimage.gaussian_filter(img, 0.8 * scale, mode="nearest")
    x, y = _norm_grid(h, w)
    lungish = (np.abs(x) < 0.85) & (y > -0.7) & (y < 0.3)
    dark = np.percentile(sm[lungish], 10)
    mid = np.median(sm[(np.abs(x) < 0.08) & (y > -0.7) & (y < 0.3)])
    o = (sm - dark) / max(mid - dark, 1e-3)
    return o, ndimage.binary_fill_holes(o > 0.25)


def _lung_mask(o: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Aerated lung: o < 0.5 inside the body; connected components larger than 1 % of the
    image and wider than 8 % of it that do not touch the image border."""
    h, w = o.shape
    scale = min(h, w) / 64.0
    inner = ndimage.binary_erosion(body, iterations=max(2, int(round(2 * scale))))
    aer = (o < 0.5) & inner
    lab, n = ndimage.label(aer)
    if n == 0:
        return aer
    sizes = ndimage.sum(aer, lab, index=np.arange(1, n + 1))
    edge = {int(v) for v in np.unique(np.concatenate([lab[:, 0], lab[:, -1], lab[0, :], lab[-1, :]]))}
    spans = ndimage.find_objects(lab)
    keep = [
        i + 1
        for i, s in enumerate(sizes)
        if s > 0.01 * h * w and (i + 1) not in edge and spans[i][1].stop - spans[i][1].start > 0.08 * w
    ]
    return np.isin(lab, keep)


def _cardiothoracic_ratio(o: np.ndarray, lung: np.ndarray) -> float:
    h, w = o.shape
    scale = min(h, w) / 64.0
    cols = np.arange(w)
    rows_any = np.flatnonzero(lung.any(axis=1))
    if rows_any.size == 0:
        return float("nan")
    # thoracic width: widest aerated extent, sub-pixel edges
    best_t, mid_col = 0.0, w / 2.0
    for r in rows_any:
        idx = cols[lung[r]]
        lo, hi = idx[0], idx[-1]
        left = lo - (1 - _crossing(o[r, lo - 1], o[r, lo])) if lo > 0 else float(lo)
        right = hi + _crossing(o[r, hi], o[r, hi + 1]) if hi < w - 1 else float(hi)
        if right - left > best_t:
            best_t, mid_col = right - left, (left + right) / 2.0
    # cardiac rows: the lower half of the lungs above the image-left (right) hemidiaphragm, i.e.
    # above the highest of the lowest aerated rows of the columns 15-40 % in from that lung's
    # lateral edge (lateral to any heart, medial to the costophrenic recess)
    mc = int(round(mid_col))
    left_cols = np.flatnonzero(lung[:, :mc].any(axis=0))
    if left_cols.size < 4:
        return float("nan")
    lo, hi = left_cols[0], left_cols[-1]
    probe = [c for c in range(int(lo + 0.15 * (hi - lo)), int(lo + 0.4 * (hi - lo)) + 1) if lung[:, c].any()]
    dome = min((np.flatnonzero(lung[:, c])[-1] for c in probe), default=h) - scale
    right_cols = np.flatnonzero(lung[:, mc:].any(axis=0)) + mc
    top = rows_any[0] + 0.45 * (dome - rows_any[0])  # the apices' rounded medial borders are not cardiac
    best_h = 0.0
    for r in rows_any:
        if r >= dome or r < top or lung[r, mc]:
            continue
        left_lung = np.flatnonzero(lung[r, :mc])
        right_lung = np.flatnonzero(lung[r, mc:])
        if left_lung.size == 0 or right_lung.size == 0:
            continue
        a = left_lung[-1]
        b = mc + right_lung[0]
        # a bound in a lateral recess is a diaphragm row, not a heart border
        if a < lo + 0.4 * (hi - lo) or b > right_cols[-1] - 0.1 * (right_cols[-1] - right_cols[0]):
            continue
        left = a + _crossing(o[r, a], o[r, a + 1])
        right = b - (1 - _crossing(o[r, b - 1], o[r, b]))
        best_h = max(best_h, right - left)
    return best_h / best_t if best_t > 0 and best_h > 0 else float("nan")


def _effusion_score(o: np.ndarray, lung: np.ndarray) -> float:
    from scipy import stats  # ~0.3 s to import; only the effusion score needs it

    h, w = lung.shape
    cols = np.flatnonzero(lung.any(axis=0))
    if cols.size < 8:
        return float("nan")
    # sub-pixel height of each column's lowest aerated point (the lung's lower boundary)
    low = np.full(w, np.nan)
    for c in cols:
        r = np.flatnonzero(lung[:, c])[-1]
        low[c] = r + (_crossing(o[r, c], o[r + 1, c]) if r < h - 1 else 0.0)
    top = np.flatnonzero(lung.any(axis=1))[0]
    height = max(float(np.nanmax(low) - top), 1.0)
    mid = (cols[0] + cols[-1]) / 2.0
    out, angle = [], []
    for side in (cols[cols < mid], cols[cols > mid][::-1]):  # each ordered lateral -> medial
        if side.size < 6:
            continue
        lateral = side[1 : max(4, int(round(0.4 * side.size)))]  # the edge column is partial-volume
        y = low[lateral]
        angle.append(float(np.nanmax(y)))  # the costophrenic angle: lowest lateral point
        basal = y >= top + 0.8 * (np.nanmax(y) - top)
        if basal.sum() < 3:
            continue
        d = np.abs(lateral[basal] - lateral[0]).astype(float)
        out.append(float(stats.theilslopes(y[basal], d)[0]))  # rows per column, + = falls medially
    if len(angle) == 2:
        # a base too narrow to show a meniscus (a big heart fills it): one costophrenic angle
        # standing higher than the other by more than the normal dome asymmetry
        out.append(ASYMMETRY_GAIN * (abs(angle[0] - angle[1]) / height - ASYMMETRY_FREE))
    return float(max(out)) if out else float("nan")


def _pneumonia_score(o: np.ndarray, lung: np.ndarray, region: np.ndarray | None = None) -> float:
    h, w = o.shape
    span = np.zeros_like(lung)
    for c in np.flatnonzero(lung.any(axis=0)):
        r = np.flatnonzero(lung[:, c])
        span[r[0] : r[-1] + 1, c] = True
    scale = min(h, w) / 64.0
    # 2 px at 64 px, where the threshold was chosen, and proportionally at other sizes.  (It was
    # round(1.5 * scale): also 2 at 64 px, but 3 at 128, which left the aortic knob's edge inside the
    # span, so a quarter of pneumonia-free 128-px phantoms scored above the threshold.)
    span = ndimage.binary_erosion(span, iterations=max(1, int(round(2 * scale))))
    if region is not None:
        span &= region
    if not span.any():
        return 0.0
    sm = ndimage.gaussian_filter(o, 1.0 * scale, mode="nearest")
    return float(sm[span].max())


def cxr_scores(image: np.ndarray, region: np.ndarray | None = None) -> dict[str, float]:
    """Evidence for each chest x-ray finding (see the module docstring); cardiomegaly is the CTR.

    ``region`` (bool HxW) restricts the pneumonia search to lung inside it (0.0 when there is
    none); effusion and CTR are whole-image measurements and ignore it.  A score is NaN when
    the structure it measures cannot be found (no delineable lungs, e.g. not a radiograph).
    """
    o, body = cxr_opacity(image)
    r = _check_region(region, o.shape)
    lung = _lung_mask(o, body)
    return {
        "pleural_effusion": _effusion_score(o, lung),
        "pneumonia": _pneumonia_score(o, lung, r),
        "cardiomegaly": _cardiothoracic_ratio(o, lung),
    }


# ----------------------------------------------------------------------------------- dispatcher
_MODALITY_ALIASES = {"prostate_mri": "prostate_mri", "prostate": "prostate_mri", "cxr": "cxr"}


def reference_scores(modality: str, image: np.ndarray, region: np.ndarray | None = None) -> dict[str, float]:
    """Finding scores of ``image`` for a dataset modality: ``{"csPCa": ...}`` for prostate MRI,
    ``{"pleural_effusion", "pneumonia", "cardiomegaly"}`` for chest x-ray.  Compare each with
    ``FINDING_THRESHOLDS[finding]`` (above = present)."""
    kind = _MODALITY_ALIASES.get(str(modality))
    if kind == "prostate_mri":
        return {"csPCa": lesion_score(image, region)}
    if kind == "cxr":
        return cxr_scores(image, region)
    raise ValueError(f"no reference scorer for modality {modality!r}; known: prostate_mri, cxr")
