"""Frontal (PA) chest radiograph phantom, grey, stored as three equal channels.

Image brightness is ``1 - exp(-attenuation)`` summed along the beam, so overlapping structures
compose the way they do on film: soft tissue of the chest wall and abdomen is bright, the
aerated lungs dark, the mediastinum, spine and heart bright in the middle, posterior ribs and
clavicles a faint hint over the lungs, the hemidiaphragm domes (the right one higher) with
sharp lateral costophrenic angles, and a gastric air bubble under the left dome.  The heart
sits to the patient's left (image right).

Findings, independent and combinable:

* ``pleural_effusion``: fluid replaces the aerated lung at the base of one or both
  hemithoraces up to a meniscus that is concave upward (higher at the lateral chest wall),
  blunting the costophrenic angle and hiding the dome (silhouette sign);
* ``pneumonia``: patchy airspace consolidation (several merged blobs with aerated holes) in
  one lung zone (upper, middle or lower), surrounded by aerated lung;
* ``cardiomegaly``: cardiothoracic ratio (maximal cardiac width over maximal internal
  thoracic width between the lateral lung edges) 0.53-0.66, against 0.38-0.47 otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from medti.data.phantoms._geometry import bias_field, blur, ellipse, grid, smooth_noise, soft_inside

CHANNELS = ["grey", "grey", "grey"]
FINDINGS = ["pleural_effusion", "pneumonia", "cardiomegaly"]
MODALITY = "cxr"

NORMAL_CTR = (0.38, 0.47)
ENLARGED_CTR = (0.53, 0.66)


@dataclass(frozen=True)
class CxrAnatomy:
    """Patient-level anatomy (normalised units, FOV = [-1, 1]^2)."""

    tw: float  # half thoracic width: lateral lung edge at |x| = tw
    la: float  # lung half-width
    lb: float  # lung half-height
    body_w: float
    mw: float  # mediastinal half-width
    heart_off: float  # heart centre offset to the patient's left (image right)
    ctr: float  # the patient's baseline cardiothoracic ratio (normal)
    dome_k: float  # dome depth from apex to costophrenic angle
    rib_period: float


@dataclass(frozen=True)
class CxrStudy:
    dx: float  # lateral shift of the patient in the field
    dome_r: float  # right (image left) dome apex height
    dome_l: float
    ctr: float
    exposure: float
    gamma: float
    noise: float
    bubble: bool
    effusion: dict | None  # {"sides": (-1, 1), "height": h}
    pneumonia: dict | None  # {"cx", "cy", "r", "density", "blobs": [(dx, dy, s), ...]}


@dataclass
class CxrCase:
    image: np.ndarray  # HxWx3 float [0, 1], three equal channels
    effusion: np.ndarray | None  # HxW bool fluid region
    consolidation: np.ndarray | None  # HxW bool
    ctr: float
    anatomy: CxrAnatomy
    study: CxrStudy
    caption: str

    @property
    def labels(self) -> dict[str, int]:
        return {
            "pleural_effusion": int(self.study.effusion is not None),
            "pneumonia": int(self.study.pneumonia is not None),
            "cardiomegaly": int(self.ctr > 0.5),
        }

    @property
    def mask(self) -> np.ndarray | None:
        """Union of effusion and consolidation regions (None when neither is present)."""
        parts = [m for m in (self.effusion, self.consolidation) if m is not None]
        if not parts:
            return None
        return np.logical_or.reduce(parts)


def sample_anatomy(rng: np.random.Generator) -> CxrAnatomy:
    tw = float(rng.uniform(0.72, 0.82))
    return CxrAnatomy(
        tw=tw,
        la=float(rng.uniform(0.33, 0.38)),
        lb=float(rng.uniform(0.80, 0.88)),
        body_w=float(min(tw + rng.uniform(0.12, 0.19), 0.95)),
        mw=float(rng.uniform(0.09, 0.12)),
        heart_off=float(rng.uniform(0.07, 0.12)),
        ctr=float(rng.uniform(*NORMAL_CTR)),
        dome_k=float(rng.uniform(0.14, 0.19)),
        rib_period=float(rng.uniform(0.15, 0.18)),
    )


def _lung_distance(an: CxrAnatomy, dx: float, side: int, x, y):
    """Signed distance-like function of one lung's outline (before dome/heart cuts); side -1 = image left."""
    cx = dx + side * (an.tw - an.la)
    u = np.abs(x - cx) / an.la
    v = (y - 0.02) / an.lb
    p = np.where(v < 0, 2.4, 4.0)
    return ((u**p + np.abs(v) ** p) ** (1.0 / p) - 1.0) * an.la


