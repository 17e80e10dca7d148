"""Import PI-CAI biparametric prostate MRI into a medti dataset dir.

Input layout (as published on Zenodo and in ``DIAGNijmegen/picai_labels``)::

    <images>/[fold dirs/]<patient>/<patient>_<study>_{t2w,adc,hbv}.mha   (sag/cor/... ignored)
    <labels>/csPCa_lesion_delineations/<any subdirs>/<patient>_<study>.nii.gz
    <labels>/<...whole_gland...>/<any subdirs>/<patient>_<study>.nii.gz

One 2-D case per study.  T2W is resampled to 3 x 0.5 x 0.5 mm (z, y, x); ADC, HBV (linear)
and the lesion and whole-gland masks (nearest) are resampled onto that same grid; each
image volume is min-max normalised to [0, 1] and all are centre cropped/padded to
30 x 300 x 300 voxels.  The channels are R=T2W, G=ADC, B=HBV (high-b DWI).

* csPCa = 1 when the lesion delineation has any lesion voxel (any label > 0).  The case is
  the axial slice with the largest lesion area; its lesion mask is written as the case mask.
* csPCa = 0 otherwise; the case is the median slice of the whole-gland mask (the middle of
  the slice indices that contain gland, lower middle for an even count).

Which lesion file: a study may have several (``human_expert/resampled``,
``human_expert/original``, ``AI/Bosma22a``, ...).  Human-expert delineations are preferred
over AI-derived ones, and ``resampled`` over other human-expert dirs; ties go by path.

Skipped, counted by reason in the summary (never by case):

* no lesion delineation file for the study (its outcome is unknown),
* no lesion and no whole-gland mask (no slice can be chosen),
* the lesion or the gland lies entirely outside the T2W grid / the 30 x 300 x 300 crop.

Errors (:class:`DatasetError`, naming the file relative to its input root and the rule;
nothing is written): a missing T2W/ADC/HBV file, a file SimpleITK cannot read, a volume
that is not 3-D scalar, contains NaN/inf, is empty or constant, or does not overlap the T2W
grid at all.

Identifiers: the patient id is ``pseudonymise(<patient>)`` and the case id (and file name)
``case_pseudonym(<patient>_<study>)``.  No image header field is copied.  Error messages
name the offending input file so that an operator can find it; they go to the console,
never into the dataset.

Splits are patient-level (:func:`assign_splits`) over the patients that have at least one
study left after the label checks above; the rare skip that is only found after resampling
(lesion/gland outside the crop) does not rebalance the split.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medti.data.dataset import DatasetError, DatasetInfo, DatasetWriter, assign_splits, to_uint8
from medti.data.importers.common import (
    ImportResult,
    check_size,
    count_rows,
    progress,
    resize_float,
    resize_mask,
)
from medti.data.pseudonym import case_pseudonym, load_salt, pseudonymise

MODALITY = "prostate_mri"
CHANNELS = ["T2W", "ADC", "DWI"]
FINDINGS = ["csPCa"]
SOURCE = "picai"
CAPTION = "axial prostate mri"
#: Target voxel spacing in (z, y, x) mm, and the crop/pad shape in (z, y, x) voxels.
SPACING_ZYX = (3.0, 0.5, 0.5)
CROP_ZYX = (30, 300, 300)
#: The modality files used, in channel order R, G, B.
MODALITY_FILES = ("t2w", "adc", "hbv")
LESION_DIR = "csPCa_lesion_delineations"
GLAND_DIR_MARK = "whole_gland"
MASK_SUFFIXES = (".nii.gz", ".nii", ".mha")

SKIP_NO_LESION_FILE = "no csPCa lesion delineation (outcome unknown)"
SKIP_NO_GLAND = "no lesion and no whole-gland mask"
SKIP_LESION_OUTSIDE = "lesion outside the T2W grid/crop"
SKIP_GLAND_OUTSIDE = "whole gland outside the T2W grid/crop"

_T2W_RE = re.compile(r"^([^_]+)_([^_]+)_t2w\.mha$")


@dataclass
class PicaiImportConfig:
    images: Path
    labels: Path
    out: Path
    size: int = 512
    seed: int = 0
    overwrite: bool = False
    salt: str | None = None  # pseudonym salt; None -> medti.data.pseudonym.load_salt()
    split_fractions: tuple[float, float, float] = (0.34, 0.33, 0.33)


@dataclass
class _Study:
    key: str  # "<patient>_<study>": an original identifier, never written
    patient: str  # original identifier, never written
    files: dict[str, Path]
    lesion: Path | None = None
    gland: Path | None = None
    has_lesion: bool = False
    skip: str | None = None


# ----------------------------------------------------------------------------- discovery
def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name


def _mask_key(name: str) -> str | None:
    for suf in MASK_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return None


def _lesion_rank(rel: Path) -> tuple[int, int, str]:
    dirs = rel.parts[:-1]
    return (0 if "human_expert" in dirs else 1, 0 if "resampled" in dirs else 1, rel.as_posix())


def _index_labels(labels: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Map study key -> chosen lesion file and study key -> whole-gland file."""
    lesions: dict[str, list[Path]] = {}
    glands: dict[str, list[Path]] = {}
    root_name = labels.resolve().name
    for p in labels.rglob("*"):
        key = _mask_key(p.name)
        if key is None or not p.is_file():
            continue
        rel = p.relative_to(labels)
        dirs = (root_name, *rel.parts[:-1])
        if LESION_DIR in dirs:
            lesions.setdefault(key, []).append(rel)
        elif any(GLAND_DIR_MARK in d for d in dirs):
            glands.setdefault(key, []).append(rel)
    if not lesions and not glands:
        raise DatasetError(
            f"labels root {labels}: no {LESION_DIR}/**/<patient>_<study>.nii.gz lesion "
            f"delineations and no masks under a '{GLAND_DIR_MARK}' dir"
        )
    lesion = {k: labels / min(v, key=_lesion_rank) for k, v in lesions.items()}
    gland = {k: labels / min(v, key=lambda r: r.as_posix()) for k, v in glands.items()}
    return lesion, gland


