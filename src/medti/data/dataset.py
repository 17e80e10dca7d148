"""The dataset directory: the one format every medti step reads and writes.

A dataset dir holds::

    images/<case_id>.png      8-bit RGB (grey modalities are stored as three equal channels)
    masks/<case_id>.png       optional 8-bit single-channel finding mask (0/255)
    manifest.csv              one row per case, columns below
    dataset.json              modality, channel meaning, findings, image size, provenance

Manifest columns, in order: ``case_id, patient_id, split, <one 0/1 column per finding>,
path, sha256, source, mask, caption, prompt, seed, embedding_version``.  ``mask``,
``caption``, ``prompt``, ``seed`` and ``embedding_version`` may be empty (the last three
are filled for synthetic rows).  ``patient_id`` is always a pseudonym (see
:mod:`medti.data.pseudonym`), never an identifier from the source data.

Writers go through :class:`DatasetWriter`, which builds the whole dir under a temporary
name next to the target and renames it into place only when complete, so a killed step
leaves either the old dataset or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medti import __version__
from medti.io import (
    OutputError,
    atomic_write_text,
    check_output_dir,
    replace_dir,
    sha256_bytes,
    temp_dir_for,
)

MANIFEST = "manifest.csv"
INFO = "dataset.json"
IMAGES = "images"
MASKS = "masks"
SPLITS = ("train", "val", "test")
LEAD_COLUMNS = ("case_id", "patient_id", "split")
TAIL_COLUMNS = (
    "path",
    "sha256",
    "source",
    "mask",
    "caption",
    "prompt",
    "seed",
    "embedding_version",
)
#: Modalities whose anatomy is (near) left-right symmetric, so a mirrored image is still plausible (textual
#: inversion and classifier augmentation mirror only these: a mirrored chest radiograph has its heart on the right).
FLIP_OK = frozenset({"prostate_mri"})
#: Columns that must be present whatever the findings are.
REQUIRED_COLUMNS = LEAD_COLUMNS + ("path", "sha256", "source")


class DatasetError(OutputError):
    """A dataset dir or one of its rows/files breaks a rule; the message names which.  An
    :class:`~medti.io.OutputError` (what the output checks and locks of :mod:`medti.io` raise), so one
    ``except OutputError`` reports both."""


@dataclass
class DatasetInfo:
    """Contents of ``dataset.json``."""

    modality: str  # "prostate_mri" | "cxr" | ...
    channels: list[str]  # meaning of R, G, B, e.g. ["T2W", "ADC", "DWI"]
    findings: list[str]  # finding column names, e.g. ["csPCa"]; [] for an unlabeled corpus
    image_size: list[int]  # [height, width]
    source: str  # "phantom" | "picai" | "chexpert" | "synthetic" | ...
    name: str = ""
    created_by: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def manifest_columns(findings: Sequence[str]) -> list[str]:
    return [*LEAD_COLUMNS, *findings, *TAIL_COLUMNS]


def encode_png(array: np.ndarray) -> bytes:
    """Encode an HxW (grey) or HxWx3 (RGB) uint8 array as PNG bytes (deterministic)."""
    from PIL import Image

    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise DatasetError(f"image array must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise DatasetError(f"image array must be HxW or HxWx3, got shape {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Clip a float image in [0, 1] to uint8 (round half to even, deterministic)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def safe_join(root: Path, rel: str, *, what: str = "path") -> Path:
    """Resolve ``rel`` inside ``root``; refuse absolute paths, ``..`` and symlinks out."""
    root = Path(root).resolve()
    if rel is None or str(rel).strip() == "":
        raise DatasetError(f"empty {what}")
    p = Path(str(rel))
    if p.is_absolute() or p.drive:
        raise DatasetError(f"{what} {rel!r} is absolute; paths must be relative to {root}")
    if ".." in p.parts:
        raise DatasetError(f"{what} {rel!r} escapes the dataset dir (contains '..')")
    full = (root / p).resolve()
    if full != root and root not in full.parents:
        raise DatasetError(f"{what} {rel!r} escapes the dataset dir (resolves to {full})")
    return full


class DatasetWriter:
    """Build a dataset dir under a temp name and move it into place on success.

    Usage::

        with DatasetWriter(out, info, overwrite=True) as w:
            w.add(case_id=..., patient_id=..., split="train", labels={"csPCa": 1},
                  image=rgb_uint8, mask=mask_uint8)
    """

    def __init__(self, out: Path, info: DatasetInfo, *, overwrite: bool = False):
        self.out = Path(out)
        self.info = info
        self.overwrite = overwrite
        self.rows: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self.tmp: Path | None = None
        check_output_dir(self.out, overwrite, (INFO, MANIFEST), "medti dataset dir")

    def __enter__(self) -> DatasetWriter:
        self.tmp = temp_dir_for(self.out)
        (self.tmp / IMAGES).mkdir()
        return self

    def add(
        self,
        *,
        case_id: str,
        patient_id: str,
        split: str,
        image: np.ndarray,
        labels: dict[str, int] | None = None,
        mask: np.ndarray | None = None,
        source: str | None = None,
        caption: str = "",
        prompt: str = "",
        seed: int | str = "",
        embedding_version: str = "",
    ) -> dict[str, Any]:
        assert self.tmp is not None, "use DatasetWriter as a context manager"
        if case_id in self._ids:
            raise DatasetError(f"duplicate case_id {case_id!r}")
        if split not in SPLITS:
            raise DatasetError(f"case {case_id}: split {split!r} not in {SPLITS}")
        labels = labels or {}
        unknown = set(labels) - set(self.info.findings)
        if unknown:
            raise DatasetError(f"case {case_id}: labels {sorted(unknown)} not in findings {self.info.findings}")
        self._ids.add(case_id)
        png = encode_png(image)
        rel = f"{IMAGES}/{case_id}.png"
        (self.tmp / rel).write_bytes(png)
        mask_rel = ""
        if mask is not None:
            (self.tmp / MASKS).mkdir(exist_ok=True)
            mask_rel = f"{MASKS}/{case_id}.png"
            (self.tmp / mask_rel).write_bytes(encode_png(mask))
        row: dict[str, Any] = {"case_id": case_id, "patient_id": patient_id, "split": split}
        for f in self.info.findings:
            v = labels.get(f)
            if v is None:
                raise DatasetError(f"case {case_id}: missing label for finding {f!r}")
            row[f] = int(v)
        row.update(
            path=rel,
            sha256=sha256_bytes(png),
            source=source or self.info.source,
            mask=mask_rel,
            caption=caption,
            prompt=prompt,
            seed=seed,
            embedding_version=embedding_version,
        )
        self.rows.append(row)
        return row

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            self.info.created_by.setdefault("tool", "medti")
            self.info.created_by.setdefault("version", __version__)
            write_manifest(self.tmp / MANIFEST, self.rows, self.info.findings)
            (self.tmp / INFO).write_text(self.info.to_json(), encoding="utf-8")
            replace_dir(self.tmp, self.out)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


def write_manifest(path: Path, rows: list[dict[str, Any]], findings: Sequence[str]) -> None:
    cols = manifest_columns(findings)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="raise")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    atomic_write_text(path, buf.getvalue())


def read_info(root: Path) -> DatasetInfo:
    p = Path(root) / INFO
    if not p.is_file():
        raise DatasetError(f"{p}: missing {INFO}")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{p}: not valid UTF-8 JSON ({e})") from e
    if not isinstance(d, dict):
        raise DatasetError(f"{p}: must hold a JSON object, got {type(d).__name__}")
    for k in ("modality", "channels", "findings", "image_size", "source"):
        if k not in d:
            raise DatasetError(f"{p}: missing key {k!r}")
    return DatasetInfo.from_dict(d)


def read_manifest(root: Path) -> list[dict[str, str]]:
    """Rows of ``manifest.csv`` as dicts of strings (no type coercion; see validation)."""
    p = Path(root) / MANIFEST
    if not p.is_file():
        raise DatasetError(f"{p}: missing {MANIFEST}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(f"{p}: not UTF-8 (byte {e.start}, line {line})") from e
    return list(csv.DictReader(io.StringIO(text)))


@dataclass
class Case:
    """One manifest row, typed."""

    case_id: str
    patient_id: str
    split: str
    labels: dict[str, int]
    path: Path
    row: dict[str, str]

    @property
    def mask_path(self) -> Path | None:
        m = self.row.get("mask") or ""
        return (self.path.parent.parent / m) if m else None


class Dataset:
    """Read access to a dataset dir (assumed validated; see :mod:`medti.data.validate`)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.info = read_info(self.root)
        self.rows = read_manifest(self.root)

    def __len__(self) -> int:
        return len(self.rows)

    def cases(self, split: str | None = None, where: dict[str, int] | None = None) -> list[Case]:
        out = []
        for r in self.rows:
            if split is not None and r["split"] != split:
                continue
            labels = {f: int(r[f]) for f in self.info.findings if r.get(f, "") != ""}
            if where and any(labels.get(k) != v for k, v in where.items()):
                continue
            out.append(
                Case(
                    case_id=r["case_id"],
                    patient_id=r["patient_id"],
                    split=r["split"],
                    labels=labels,
                    path=safe_join(self.root, r["path"]),
                    row=r,
                )
            )
        return out

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases())