def _dome(an: CxrAnatomy, dx: float, side: int, apex: float, x):
    cx = dx + side * (an.tw - an.la)
    return apex + an.dome_k * ((x - cx) / an.la) ** 2


def _heart_axes(an: CxrAnatomy, st: CxrStudy) -> tuple[float, float, float, float]:
    wh = st.ctr * an.tw
    hh = 0.22 + 0.35 * (wh - 0.3)
    hx = st.dx + an.heart_off
    hy = st.dome_l - hh  # sits on the left hemidiaphragm
    return hx, hy, wh, hh


def _heart_radius(an: CxrAnatomy, st: CxrStudy, x, y, margin: float = 0.0):
    """Normalised radius of the cardiac silhouette (< 1 inside): an elliptical top on a squarer
    base that runs down behind the left dome, so the borders meet the diaphragm in clean
    cardiophrenic angles.  ``margin`` grows every semi-axis."""
    hx, hy, wh, hh = _heart_axes(an, st)
    hu = np.abs(x - hx) / (wh + margin)
    hv = np.where(y < hy, (hy - y) / (hh + margin), (y - hy) / (1.6 * hh + margin))
    hp = np.where(y < hy, 2.0, 4.0)
    return (hu**hp + hv**hp) ** (1.0 / hp)


def sample_study(
    rng: np.random.Generator, an: CxrAnatomy, effusion: bool, pneumonia: bool, cardiomegaly: bool
) -> CxrStudy:
    dx = float(np.clip(rng.normal(0, 0.025), -0.06, 0.06))
    dome_r = float(rng.uniform(0.38, 0.47))
    dome_l = dome_r + float(rng.uniform(0.03, 0.07))
    ctr = float(rng.uniform(*ENLARGED_CTR)) if cardiomegaly else an.ctr
    eff = None
    if effusion:
        r = rng.random()
        sides = (-1,) if r < 0.35 else ((1,) if r < 0.7 else (-1, 1))
        eff = {"sides": sides, "height": float(rng.uniform(0.28, 0.45))}
    st = CxrStudy(
        dx=dx,
        dome_r=dome_r,
        dome_l=dome_l,
        ctr=ctr,
        exposure=float(rng.uniform(0.85, 1.15)),
        gamma=float(rng.uniform(0.8, 1.25)),
        noise=float(np.exp(rng.uniform(np.log(0.008), np.log(0.04)))),
        bubble=bool(rng.random() < 0.7),
        effusion=eff,
        pneumonia=None,
    )
    if pneumonia:
        st = _with_pneumonia(rng, an, st)
    return st


def _effusion_top(an: CxrAnatomy, st: CxrStudy, side: int, x):
    """Meniscus: fluid below this height; highest at the lateral chest wall."""
    apex = st.dome_r if side < 0 else st.dome_l
    y_cp = apex + an.dome_k
    h = st.effusion["height"]
    t = np.clip((np.abs(x - st.dx) - an.mw) / (an.tw - an.mw), 0.0, 1.0)
    return y_cp - h * (0.45 + 0.55 * t * t)


