"""Procedurally generated phantom datasets and their reference scorers.

``generate_phantoms`` writes a dataset dir (see :mod:`medti.data.dataset`) of synthetic
"patients" that stand in for PI-CAI prostate MRI (``kind="prostate"``: R = T2W, G = ADC,
B = high-b DWI; finding ``csPCa`` with a lesion mask per positive) or CheXpert chest
radiographs (``kind="cxr"``: findings ``pleural_effusion``, ``pneumonia``, ``cardiomegaly``,
independent, with a union mask of effusion and consolidation where present).  Every case
has a diagnosis-free ``caption`` (anatomy, acquisition and the label-independent local
structures a report would mention: rectal gas, a transition-zone nodule, peripheral-zone
hypointensity, the gastric bubble; from a vocabulary of a few dozen words: ``CAPTION_WORDS``);
``unlabeled=True`` writes the same kind of images with
``findings = []`` and no masks, a captioned corpus in which findings still occur at
``positive_fraction`` without being named.

About 10 % of patients have two studies (different images of the same anatomy), so the
patient-level split of :func:`medti.data.dataset.assign_splits` matters.  Everything is a
pure function of the config: the same config gives byte-identical images and manifest.

The reference scorers (:mod:`medti.data.phantoms.scorers`) measure finding evidence from
pixels alone and are what later steps use to check generated images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medti.data.dataset import DatasetError, DatasetInfo, DatasetWriter, assign_splits, to_uint8
from medti.data.phantoms import cxr, prostate
from medti.data.phantoms.scorers import (
    FINDING_THRESHOLDS,
    cxr_scores,
    lesion_map,
    lesion_score,
    reference_scores,
)

__all__ = [
    "CAPTION_WORDS",
    "CONSPICUITY_PRESETS",
    "FINDING_THRESHOLDS",
    "KINDS",
    "PhantomConfig",
    "PhantomResult",
    "cxr_scores",
    "generate_phantoms",
    "lesion_map",
    "lesion_score",
    "reference_scores",
]

KINDS = ("prostate", "cxr")
_KIND_CODE = {"prostate": 1, "cxr": 2}
_MODULES = {"prostate": prostate, "cxr": cxr}
#: Fraction of patients that have two studies.
TWO_STUDY_FRACTION = 0.10
MAX_SIZE = 1024
#: Every word a phantom caption can contain (both kinds).
CAPTION_WORDS = sorted(set(prostate.CAPTION_WORDS) | set(cxr.CAPTION_WORDS))
#: Named lesion-conspicuity settings of the prostate phantoms (``PhantomConfig.preset``). ``default`` is what
#: the synthesis checks are calibrated on; there a ResNet-18 trained on 200 cases reaches test AUC 1.0, which
#: leaves no room to ask whether more (synthetic) data helps. ``subtle`` (lesion contrast x0.25, size x0.6 of the
#: default ranges) is the augmentation experiment's: 200 real cases land between 0.75 and 0.90 (docs/results.md).
CONSPICUITY_PRESETS: dict[str, prostate.Conspicuity] = {
    "default": prostate.DEFAULT_CONSPICUITY,
    "subtle": prostate.Conspicuity(lesion_contrast=(0.175, 0.25), lesion_size=(0.054, 0.108), mimic_strength=1.0),
}


@dataclass
class PhantomConfig:
    kind: str  # "prostate" | "cxr"
    out: Path
    n: int = 600
    size: int = 64
    seed: int = 0
    positive_fraction: float = 0.5
    unlabeled: bool = False
    split_fractions: tuple[float, float, float] = (0.34, 0.33, 0.33)
    overwrite: bool = False
    #: lesion conspicuity (prostate only): a name in CONSPICUITY_PRESETS, then any of the three fields below
    #: that are given override it
    preset: str = "default"
    lesion_contrast: tuple[float, float] | None = None  # uniform range of the lesion's opacity, within (0, 1]
    lesion_size: tuple[float, float] | None = None  # uniform range of the lesion semi-axis (fraction of half FOV)
    mimic_strength: float | None = None  # opacity multiplier of the benign mimics, 0 (none) to 1 (default)

    def conspicuity(self) -> prostate.Conspicuity:
        """The preset with this config's overrides applied (checked by :func:`generate_phantoms`)."""
        from dataclasses import replace

        base = CONSPICUITY_PRESETS[self.preset]
        given = {k: v for k, v in (("lesion_contrast", self.lesion_contrast), ("lesion_size", self.lesion_size),
                                   ("mimic_strength", self.mimic_strength)) if v is not None}
        if "lesion_contrast" in given:
            given["lesion_contrast"] = tuple(float(x) for x in given["lesion_contrast"])
        if "lesion_size" in given:
            given["lesion_size"] = tuple(float(x) for x in given["lesion_size"])
        return replace(base, **given)