#: PIL modes that hold 8-bit samples; converting any other (16-bit "I;16", 32-bit "I", float "F") to
#: RGB clips it to 8 bits, which turns most of a 16-bit medical image white
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")


def load_image(path: Path) -> np.ndarray:
    """Read a PNG as an HxWx3 uint8 array; a 16-bit or float image is refused, not clipped."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in EIGHT_BIT_MODES:
            raise DatasetError(
                f"{path} is a {im.mode} image (16-bit or float); medti works on 8-bit images, as its datasets hold "
                "them: window it to 8 bits first, or bring the study in with `medti data import`"
            )
        return np.asarray(im.convert("RGB"))


def load_mask(path: Path) -> np.ndarray:
    """Read a mask PNG as an HxW bool array."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def parse_where(expr: str | None) -> dict[str, int]:
    """Parse ``'csPCa=1'`` or ``'pleural_effusion=1,pneumonia=0'`` into a label filter."""
    if not expr:
        return {}
    out: dict[str, int] = {}
    for part in expr.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise DatasetError(f"--where term {part!r} is not NAME=0|1")
        k, v = (s.strip() for s in part.split("=", 1))
        if v not in ("0", "1"):
            raise DatasetError(f"--where term {part!r}: value must be 0 or 1")
        if k in out:  # 'csPCa=1,csPCa=0' would otherwise keep the last term without a word
            raise DatasetError(f"--where {expr!r} names {k!r} twice")
        out[k] = int(v)
    return out


def assign_splits(
    patient_ids: Sequence[str],
    fractions: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
    seed: int = 0,
) -> dict[str, str]:
    """Patient-level split: every patient goes to exactly one of train/val/test.

    Deterministic for a given set of ids and seed (ids are sorted first, then shuffled with
    ``seed``), with split sizes as close to ``fractions`` as whole patients allow.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise DatasetError(f"split fractions {tuple(fractions)} must be three non-negative numbers")
    uniq = sorted(set(patient_ids))
    rng = np.random.default_rng(seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    total = float(sum(fractions))
    n = len(order)
    n_train = int(round(n * fractions[0] / total))
    n_val = int(round(n * (fractions[0] + fractions[1]) / total)) - n_train
    out = {}
    for i, pid in enumerate(order):
        out[pid] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    return out
