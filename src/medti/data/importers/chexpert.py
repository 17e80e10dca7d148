"""Import CheXpert frontal chest x-rays into a medti dataset dir.

The CSV (``train.csv`` / ``valid.csv``) has a ``Path`` column such as
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``, ``Frontal/Lateral``,
and one column per finding holding ``1.0`` (positive), ``0.0`` (negative), ``-1.0``
(uncertain) or blank (not mentioned).  Three are imported::

    Pleural Effusion -> pleural_effusion,  Pneumonia -> pneumonia,  Cardiomegaly -> cardiomegaly

* Frontal views only (lateral rows are dropped and counted).
* Blank = 0 (the CheXpert convention: not mentioned in the report).
* ``-1`` in one of those three columns: ``uncertain="ignore"`` drops the image (U-Ignore,
  counted), ``"positive"`` maps it to 1 (U-Ones), ``"negative"`` to 0 (U-Zeros).
  Uncertainty in the other columns is irrelevant.
* ``Path`` is resolved inside ``root``; a root that already is the ``CheXpert-v1.0-small``
  dir works too (the leading dir is then dropped).  Paths escaping ``root`` are refused.
* Image -> grey -> centre crop to a square -> bilinear resize to ``size`` -> three equal
  channels (uint8).

Identifiers: the patient id is ``pseudonymise(patientNNNNN)``; the case id (and file name)
is ``case_pseudonym`` of the image path below the dataset dir (``train/patient.../view...``),
so the small and full-size releases give the same case ids.  ``Sex``, ``Age``, ``AP/PA`` and
every other column are never copied.

Errors (:class:`DatasetError`, nothing written): a CSV that is not UTF-8 (names the line), a
missing column, a label value other than 1/0/-1/blank or a Frontal/Lateral value other than
Frontal/Lateral (names the data row, its line, the column and the value), a Path without a
``patientNNNNN`` part, escaping ``root``, duplicated, missing or not a readable image (names
the row and the Path).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from medti.data.dataset import DatasetError, DatasetInfo, DatasetWriter, assign_splits, safe_join
from medti.data.importers.common import ImportResult, check_size, count_rows, progress
from medti.data.pseudonym import case_pseudonym, load_salt, pseudonymise

MODALITY = "cxr"
CHANNELS = ["grey", "grey", "grey"]
SOURCE = "chexpert"
CAPTION = "frontal chest x-ray"
#: CSV column -> finding name, in the order of the dataset's findings.
FINDING_COLUMNS = {
    "Pleural Effusion": "pleural_effusion",
    "Pneumonia": "pneumonia",
    "Cardiomegaly": "cardiomegaly",
}
FINDINGS = list(FINDING_COLUMNS.values())
VIEW_COLUMN = "Frontal/Lateral"
REQUIRED_COLUMNS = ("Path", VIEW_COLUMN, *FINDING_COLUMNS)
UNCERTAIN_POLICIES = ("ignore", "positive", "negative")

SKIP_LATERAL = "lateral view"
SKIP_UNCERTAIN = "uncertain label (U-Ignore)"

_PATIENT_RE = re.compile(r"^patient\d+$")


@dataclass
class ChexpertImportConfig:
    csv: Path
    root: Path
    out: Path
    uncertain: str = "ignore"  # "ignore" | "positive" | "negative"
    size: int = 512
    seed: int = 0
    overwrite: bool = False
    salt: str | None = None  # pseudonym salt; None -> medti.data.pseudonym.load_salt()
    split_fractions: tuple[float, float, float] = (0.34, 0.33, 0.33)


@dataclass
class _Row:
    where: str  # "train.csv row 3 (line 4)": for error messages only
    rel: str  # the CSV Path value (original identifiers; never written)
    key: str  # Path below the CheXpert dir, the case pseudonym's input
    patient: str
    labels: dict[str, int]
    image: Path | None = None


def _parse_label(value: str | None) -> int | None:
    """CheXpert label text -> 1 / 0 / -1 (blank -> 0); None when it is none of those."""
    if value is None:
        return None
    text = value.strip()
    if text == "":
        return 0
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if v in (1.0, 0.0, -1.0) else None


def _read_csv(path: Path) -> tuple[csv.DictReader, str]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CheXpert CSV {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(f"{path.name}: not UTF-8 text (byte {e.start}, line {line})") from e
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if not header:
        raise DatasetError(f"{path.name}: empty CSV (no header line)")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        sep = next((s for s in (";", "\t") if len(header) == 1 and s in header[0]), None)
        hint = (
            f"; its header is one column split by {sep!r}, as a spreadsheet saves it in some locales: "
            "CheXpert CSVs are comma-separated, so use the release's own file"
            if sep else ""
        )
        raise DatasetError(
            f"{path.name}: missing column(s) {missing} (a CheXpert CSV needs {list(REQUIRED_COLUMNS)}){hint}"
        )
    return reader, path.name


def _dataset_key(rel: str) -> str:
    parts = PurePosixPath(rel).parts
    if len(parts) > 1 and parts[0].lower().startswith("chexpert"):
        parts = parts[1:]
    return "/".join(parts)


def _resolve(root: Path, row: _Row) -> Path:
    try:
        first = safe_join(root, row.rel, what="Path")
        candidates = [first]
        parts = PurePosixPath(row.rel).parts
        if len(parts) > 1:
            candidates.append(safe_join(root, str(PurePosixPath(*parts[1:])), what="Path"))
    except DatasetError as e:
        raise DatasetError(f"{row.where}: {e}") from e
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetError(
        f"{row.where}: image Path {row.rel!r} not found under {root} "
        "(also tried without its leading dir)"
    )


def _parse_rows(reader: csv.DictReader, name: str, uncertain: str) -> tuple[list[_Row], Counter]:
    rows: list[_Row] = []
    skips: Counter = Counter()
    seen: dict[str, str] = {}
    for i, rec in enumerate(reader, start=1):
        where = f"{name} row {i} (line {reader.line_num})"
        if None in rec.values():
            raise DatasetError(f"{where}: fewer fields than the header has columns")
        view = rec[VIEW_COLUMN].strip()
        if view not in ("Frontal", "Lateral"):
            raise DatasetError(
                f"{where}, column {VIEW_COLUMN!r}: value {rec[VIEW_COLUMN]!r} is not Frontal or Lateral"
            )
        raw_labels: dict[str, int] = {}
        for col, finding in FINDING_COLUMNS.items():
            v = _parse_label(rec[col])
            if v is None:
                raise DatasetError(
                    f"{where}, column {col!r}: value {rec[col]!r} is not 1.0, 0.0, -1.0 or blank"
                )
            raw_labels[finding] = v
        if view == "Lateral":
            skips[SKIP_LATERAL] += 1
            continue
        if -1 in raw_labels.values() and uncertain == "ignore":
            skips[SKIP_UNCERTAIN] += 1
            continue
        u = 1 if uncertain == "positive" else 0
        labels = {f: (u if v == -1 else v) for f, v in raw_labels.items()}
        rel = rec["Path"].strip()
        if not rel:
            raise DatasetError(f"{where}, column 'Path': empty")
        patient = next((p for p in PurePosixPath(rel).parts if _PATIENT_RE.match(p)), None)
        if patient is None:
            raise DatasetError(f"{where}, column 'Path': {rel!r} has no patientNNNNN directory")
        key = _dataset_key(rel)
        if key in seen:
            raise DatasetError(f"{where}: image Path {rel!r} is listed twice (also {seen[key]})")
        seen[key] = where
        rows.append(_Row(where=where, rel=rel, key=key, patient=patient, labels=labels))
    return rows, skips


def _load_grey_square(path: Path, size: int, where: str, rel: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1"):
                grey = np.asarray(im.convert("L"))
            else:  # 16-bit / float grey: scale its own range to 8 bits
                a = np.asarray(im, dtype=np.float64)
                if a.ndim != 2:
                    raise ValueError(f"unsupported image mode {im.mode}")
                lo, hi = float(a.min()), float(a.max())
                a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
                grey = np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{where}: image {rel!r} is not a readable image ({type(e).__name__})") from e
    h, w = grey.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    sq = Image.fromarray(np.ascontiguousarray(grey[top : top + s, left : left + s]))
    small = np.asarray(sq.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return np.repeat(small[..., None], 3, axis=2)


def import_chexpert(cfg: ChexpertImportConfig) -> ImportResult:
    """Import CheXpert frontal views; see the module docstring for the rules."""
    size = check_size(cfg.size)
    if cfg.uncertain not in UNCERTAIN_POLICIES:
        raise DatasetError(f"uncertain={cfg.uncertain!r}: must be one of {UNCERTAIN_POLICIES}")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DatasetError(f"CheXpert root {root} is not a directory")
    salt = load_salt(cfg.salt)
    info = DatasetInfo(
        modality=MODALITY,
        channels=list(CHANNELS),
        findings=list(FINDINGS),
        image_size=[size, size],
        source=SOURCE,
        name="chexpert",
        created_by={"step": "import_chexpert"},
        extra={
            "label_columns": dict(FINDING_COLUMNS),
            "uncertain": cfg.uncertain,
            "blank": 0,
            "views": "frontal",
            "split_seed": cfg.seed,
            "split_fractions": list(cfg.split_fractions),
        },
    )
    # checks the output (exists without overwrite?) before any input is read
    writer = DatasetWriter(Path(cfg.out), info, overwrite=cfg.overwrite)
    reader, name = _read_csv(Path(cfg.csv))
    rows, skips = _parse_rows(reader, name, cfg.uncertain)
    if not rows:
        reasons = "; ".join(f"{r}: {k}" for r, k in sorted(skips.items())) or "no data rows"
        raise DatasetError(f"{name}: no frontal image with usable labels ({reasons})")
    for r in rows:  # every image exists (and stays inside root) before anything is written
        r.image = _resolve(root, r)
    pids = {r.key: pseudonymise(r.patient, salt) for r in rows}
    splits = assign_splits(sorted(set(pids.values())), cfg.split_fractions, cfg.seed)
    with writer as w:
        for r in progress(rows, total=len(rows), desc="chexpert images"):
            assert r.image is not None
            pid = pids[r.key]
            w.add(
                case_id=case_pseudonym(r.key, salt),
                patient_id=pid,
                split=splits[pid],
                image=_load_grey_square(r.image, size, r.where, r.rel),
                labels=r.labels,
                caption=CAPTION,
            )
        w.info.extra["skipped"] = dict(sorted(skips.items()))
        out_rows = list(w.rows)
    return ImportResult(
        out=Path(cfg.out),
        n=len(out_rows),
        counts=count_rows(out_rows, FINDINGS),
        skipped=sum(skips.values()),
        skip_reasons=dict(sorted(skips.items())),
        source=SOURCE,
        findings=list(FINDINGS),
    )