@dataclass
class PhantomResult:
    out: Path
    n: int
    counts: dict[str, int] = field(default_factory=dict)
    kind: str = ""

    def summary(self) -> str:
        c = self.counts
        splits = " / ".join(f"{s} {c.get(s, 0)}" for s in ("train", "val", "test"))
        findings = ", ".join(f"{k} {v}" for k, v in c.items() if k not in {"train", "val", "test", "patients", "masks"})
        text = f"wrote {self.n} {self.kind} phantoms ({c.get('patients', 0)} patients) to {self.out}: {splits}"
        if findings:
            text += f"; positives: {findings}"
        if c.get("masks"):
            text += f"; {c['masks']} masks"
        return text


def _validate(cfg: PhantomConfig) -> None:
    if cfg.kind not in KINDS:
        raise DatasetError(f"phantom kind {cfg.kind!r} is not one of {', '.join(KINDS)}")
    if isinstance(cfg.n, bool) or not isinstance(cfg.n, int | np.integer) or cfg.n < 1:
        raise DatasetError(f"phantom n={cfg.n!r}: the number of cases must be an integer >= 1")
    if isinstance(cfg.size, bool) or not isinstance(cfg.size, int | np.integer) or not 16 <= cfg.size <= MAX_SIZE:
        raise DatasetError(f"phantom size={cfg.size!r}: the image size must be an integer in [16, {MAX_SIZE}]")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int | np.integer) or cfg.seed < 0:
        raise DatasetError(f"phantom seed={cfg.seed!r}: the seed must be an integer >= 0")
    pf = cfg.positive_fraction
    if not isinstance(pf, int | float) or not math.isfinite(pf) or not 0.0 <= pf <= 1.0:
        raise DatasetError(f"phantom positive_fraction={pf!r} must be a number in [0, 1]")
    fr = tuple(cfg.split_fractions)
    if (
        len(fr) != 3
        or not all(isinstance(f, int | float) and math.isfinite(f) and f >= 0 for f in fr)
        or sum(fr) <= 0
    ):
        raise DatasetError(f"phantom split_fractions={fr!r} must be three non-negative numbers with a positive sum")
    if cfg.preset not in CONSPICUITY_PRESETS:
        raise DatasetError(f"phantom preset={cfg.preset!r} is not one of {', '.join(CONSPICUITY_PRESETS)}")
    _check_range("lesion_contrast", cfg.lesion_contrast, 0.0, 1.0)
    _check_range("lesion_size", cfg.lesion_size, 0.0, 0.3)
    ms = cfg.mimic_strength
    if ms is not None and (isinstance(ms, bool) or not isinstance(ms, int | float) or not 0.0 <= ms <= 1.0):
        raise DatasetError(f"phantom mimic_strength={ms!r} must be a number from 0 (no mimics) to 1 (the default)")
    if cfg.kind != "prostate" and cfg.conspicuity() != prostate.DEFAULT_CONSPICUITY:
        raise DatasetError(
            f"phantom kind {cfg.kind!r}: lesion conspicuity (preset {cfg.preset!r}, lesion_contrast, lesion_size, "
            "mimic_strength) applies to the prostate phantoms only"
        )


def _check_range(name: str, value, lo: float, hi: float) -> None:
    """A (low, high) range with lo < low <= high <= hi, or None (the preset's)."""
    if value is None:
        return
    ok = (
        isinstance(value, tuple | list) and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and lo < value[0] <= value[1] <= hi
    )
    if not ok:
        raise DatasetError(f"phantom {name}={value!r} must be two numbers LOW,HIGH with {lo:g} < LOW <= HIGH <= {hi:g}")


