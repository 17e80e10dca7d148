"""Axial biparametric prostate MRI phantom: R = T2-weighted, G = ADC, B = high-b DWI.

One slice through the mid gland, anterior at the top, as a radiologist reads it:

* pelvis: body outline of fat, obturator internus / gluteal / rectus muscles, femoral heads
  and the pubic symphysis (dark cortex, fatty marrow), the rectum posterior to the gland
  (dark wall, gas or fluid content);
* gland: a perturbed ellipse with a T2-bright peripheral zone (PZ: the posterior/lateral
  crescent), a darker heterogeneous transition zone (TZ, anterior-central, BPH nodularity),
  dark anterior fibromuscular stroma and a thin dark capsule;
* channel physics (values in [0, 1]): on ADC free fluid is bright, tissue intermediate, fat
  and cortex dark; on high-b DWI everything is dark except restricted diffusion;
* a clinically significant cancer (csPCa) is T2 hypointense, ADC hypointense and DWI
  hyperintense, ~75 % in the PZ;
* benign mimics independent of the label (PZ prostatitis: T2/ADC mildly low without DWI
  restriction; TZ stromal nodules: mildly raised DWI) so that the task is not "any dark spot";
* acquisition: per-channel resolution blur (DWI/ADC coarser than T2), a smooth multiplicative
  coil bias field and Rician noise (magnitude of complex Gaussian noise).

Patient-level anatomy (:class:`ProstateAnatomy`) is shared by a patient's studies; position,
contrast, noise, bias and lesion vary per study.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medti.data.phantoms._geometry import (
    bias_field,
    blob_distance,
    blur,
    ellipse,
    grid,
    smooth_noise,
    soft_inside,
)

CHANNELS = ["T2W", "ADC", "DWI"]
FINDINGS = ["csPCa"]
MODALITY = "prostate_mri"

# Tissue signal (T2W, ADC, DWI) before contrast scaling, bias and noise.
FAT = (0.85, 0.08, 0.04)
MUSCLE = (0.22, 0.38, 0.10)
CORTEX = (0.05, 0.05, 0.03)
MARROW = (0.62, 0.12, 0.06)
RECTAL_WALL = (0.30, 0.36, 0.14)
GAS = (0.03, 0.04, 0.02)
FLUID = (0.82, 0.88, 0.06)
PZ = (0.72, 0.62, 0.15)
TZ = (0.42, 0.46, 0.19)
STROMA = (0.18, 0.33, 0.09)
CAPSULE = (0.20, 0.40, 0.10)
LESION = (0.26, 0.17, 0.80)

#: Probability that a lesion sits in the peripheral zone (else transition zone).
PZ_LESION_FRACTION = 0.75


@dataclass(frozen=True)
class Conspicuity:
    """How hard the csPCa lesions are to see: the ranges lesions draw their contrast (opacity of the
    lesion signal over the tissue, 0-1) and size (semi-major axis, fraction of the half field of view)
    from, uniformly, and the strength (opacity multiplier) of the benign mimics. The defaults are the
    phantoms' own; on them a ResNet-18 trained on 200 cases reaches test AUC 1.0, so an experiment that
    asks whether more data helps lowers them (:data:`medti.data.phantoms.PRESETS`)."""

    lesion_contrast: tuple[float, float] = (0.7, 1.0)
    lesion_size: tuple[float, float] = (0.09, 0.18)
    mimic_strength: float = 1.0

    def to_dict(self) -> dict:
        return {"lesion_contrast": list(self.lesion_contrast), "lesion_size": list(self.lesion_size),
                "mimic_strength": self.mimic_strength}


DEFAULT_CONSPICUITY = Conspicuity()


@dataclass(frozen=True)
class ProstateAnatomy:
    """Patient-level anatomy (normalised units, FOV = [-1, 1]^2)."""

    body_a: float
    body_b: float
    gland_a: float
    gland_b: float
    harmonics: tuple[tuple[float, float], ...]
    tz_scale: float
    rectum_r: float
    femur_r: float


@dataclass(frozen=True)
class ProstateStudy:
    """Study-level acquisition and pathology parameters."""

    cx: float
    cy: float
    angle: float
    contrast: float
    noise: float
    bias: float
    rectal_gas: bool
    lesion: dict | None  # {"zone", "cx", "cy", "a", "b", "angle", "harmonics", "contrast"}
    prostatitis: dict | None
    nodule: dict | None


@dataclass
class ProstateCase:
    """One rendered study: image plus the anatomy masks the tests and figures need."""

    image: np.ndarray  # HxWx3 float in [0, 1]: T2W, ADC, DWI
    lesion: np.ndarray | None  # HxW bool, None for negatives
    gland: np.ndarray  # HxW bool
    pz: np.ndarray  # HxW bool
    tz: np.ndarray  # HxW bool
    anatomy: ProstateAnatomy
    study: ProstateStudy
    caption: str


def sample_anatomy(rng: np.random.Generator) -> ProstateAnatomy:
    gland_a = float(rng.uniform(0.32, 0.50))
    return ProstateAnatomy(
        body_a=float(rng.uniform(1.16, 1.30)),
        body_b=float(rng.uniform(0.90, 1.04)),
        gland_a=gland_a,
        gland_b=float(gland_a * rng.uniform(0.66, 0.84)),
        harmonics=(
            (float(rng.normal(0, 0.035)), float(rng.uniform(0, 2 * np.pi))),
            (float(rng.normal(0, 0.025)), float(rng.uniform(0, 2 * np.pi))),
        ),
        tz_scale=float(rng.uniform(0.85, 1.2)),
        rectum_r=float(rng.uniform(0.12, 0.17)),
        femur_r=float(rng.uniform(0.18, 0.23)),
    )


def _zone_distances(an: ProstateAnatomy, cx: float, cy: float, angle: float, x, y):
    """Signed distances (negative inside) of gland and TZ, and the gland-frame v coordinate."""
    g = blob_distance(x, y, cx, cy, an.gland_a, an.gland_b, angle, an.harmonics)
    ca, sa = np.cos(angle), np.sin(angle)
    tcx, tcy = cx + 0.28 * an.gland_b * sa, cy - 0.28 * an.gland_b * ca
    t = blob_distance(x, y, tcx, tcy, 0.60 * an.gland_a * an.tz_scale, 0.56 * an.gland_b * an.tz_scale, angle)
    v = (-(x - cx) * sa + (y - cy) * ca) / an.gland_b
    return g, t, v


def _sample_point(rng, an, cx, cy, angle, zone: str, margin: float) -> tuple[float, float]:
    """A point of ``zone`` at least ``margin`` inside the gland (rejection sampling, size-free)."""
    best = (cx, cy)
    for _ in range(20):
        px = cx + rng.uniform(-an.gland_a, an.gland_a, 64)
        py = cy + rng.uniform(-an.gland_b, an.gland_b, 64)
        g, t, v = _zone_distances(an, cx, cy, angle, px, py)
        if zone == "pz":
            ok = (g < -margin) & (t > 0.01) & (v > -0.30)
        else:
            ok = (g < -margin) & (t < -0.01)
        idx = np.flatnonzero(ok)
        if idx.size:
            return float(px[idx[0]]), float(py[idx[0]])
    return best


def sample_study(rng: np.random.Generator, an: ProstateAnatomy, positive: bool,
                 conspicuity: Conspicuity = DEFAULT_CONSPICUITY) -> ProstateStudy:
    cx = float(np.clip(rng.normal(0.0, 0.08), -0.18, 0.18))
    cy = float(np.clip(rng.normal(-0.05, 0.07), -0.22, 0.12))
    angle = float(rng.normal(0.0, 0.08))
    lesion = None
    if positive:
        zone = "pz" if rng.random() < PZ_LESION_FRACTION else "tz"
        a = float(rng.uniform(*conspicuity.lesion_size))
        lcx, lcy = _sample_point(rng, an, cx, cy, angle, zone, margin=0.35 * a)
        lesion = {
            "zone": zone,
            "cx": lcx,
            "cy": lcy,
            "a": a,
            "b": float(a * rng.uniform(0.6, 1.0)),
            "angle": float(rng.uniform(0, np.pi)),
            "harmonics": (
                (float(rng.normal(0, 0.07)), float(rng.uniform(0, 2 * np.pi))),
                (float(rng.normal(0, 0.05)), float(rng.uniform(0, 2 * np.pi))),
            ),
            "contrast": float(rng.uniform(*conspicuity.lesion_contrast)),
        }
    prostatitis = None
    if rng.random() < 0.3:
        px, py = _sample_point(rng, an, cx, cy, angle, "pz", margin=0.02)
        prostatitis = {"cx": px, "cy": py, "a": float(rng.uniform(0.11, 0.21)), "b": float(rng.uniform(0.05, 0.09)),
                       "angle": float(rng.uniform(0, np.pi)), "strength": conspicuity.mimic_strength}
    nodule = None
    if rng.random() < 0.4:
        px, py = _sample_point(rng, an, cx, cy, angle, "tz", margin=0.05)
        nodule = {"cx": px, "cy": py, "r": float(rng.uniform(0.05, 0.11)), "t2": float(rng.choice([0.3, 0.58])),
                  "strength": conspicuity.mimic_strength}
    return ProstateStudy(
        cx=cx,
        cy=cy,
        angle=angle,
        contrast=float(rng.uniform(0.7, 1.3)),
        noise=float(np.exp(rng.uniform(np.log(0.012), np.log(0.065)))),
        bias=float(rng.uniform(0.1, 0.35)),
        rectal_gas=bool(rng.random() < 0.6),
        lesion=lesion,
        prostatitis=prostatitis,
        nodule=nodule,
    )


def caption(an: ProstateAnatomy, st: ProstateStudy) -> str:
    """Anatomy/acquisition description; never mentions the diagnosis."""
    size = "small" if an.gland_a < 0.38 else ("medium" if an.gland_a < 0.44 else "large")
    dx, dy = st.cx, st.cy + 0.05
    if max(abs(dx), abs(dy)) < 0.07:
        pos = "centred"
    elif abs(dx) >= abs(dy):
        pos = "left of centre" if dx < 0 else "right of centre"
    else:
        pos = "anterior" if dy < 0 else "posterior"
    con = "low" if st.contrast < 0.9 else ("medium" if st.contrast < 1.1 else "high")
    noi = "low" if st.noise < 0.022 else ("moderate" if st.noise < 0.04 else "high")
    # Local, label-independent structures are described too (as a report would), so that the base's
    # cross-attention learns to place focal structures from text; textual inversion relies on that
    # ability to express a focal finding the captions never name.
    local = [w for w, on in (("rectal gas", st.rectal_gas), ("transition zone nodule", st.nodule is not None),
                             ("peripheral zone hypointensity", st.prostatitis is not None)) if on]
    return ", ".join([f"axial prostate mri, {size} gland, {pos}, {con} contrast, {noi} noise", *local])


CAPTION_WORDS = sorted(
    set(
        "axial prostate mri small medium large gland centred left right of centre anterior "
        "posterior low high contrast moderate noise rectal gas transition zone nodule peripheral hypointensity".split()
    )
)


def _paint(img: np.ndarray, mask: np.ndarray, value, texture: np.ndarray | None = None, tex=(0, 0, 0)) -> None:
    """Composite tissue ``value`` (per channel) over ``img`` with soft weight ``mask``."""
    for c in range(3):
        v = value[c] if texture is None or tex[c] == 0 else value[c] + tex[c] * texture
        img[c] += mask * (v - img[c])


def render(an: ProstateAnatomy, st: ProstateStudy, size: int, rng: np.random.Generator) -> ProstateCase:
    """Draw one study at ``size`` px; ``rng`` supplies texture and noise."""
    x, y = grid(size)
    img = np.zeros((3, size, size))
    tex = smooth_noise(rng, size, 0.08)
    fine = smooth_noise(rng, size, 0.035)

    # pelvis
    body = ellipse(x, y, size, 0.0, 0.05, an.body_a, an.body_b)
    _paint(img, body, FAT, fine, (0.03, 0.01, 0.005))
    for s in (-1, 1):
        _paint(img, body * ellipse(x, y, size, s * 0.70, 0.0, 0.16, 0.34, -s * 0.3), MUSCLE, fine, (0.03, 0.02, 0))
        _paint(img, body * ellipse(x, y, size, s * 0.60, 0.80, 0.45, 0.26, s * 0.35), MUSCLE, fine, (0.03, 0.02, 0))
        _paint(img, body * ellipse(x, y, size, s * 0.18, -0.84, 0.13, 0.07), MUSCLE)
        for (bx, by, ba, bb) in ((s * 1.04, -0.10, an.femur_r, an.femur_r), (s * 0.15, -0.64, 0.115, 0.08)):
            _paint(img, body * ellipse(x, y, size, bx, by, ba, bb), CORTEX)
            _paint(img, body * ellipse(x, y, size, bx, by, ba * 0.78, bb * 0.7), MARROW, fine, (0.06, 0.01, 0))

    # rectum, posterior to the gland
    rcx = st.cx + 0.02
    rcy = st.cy + an.gland_b + an.rectum_r + 0.05
    _paint(img, ellipse(x, y, size, rcx, rcy, an.rectum_r * 1.15, an.rectum_r), RECTAL_WALL)
    _paint(img, ellipse(x, y, size, rcx, rcy, an.rectum_r * 0.7, an.rectum_r * 0.55), GAS if st.rectal_gas else FLUID)

    # gland and zones
    gd, td, v = _zone_distances(an, st.cx, st.cy, st.angle, x, y)
    gland = soft_inside(gd, size)
    tz = soft_inside(td, size) * gland
    posterior = soft_inside(-(v + 0.30) * an.gland_b, size)
    _paint(img, gland, CAPSULE)
    inner = soft_inside(gd + 0.024, size)
    _paint(img, inner * posterior, PZ, fine, (0.04, 0.02, 0.005))
    _paint(img, inner * (1 - posterior), STROMA)
    _paint(img, tz, TZ, tex, (0.09, 0.04, 0.01))

    # benign mimics (independent of the label)
    if st.prostatitis is not None:
        p = st.prostatitis
        m = ellipse(x, y, size, p["cx"], p["cy"], p["a"], p["b"], p["angle"], width_px=1.5) * inner * posterior
        _paint(img, 0.7 * p["strength"] * m, (0.45, 0.50, 0.17))
    if st.nodule is not None:
        p = st.nodule
        m = ellipse(x, y, size, p["cx"], p["cy"], p["r"], p["r"] * 0.85) * tz
        _paint(img, p["strength"] * m, (p["t2"], 0.40, 0.25))

    # csPCa lesion
    lesion_mask = None
    if st.lesion is not None:
        le = st.lesion
        m = ellipse(x, y, size, le["cx"], le["cy"], le["a"], le["b"], le["angle"], le["harmonics"]) * gland
        _paint(img, le["contrast"] * m, LESION, fine, (0.03, 0.02, 0.04))
        lesion_mask = m > 0.5
        if not lesion_mask.any():  # tiny images: keep at least the centre pixel
            lesion_mask.flat[int(np.argmax(m))] = True

    # acquisition: contrast, resolution, bias field, Rician noise
    for c, (mid, gain) in enumerate(((0.45, st.contrast), (0.35, st.contrast**0.5), (0.12, st.contrast**0.5))):
        img[c] += body * (gain - 1.0) * (img[c] - mid)
    scale = size / 64.0
    img[0] = blur(img[0], 0.35 * scale)
    img[1] = blur(img[1], 0.7 * scale)
    img[2] = blur(img[2], 0.7 * scale)
    coil = bias_field(rng, size, st.bias)
    img *= coil[None]
    img[2] *= bias_field(rng, size, 0.1)
    sig = st.noise * np.array([1.0, 0.9, 1.2])[:, None, None]
    re = img + sig * rng.standard_normal(img.shape)
    im = sig * rng.standard_normal(img.shape)
    img = np.sqrt(re * re + im * im)
    image = np.clip(np.moveaxis(img, 0, -1), 0.0, 1.0)
    return ProstateCase(
        image=image,
        lesion=lesion_mask,
        gland=gland > 0.5,
        pz=(inner * posterior * (1 - tz)) > 0.5,
        tz=tz > 0.5,
        anatomy=an,
        study=st,
        caption=caption(an, st),
    )


def make_case(rng_anatomy: np.random.Generator, rng_study: np.random.Generator, size: int, positive: bool,
              anatomy: ProstateAnatomy | None = None, conspicuity: Conspicuity = DEFAULT_CONSPICUITY) -> ProstateCase:
    """Sample (or reuse) a patient's anatomy, sample a study and render it."""
    an = anatomy if anatomy is not None else sample_anatomy(rng_anatomy)
    st = sample_study(rng_study, an, positive, conspicuity)
    return render(an, st, size, rng_study)