def _discover(cfg: PicaiImportConfig) -> list[_Study]:
    images, labels = Path(cfg.images), Path(cfg.labels)
    if not images.is_dir():
        raise DatasetError(f"PI-CAI images root {images} is not a directory")
    if not labels.is_dir():
        raise DatasetError(f"PI-CAI labels root {labels} is not a directory")
    t2ws = sorted(images.rglob("*_t2w.mha"))
    if not t2ws:
        raise DatasetError(
            f"PI-CAI images root {images}: no <patient>/<patient>_<study>_t2w.mha files found"
        )
    lesions, glands = _index_labels(labels)
    studies: dict[str, _Study] = {}
    for t2w in t2ws:
        m = _T2W_RE.match(t2w.name)
        if not m:
            raise DatasetError(
                f"{_rel(t2w, images)}: file name does not follow <patient>_<study>_t2w.mha"
            )
        key = f"{m[1]}_{m[2]}"
        if key in studies:
            raise DatasetError(
                f"{_rel(t2w, images)}: the same study is also at "
                f"{_rel(studies[key].files['t2w'], images)} (each study must appear once)"
            )
        files = {"t2w": t2w}
        for mod in MODALITY_FILES[1:]:
            p = t2w.with_name(f"{key}_{mod}.mha")
            if not p.is_file():
                raise DatasetError(
                    f"{_rel(p, images)}: missing {mod.upper()} file "
                    f"(every study needs {', '.join(MODALITY_FILES)} .mha files)"
                )
            files[mod] = p
        studies[key] = _Study(
            key=key, patient=m[1], files=files, lesion=lesions.get(key), gland=glands.get(key)
        )
    return [studies[k] for k in sorted(studies)]