def _patients(n: int, rng: np.random.Generator) -> list[int]:
    """Patient index of each case: ~TWO_STUDY_FRACTION of patients get a second study."""
    n_patients = max(1, int(round(n / (1.0 + TWO_STUDY_FRACTION))))
    n_second = n - n_patients
    second = rng.choice(n_patients, size=n_second, replace=False) if n_second > 0 else np.array([], int)
    owners = np.concatenate([np.arange(n_patients), second])
    return [int(p) for p in owners[rng.permutation(n)]]


def _positives(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly round(n * fraction) positives at random positions."""
    flags = np.zeros(n, dtype=bool)
    flags[rng.permutation(n)[: int(round(n * fraction))]] = True
    return flags


def generate_phantoms(cfg: PhantomConfig) -> PhantomResult:
    """Write a phantom dataset dir for ``cfg`` and return what was written."""
    from tqdm.auto import tqdm

    _validate(cfg)
    kind, n, size = cfg.kind, int(cfg.n), int(cfg.size)
    mod = _MODULES[kind]
    code = _KIND_CODE[kind]
    # an unlabeled corpus draws other patients than a labeled set of the same seed, so a base
    # model "pretrained" on it has not seen the labeled test images
    stream = 10 if cfg.unlabeled else 0
    plan = np.random.default_rng([cfg.seed, code, stream])
    owners = _patients(n, plan)
    pids = [f"PH-{kind}-{p:05d}" for p in owners]
    splits = assign_splits(pids, cfg.split_fractions, seed=cfg.seed)
    labels = {f: _positives(n, cfg.positive_fraction, plan) for f in mod.FINDINGS}
    conspicuity = cfg.conspicuity()
    findings = [] if cfg.unlabeled else list(mod.FINDINGS)
    info = DatasetInfo(
        modality=mod.MODALITY,
        channels=list(mod.CHANNELS),
        findings=findings,
        image_size=[size, size],
        source="phantom",
        name=f"phantom-{kind}" + ("-unlabeled" if cfg.unlabeled else ""),
        created_by={"step": "data phantom", "generator": "medti.data.phantoms"},
        extra={
            "phantom": {
                "kind": kind,
                "n": n,
                "size": size,
                "seed": int(cfg.seed),
                "positive_fraction": float(cfg.positive_fraction),
                "unlabeled": bool(cfg.unlabeled),
                "split_fractions": [float(f) for f in cfg.split_fractions],
                "patients": len(set(owners)),
                **({"preset": cfg.preset, "conspicuity": conspicuity.to_dict()} if kind == "prostate" else {}),
            },
            "caption_vocabulary": list(mod.CAPTION_WORDS),
            "reference_scorer": "medti.data.phantoms.reference_scores",
            "finding_thresholds": {f: FINDING_THRESHOLDS[f] for f in mod.FINDINGS},
        },
    )
    counts: dict[str, int] = {"patients": len(set(owners)), "train": 0, "val": 0, "test": 0}
    if not cfg.unlabeled:
        counts.update({f: int(labels[f].sum()) for f in findings})
    counts["masks"] = 0
    anatomies: dict[int, object] = {}
    with DatasetWriter(cfg.out, info, overwrite=cfg.overwrite) as writer:
        for i in tqdm(range(n), desc=f"phantom {kind}", unit="case", disable=None):
            p = owners[i]
            rng_anatomy = np.random.default_rng([cfg.seed, code, stream + 1, p])
            rng_study = np.random.default_rng([cfg.seed, code, stream + 2, i])
            case_labels = {f: int(labels[f][i]) for f in mod.FINDINGS}
            if kind == "prostate":
                case = prostate.make_case(
                    rng_anatomy, rng_study, size, bool(case_labels["csPCa"]), anatomies.get(p), conspicuity
                )
                mask = case.lesion
            else:
                case = cxr.make_case(rng_anatomy, rng_study, size, case_labels, anatomies.get(p))
                mask = case.mask
            anatomies[p] = case.anatomy
            split = splits[pids[i]]
            counts[split] += 1
            write_mask = None
            if mask is not None and not cfg.unlabeled:
                write_mask = mask.astype(np.uint8) * 255
                counts["masks"] += 1
            writer.add(
                case_id=f"{kind}-{i:06d}",
                patient_id=pids[i],
                split=split,
                image=to_uint8(case.image),
                labels=None if cfg.unlabeled else case_labels,
                mask=write_mask,
                caption=case.caption,
            )
    return PhantomResult(out=Path(cfg.out), n=n, counts=counts, kind=kind)