def _with_pneumonia(rng: np.random.Generator, an: CxrAnatomy, st: CxrStudy) -> CxrStudy:
    # Rejection sampling; the radius shrinks over the attempts so that crowded chests (a big
    # heart plus bilateral effusions) still get a consolidation that fits inside a lung.
    for attempt in range(400):
        side = -1 if rng.random() < 0.5 else 1
        zone = rng.integers(3)
        shrink = 1.0 - 0.6 * attempt / 400
        r = float(rng.uniform(0.09, 0.16)) * shrink
        cy = float(rng.uniform(*((-0.55, -0.35), (-0.22, 0.0), (0.08, 0.25))[zone]))
        cx = float(st.dx + side * rng.uniform(0.1, an.tw - 0.05))
        px, py = np.array([cx]), np.array([cy])
        inside = _lung_distance(an, st.dx, side, px, py)[0] < -(1.3 * r + 0.03)
        apex = st.dome_r if side < 0 else st.dome_l
        above = cy < _dome(an, st.dx, side, apex, px)[0] - 1.3 * r - 0.04
        if st.effusion is not None and side in st.effusion["sides"]:
            above = above and cy < _effusion_top(an, st, side, px)[0] - 1.3 * r - 0.04
        heart = _heart_radius(an, st, px, py, margin=1.3 * r + 0.05)[0] > 1.0
        medi = abs(cx - st.dx) > an.mw + 1.3 * r + 0.05
        if inside and above and heart and medi:
            k = int(rng.integers(5, 9))
            blobs = [
                (float(rng.normal(0, 0.3 * r)), float(rng.normal(0, 0.3 * r)), float(rng.uniform(0.4, 0.65) * r))
                for _ in range(k)
            ]
            pn = {"cx": cx, "cy": cy, "r": r, "density": float(rng.uniform(0.6, 0.9)), "blobs": blobs, "zone": int(zone)}
            return dataclasses.replace(st, pneumonia=pn)
    raise RuntimeError("could not place a consolidation (anatomy out of range)")  # pragma: no cover


def caption(an: CxrAnatomy, st: CxrStudy) -> str:
    """Anatomy/acquisition description; never mentions a finding."""
    build = "narrow" if an.tw < 0.755 else ("average" if an.tw < 0.785 else "broad")
    insp = "deep" if st.dome_r > 0.44 else ("moderate" if st.dome_r > 0.41 else "shallow")
    con = "low" if st.gamma < 0.92 else ("medium" if st.gamma < 1.1 else "high")
    noi = "low" if st.noise < 0.014 else ("moderate" if st.noise < 0.024 else "high")
    bubble = ", gastric bubble" if st.bubble else ""  # a local structure, as in the prostate captions
    return f"frontal chest radiograph, {build} chest, {insp} inspiration, {con} contrast, {noi} noise{bubble}"


CAPTION_WORDS = sorted(
    set(
        "frontal chest radiograph narrow average broad deep moderate shallow inspiration low "
        "medium high contrast noise gastric bubble".split()
    )
)


def _segment(x, y, x0, y0, x1, y1):
    px, py = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * px + (y - y0) * py) / (px * px + py * py), 0, 1)
    return np.hypot(x - x0 - t * px, y - y0 - t * py)