# ----------------------------------------------------------------------------- reading
def _read(path: Path, root: Path, what: str, *, mask: bool = False):
    """Read a 3-D scalar image with SimpleITK and check it; DatasetError names the file."""
    import SimpleITK as sitk

    rel = _rel(path, root)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        # SimpleITK's own message carries absolute paths and C++ locations; keep ours short.
        raise DatasetError(f"{rel}: {what} is not a readable image file (SimpleITK cannot read it)") from e
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(
            f"{rel}: {what} must be a 3-D scalar volume, got {img.GetDimension()}-D with "
            f"{img.GetNumberOfComponentsPerPixel()} component(s)"
        )
    arr = sitk.GetArrayViewFromImage(img)
    if arr.size == 0:
        raise DatasetError(f"{rel}: {what} is empty (size {img.GetSize()})")
    if not np.all(np.isfinite(arr)):
        raise DatasetError(f"{rel}: {what} contains NaN or infinite voxels")
    if not mask and arr.min() == arr.max():
        raise DatasetError(f"{rel}: {what} is constant (every voxel {arr.min()}); it has no image")
    return img


def _resample_to_spacing(img, spacing_zyx: tuple[float, float, float]):
    import SimpleITK as sitk

    spacing_xyz = tuple(float(s) for s in reversed(spacing_zyx))
    size = [
        max(1, int(round(n * s / t)))
        for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing_xyz, strict=True)
    ]
    return sitk.Resample(
        img,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        img.GetOrigin(),
        spacing_xyz,
        img.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def _onto(img, ref, *, nearest: bool) -> np.ndarray:
    """Resample ``img`` onto the grid of ``ref``; returns the (z, y, x) array."""
    import SimpleITK as sitk

    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    ptype = img.GetPixelID() if nearest else sitk.sitkFloat32
    out = sitk.Resample(img, ref, sitk.Transform(), interp, 0.0, ptype)
    return sitk.GetArrayFromImage(out)


def _minmax(arr: np.ndarray, rel: str, what: str) -> np.ndarray:
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        raise DatasetError(
            f"{rel}: {what} is constant on the T2W grid (it does not overlap the T2W volume)"
        )
    return ((a - lo) / (hi - lo)).astype(np.float32)


def crop_or_pad(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Centre crop and/or zero-pad ``arr`` to ``shape`` (per axis)."""
    out = arr
    for ax, target in enumerate(shape):
        n = out.shape[ax]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=ax)
        elif n < target:
            before = (target - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[ax] = (before, target - n - before)
            out = np.pad(out, pad)
    return out


def _check_labels(st: _Study, labels_root: Path) -> None:
    """First pass (masks only): decide positive/negative/skip before reading any MRI."""
    import SimpleITK as sitk

    if st.lesion is None:
        st.skip = SKIP_NO_LESION_FILE
        return
    lesion = _read(st.lesion, labels_root, "lesion delineation", mask=True)
    st.has_lesion = bool(np.any(sitk.GetArrayViewFromImage(lesion) > 0))
    if not st.has_lesion and st.gland is None:
        st.skip = SKIP_NO_GLAND


def _process(
    st: _Study, images_root: Path, labels_root: Path, size: int
) -> tuple[np.ndarray, int, np.ndarray | None] | str:
    """One study -> (RGB uint8 image, csPCa label, mask or None), or a skip reason."""
    vols = {m: _read(st.files[m], images_root, f"{m.upper()} volume") for m in MODALITY_FILES}
    ref = _resample_to_spacing(vols["t2w"], SPACING_ZYX)
    chans = []
    for m in MODALITY_FILES:
        arr = _onto(vols[m], ref, nearest=False)
        chans.append(crop_or_pad(_minmax(arr, _rel(st.files[m], images_root), m.upper()), CROP_ZYX))
    if st.has_lesion:
        assert st.lesion is not None
        les = _onto(_read(st.lesion, labels_root, "lesion delineation", mask=True), ref, nearest=True)
        les = crop_or_pad(les > 0, CROP_ZYX)
        areas = les.sum(axis=(1, 2))
        if areas.max() == 0:
            return SKIP_LESION_OUTSIDE
        z = int(np.argmax(areas))
        label, mask = 1, resize_mask(les[z], size)
    else:
        assert st.gland is not None
        gl = _onto(_read(st.gland, labels_root, "whole-gland mask", mask=True), ref, nearest=True)
        gl = crop_or_pad(gl > 0, CROP_ZYX)
        zs = np.flatnonzero(gl.any(axis=(1, 2)))
        if zs.size == 0:
            return SKIP_GLAND_OUTSIDE
        z = int(zs[(zs.size - 1) // 2])
        label, mask = 0, None
    rgb = np.stack([to_uint8(resize_float(c[z], size)) for c in chans], axis=-1)
    return rgb, label, mask


# ----------------------------------------------------------------------------- import
def import_picai(cfg: PicaiImportConfig) -> ImportResult:
    """Import PI-CAI studies as one T2W/ADC/HBV slice each; see the module docstring."""
    size = check_size(cfg.size)
    salt = load_salt(cfg.salt)
    info = DatasetInfo(
        modality=MODALITY,
        channels=list(CHANNELS),
        findings=list(FINDINGS),
        image_size=[size, size],
        source=SOURCE,
        name="picai",
        created_by={"step": "import_picai"},
        extra={
            "spacing_zyx_mm": list(SPACING_ZYX),
            "crop_zyx": list(CROP_ZYX),
            "channel_files": list(MODALITY_FILES),
            "positive_slice": "largest lesion area",
            "negative_slice": "median whole-gland slice",
            "split_seed": cfg.seed,
            "split_fractions": list(cfg.split_fractions),
        },
    )
    # checks the output (exists without overwrite?) before any input is read
    writer = DatasetWriter(Path(cfg.out), info, overwrite=cfg.overwrite)
    images_root, labels_root = Path(cfg.images), Path(cfg.labels)
    studies = _discover(cfg)
    for st in progress(studies, total=len(studies), desc="picai labels"):
        _check_labels(st, labels_root)
    kept = [st for st in studies if st.skip is None]
    skips = Counter(st.skip for st in studies if st.skip is not None)
    if not kept:
        raise DatasetError(f"no PI-CAI study can be imported ({_reasons(skips)})")
    pids = {st.key: pseudonymise(st.patient, salt) for st in kept}
    splits = assign_splits(sorted(set(pids.values())), cfg.split_fractions, cfg.seed)
    with writer as w:
        for st in progress(kept, total=len(kept), desc="picai studies"):
            res = _process(st, images_root, labels_root, size)
            if isinstance(res, str):
                skips[res] += 1
                continue
            rgb, label, mask = res
            pid = pids[st.key]
            w.add(
                case_id=case_pseudonym(st.key, salt),
                patient_id=pid,
                split=splits[pid],
                image=rgb,
                labels={"csPCa": label},
                mask=mask,
                caption=CAPTION,
            )
        if not w.rows:
            raise DatasetError(f"no PI-CAI study could be imported ({_reasons(skips)})")
        w.info.extra["skipped"] = dict(sorted(skips.items()))
        rows = list(w.rows)
    return ImportResult(
        out=Path(cfg.out),
        n=len(rows),
        counts=count_rows(rows, FINDINGS),
        skipped=sum(skips.values()),
        skip_reasons=dict(sorted(skips.items())),
        source=SOURCE,
        findings=list(FINDINGS),
    )


def _reasons(skips: Counter) -> str:
    return "; ".join(f"{r}: {k}" for r, k in sorted(skips.items())) or "no studies"