def render(an: CxrAnatomy, st: CxrStudy, size: int, rng: np.random.Generator) -> CxrCase:
    x, y = grid(size)
    dx = st.dx
    xc = x - dx
    tex = smooth_noise(rng, size, 0.05)

    # body: a tall rounded box, thicker centrally, narrowing to the neck at the top
    neck = np.where(y < -0.78, 0.35 + (an.body_w - 0.35) * np.clip((y + 1.0) / 0.22, 0, 1) ** 0.5, an.body_w)
    body = soft_inside(np.abs(xc) - neck, size, 1.0)
    att = body * (1.2 + 0.3 * np.clip(1 - (xc / an.body_w) ** 2, 0, 1))

    # lungs, cut by domes, mediastinum and heart
    _, _, wh, hh = _heart_axes(an, st)
    heart = soft_inside((_heart_radius(an, st, x, y) - 1.0) * min(wh, hh), size)
    med = soft_inside(np.abs(xc - 0.01) - an.mw, size) * soft_inside(y - 0.6, size)
    knob = ellipse(x, y, size, dx + an.mw * 0.9, -0.38, 0.075, 0.07)
    cut = (1 - np.maximum(med, knob)) * (1 - heart)
    aerated = np.zeros_like(x)
    fluid = np.zeros_like(x)
    for side, apex in ((-1, st.dome_r), (1, st.dome_l)):
        outline = soft_inside(_lung_distance(an, dx, side, x, y), size)
        lung = outline * soft_inside(y - _dome(an, dx, side, apex, x), size) * cut
        if st.effusion is not None and side in st.effusion["sides"]:
            top = _effusion_top(an, st, side, x)
            f = soft_inside(top - y, size, 1.2) * outline * cut
            fluid = np.maximum(fluid, f)
            lung = lung * (1 - f)
        aerated += lung
    air = 0.95 + 0.1 * np.clip(1 - np.abs(y - 0.02) / an.lb, 0, 1)

    cons = None
    if st.pneumonia is not None:
        p = st.pneumonia
        acc = np.zeros_like(x)
        for bx, by, bs in p["blobs"]:
            acc += np.exp(-(((x - p["cx"] - bx) ** 2 + (y - p["cy"] - by) ** 2) / (2 * bs * bs)))
        patch = np.clip(acc, 0, 1) ** 0.7 * np.clip(0.75 + 0.35 * smooth_noise(rng, size, 0.03), 0, 1)
        cons = p["density"] * patch * (aerated > 0.01)
        aerated = aerated * (1 - cons)

    att = att - air * aerated * body
    att += 0.12 * heart + 0.2 * fluid
    att += 0.35 * soft_inside(np.abs(xc) - 0.07, size) * body  # spine
    # posterior ribs (faint curved bands) and clavicles
    phase = (y + 0.7 * np.abs(xc) - 0.6 * xc * xc + 1.0) / an.rib_period
    ribs = np.clip(np.cos(2 * np.pi * phase), 0, 1) ** 4
    thorax = soft_inside(np.abs(xc) - an.tw - 0.03, size) * soft_inside(y - 0.55, size, 3) * soft_inside(-0.9 - y, size)
    att += 0.11 * ribs * thorax
    for s in (-1, 1):
        att += 0.28 * soft_inside(_segment(xc, y, s * 0.1, -0.70, s * 0.62, -0.84) - 0.032, size)
        att += 0.2 * ellipse(x, y, size, dx + s * 0.22, -0.05, 0.07, 0.12, 0.0, width_px=2.0)  # hila
    att += 0.05 * tex * np.clip(aerated, 0, 1)  # lung markings
    if st.bubble:
        att -= 0.45 * ellipse(x, y, size, dx + 0.38, st.dome_l + 0.17, 0.12, 0.065)

    img = 1.0 - np.exp(-st.exposure * np.clip(att, 0, None))
    img = np.clip(img, 0, 1) ** st.gamma
    img *= bias_field(rng, size, 0.08)
    scale = size / 64.0
    img = blur(img, 0.5 * scale)
    img = np.clip(img + st.noise * rng.standard_normal(img.shape), 0.0, 1.0)
    eff_mask = None
    if st.effusion is not None:
        eff_mask = (fluid > 0.5) & (y < np.where(xc < 0, _dome(an, dx, -1, st.dome_r, x), _dome(an, dx, 1, st.dome_l, x)) + 0.04)
    cons_mask = (cons > 0.35) if cons is not None else None
    return CxrCase(
        image=np.repeat(img[..., None], 3, axis=-1),
        effusion=eff_mask,
        consolidation=cons_mask,
        ctr=st.ctr,
        anatomy=an,
        study=st,
        caption=caption(an, st),
    )


def make_case(
    rng_anatomy: np.random.Generator,
    rng_study: np.random.Generator,
    size: int,
    labels: dict[str, int],
    anatomy: CxrAnatomy | None = None,
) -> CxrCase:
    an = anatomy if anatomy is not None else sample_anatomy(rng_anatomy)
    st = sample_study(
        rng_study, an, bool(labels.get("pleural_effusion")), bool(labels.get("pneumonia")), bool(labels.get("cardiomegaly"))
    )
    return render(an, st, size, rng_study)
