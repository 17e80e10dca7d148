"""Dataset validation with Great Expectations: nothing downstream consumes a failing dataset.

Two tables are validated with a GX Core 1.x suite each, in an ephemeral context over pandas
DataFrames:

``cases``
    one row per manifest row: the manifest's columns as written (strings) plus a facts
    table computed here from each image (and mask) file: path safe, exists, decodes, size,
    channels, pixel type, constant, NaN, sha256 of the bytes, hash of the decoded pixels,
    and how many splits the case's patient appears in.
``class_counts``
    one row per (finding, class 0/1) with its number of ``train`` cases (labelled datasets).

Every GX expectation carries ``meta={"rule": <id>}``; its ``unexpected_index_list``
(``result_format="COMPLETE"`` with ``unexpected_index_column_names=["row", "case_id"]``) is
mapped back to one :class:`Failure` per offending row, naming the rule, the case and the file.
Problems that make GX impossible (no ``manifest.csv``, a non-UTF-8 CSV, no or a broken
``dataset.json``, a missing required column) are reported as failures of the same shape.

Paths that escape the dataset dir (``..``, absolute, symlinks pointing outside) are refused
through :func:`medti.data.dataset.safe_join` and never opened.

Reports go to ``<dataset>/validation/`` unless another dir is given:
``validation.json`` (ok, counts, failures, rules; no timestamps, so a re-run on the same data
writes the same bytes) and GX Data Docs under ``data_docs/index.html``.  The repository's
``.dvcignore`` ignores ``validation/`` so a report never changes a dataset's DVC version.

Consumers call :func:`require_valid`, which raises :class:`DatasetError` listing the failures.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medti.data.dataset import (
    INFO,
    MANIFEST,
    REQUIRED_COLUMNS,
    SPLITS,
    DatasetError,
    DatasetInfo,
    read_info,
    read_manifest,
    safe_join,
)
from medti.io import atomic_write_text, replace_dir, temp_dir_for

REPORT_DIR = "validation"
REPORT_JSON = "validation.json"
DATA_DOCS = "data_docs"

#: Columns that must hold a non-empty value on every row.
NON_EMPTY_COLUMNS = ("case_id", "patient_id", "split", "path", "sha256")

#: Every rule this module checks: stable id -> what it means (listed in validation.json).
RULES: dict[str, str] = {
    "manifest_exists": f"{MANIFEST} is present",
    "manifest_utf8": f"{MANIFEST} is a UTF-8 CSV with a header of unique column names",
    "dataset_json": f"{INFO} is present, valid JSON with modality/channels/findings/image_size/source",
    "required_columns": "the manifest has the required columns and one column per finding",
    "row_shape": "every manifest row has exactly as many fields as the header",
    "not_empty": "the manifest has at least one case",
    "required_values": f"{', '.join(NON_EMPTY_COLUMNS)} are non-empty on every row",
    "unique_case_id": "case ids are unique",
    "label_values": "every finding label is 0 or 1",
    "split_values": f"split is one of {', '.join(SPLITS)}",
    "patient_one_split": "no patient has cases in two splits",
    "min_per_class": "every finding has at least min_per_class train cases of class 0 and of class 1",
    "path_safe": "image/mask paths stay inside the dataset dir (no '..', absolute path or symlink out)",
    "file_exists": "every image (and mask, when the mask column is set) file exists",
    "decodes": "every image and mask file decodes",
    "sha256_matches": "the sha256 in the manifest matches the image file",
    "duplicate_image": "no two cases have identical image files or identical pixels",
    "image_size": f"image height x width equals {INFO} image_size",
    "channels": "images have 3 channels (RGB)",
    "bit_depth": "images are 8-bit (uint8 pixels)",
    "not_constant": "no image is constant (all pixels equal)",
    "no_nan": "no image holds NaN pixels (formats that allow floats)",
    "mask_size": "a mask has the same height x width as its image",
}

# Facts columns added to the cases table (a finding may not use these names).
_FACT_COLUMNS = (
    "row",
    "row_fields_ok",
    "patient_splits",
    "path_safe",
    "file_exists",
    "decodes",
    "image_size",
    "image_channels",
    "image_dtype",
    "image_constant",
    "image_has_nan",
    "image_sha256",
    "pixel_sha256",
    "mask_path_safe",
    "mask_exists",
    "mask_decodes",
    "mask_size_ok",
)

_log = logging.getLogger(__name__)


@dataclass
class ValidateConfig:
    dataset: Path
    report: Path | None = None  # default: <dataset>/validation
    min_per_class: int = 1
    data_docs: bool = True  # also build GX Data Docs HTML (validation.json is always written)


@dataclass(frozen=True)
class Failure:
    """One broken rule: which rule, which case/row, which file, and why."""

    rule: str
    message: str
    case_id: str | None = None
    row: int | None = None  # manifest.csv record number; the header is row 1
    file: str | None = None  # path relative to the dataset dir, as written in the manifest

    def __str__(self) -> str:
        where = []
        if self.case_id:
            where.append(f"case {self.case_id}")
        if self.row is not None:
            where.append(f"{MANIFEST} row {self.row}")
        if self.file and (self.row is None or self.file != MANIFEST):
            where.append(self.file)
        loc = (" " + ", ".join(where)) if where else ""
        return f"[{self.rule}]{loc}: {self.message}"


@dataclass
class ValidationResult:
    dataset: Path
    ok: bool
    failures: list[Failure]
    report_json: Path
    data_docs: Path | None
    n_rows: int
    rules: list[str] = field(default_factory=list)

    def summary(self, max_failures: int = 50) -> str:
        head = f"dataset {self.dataset}: "
        if self.ok:
            lines = [head + f"OK - {self.n_rows} cases passed {len(self.rules)} rules"]
        else:
            lines = [head + f"FAILED - {len(self.failures)} failure(s) in {self.n_rows} cases"]
            lines += [f"  {f}" for f in self.failures[:max_failures]]
            if len(self.failures) > max_failures:
                lines.append(f"  ... and {len(self.failures) - max_failures} more (see {self.report_json})")
        lines.append(f"report: {self.report_json}")
        if self.data_docs is not None:
            lines.append(f"data docs: {self.data_docs}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- public API
def validate_dataset(cfg: ValidateConfig) -> ValidationResult:
    """Validate a dataset dir; write ``validation.json`` (+ Data Docs); never raise on bad data."""
    root = Path(cfg.dataset)
    if not root.is_dir():
        raise DatasetError(f"dataset dir {root} does not exist or is not a directory")
    if cfg.min_per_class < 0:
        raise DatasetError(f"min_per_class must be >= 0, got {cfg.min_per_class}")
    if not (root / INFO).exists() and not (root / MANIFEST).exists():
        # not a dataset with problems but no dataset at all (e.g. the data/ that holds the datasets): say
        # so and name the datasets inside, rather than leave a failed report there
        inside = sorted(p.name for p in root.iterdir() if p.is_dir() and ((p / INFO).exists() or (p / MANIFEST).exists()))
        hint = f"; dataset dirs inside it: {', '.join(str(root / n) for n in inside)}" if inside else ""
        raise DatasetError(f"{root} is not a dataset dir (it has neither {INFO} nor {MANIFEST}){hint}")
    report = Path(cfg.report) if cfg.report is not None else root / REPORT_DIR

    failures, info, rows, columns = _read_structure(root)
    rules_run = ["manifest_exists", "manifest_utf8", "dataset_json", "required_columns"]
    docs: Path | None = None
    n_rows = len(rows)
    if failures:
        _remove_stale_docs(report)
    else:
        assert info is not None
        cases, records = _cases_table(root, info, rows, columns)
        counts = _class_counts_table(info, records)
        docs_tmp = None
        if cfg.data_docs:
            docs_tmp = temp_dir_for(report / DATA_DOCS)
        try:
            gx_failures, gx_rules = _run_gx(cases, counts, info, cfg.min_per_class, records, docs_tmp)
            if docs_tmp is not None:
                replace_dir(docs_tmp, report / DATA_DOCS)
                docs = report / DATA_DOCS / "index.html"
        finally:
            if docs_tmp is not None and docs_tmp.exists():
                shutil.rmtree(docs_tmp, ignore_errors=True)
        if not cfg.data_docs:
            _remove_stale_docs(report)
        failures += gx_failures
        rules_run += [r for r in gx_rules if r not in rules_run]

    failures = _dedupe(failures)
    rules_run.sort(key=list(RULES).index)
    ok = not failures
    report_json = report / REPORT_JSON
    _write_json(report_json, root, ok, n_rows, failures, rules_run, cfg.min_per_class, info, rows)
    return ValidationResult(
        dataset=root,
        ok=ok,
        failures=failures,
        report_json=report_json,
        data_docs=docs,
        n_rows=n_rows,
        rules=rules_run,
    )


def require_valid(dataset: Path, min_per_class: int = 1, option: str | None = None) -> None:
    """Raise :class:`DatasetError` listing every failure unless ``dataset`` passes validation.

    What consumers call before reading a dataset.  The report is written to a temporary dir
    (a consumer may only have read access to the dataset) and discarded.  ``option``: the consumer's
    command-line option that sets ``min_per_class``, named in the error when only that rule failed.
    """
    with tempfile.TemporaryDirectory(prefix="medti-validate-") as tmp:
        res = validate_dataset(
            ValidateConfig(dataset=Path(dataset), report=Path(tmp), min_per_class=min_per_class, data_docs=False)
        )
    if not res.ok:
        shown = res.failures[:50]
        more = len(res.failures) - len(shown)
        lines = [f"dataset {dataset} failed validation with {len(res.failures)} failure(s); "
                 "nothing may consume it (run `medti data validate` for the full report):"]
        lines += [f"  {f}" for f in shown]
        if more:
            lines.append(f"  ... and {more} more")
        if option and min_per_class > 0 and all(
            f.rule == "min_per_class" and "fewer than min_per_class" in f.message for f in res.failures
        ):
            lines.append(
                f"only the min-per-class rule failed: if those findings do not matter to this step, pass {option} "
                f"with a lower value (now {min_per_class}), as data validate takes it"
            )
        raise DatasetError("\n".join(lines))


# ----------------------------------------------------------------------------- structure
def _read_structure(
    root: Path,
) -> tuple[list[Failure], DatasetInfo | None, list[dict[str, Any]], list[str]]:
    """The checks that must pass before GX can run; failures instead of exceptions."""
    failures: list[Failure] = []
    info: DatasetInfo | None = None
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    try:
        info = read_info(root)
        _check_info(info)
    except DatasetError as e:
        failures.append(Failure("dataset_json", _rel_msg(str(e), root, INFO), file=INFO))
        info = None
    except (TypeError, AttributeError) as e:  # valid JSON, but not an object of the right shape
        failures.append(Failure("dataset_json", f"not a dataset.json object ({type(e).__name__}: {e})", file=INFO))
        info = None

    if not (root / MANIFEST).is_file():
        failures.append(Failure("manifest_exists", f"missing {MANIFEST}", file=MANIFEST))
        return failures, info, rows, columns
    try:
        rows = read_manifest(root)
    except DatasetError as e:
        failures.append(Failure("manifest_utf8", _rel_msg(str(e), root, MANIFEST), file=MANIFEST))
        return failures, info, [], columns
    import csv

    text = (root / MANIFEST).read_text(encoding="utf-8")
    columns = next(csv.reader(io.StringIO(text)), [])
    dupes = sorted(c for c, n in Counter(columns).items() if n > 1)
    if dupes:
        failures.append(Failure("manifest_utf8", f"duplicate column name(s) {dupes} in the header", file=MANIFEST))
    if info is not None:
        reserved = sorted(set(info.findings) & (set(_FACT_COLUMNS) | set(REQUIRED_COLUMNS)))
        if reserved:
            failures.append(
                Failure("dataset_json", f"finding name(s) {reserved} clash with reserved column names", file=INFO)
            )
        required = [*REQUIRED_COLUMNS, *info.findings]
        missing = [c for c in required if c not in columns]
        if missing:
            failures.append(
                Failure(
                    "required_columns",
                    f"missing column(s) {missing}; required: {required}",
                    file=MANIFEST,
                )
            )
    return failures, info, rows, columns


def _check_info(info: DatasetInfo) -> None:
    size = info.image_size
    if not (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise DatasetError(f"{INFO}: image_size {size!r} must be [height, width] positive integers")
    if not (isinstance(info.findings, list) and all(isinstance(f, str) and f for f in info.findings)):
        raise DatasetError(f"{INFO}: findings {info.findings!r} must be a list of column names")
    if len(set(info.findings)) != len(info.findings):
        raise DatasetError(f"{INFO}: findings {info.findings!r} has duplicates")


def _rel_msg(msg: str, root: Path, file: str | None = None) -> str:
    """Drop the dataset dir (and a leading ``<file>: ``) from a message, so that a report is
    the same wherever the data lies."""
    for r in sorted({str(root.resolve()), str(root)}, key=len, reverse=True):
        msg = msg.replace(r + os.sep, "").replace(r, "<dataset>")
    if file and msg.startswith(f"{file}: "):
        msg = msg[len(file) + 2 :]
    return msg


# ----------------------------------------------------------------------------- facts
def _cases_table(root: Path, info: DatasetInfo, rows: list[dict[str, Any]], columns: list[str]):
    """Manifest rows + per-file facts, as a DataFrame (object dtype) and a list of dicts."""
    import pandas as pd
    from tqdm.auto import tqdm

    records: list[dict[str, Any]] = []
    for i, r in enumerate(tqdm(rows, desc="validate images", unit="case", disable=None, leave=False)):
        rec: dict[str, Any] = {}
        for c in columns:
            v = r.get(c)
            if c in NON_EMPTY_COLUMNS:
                v = v.strip() if isinstance(v, str) and v.strip() != "" else None
            elif v is None:
                v = ""
            rec[c] = v
        rec["row"] = i + 2
        rec["row_fields_ok"] = None not in r and all(r.get(c) is not None for c in columns)
        rec["_extra_fields"] = len(r.get(None) or [])
        img = _file_facts(root, rec.get("path"))
        rec.update(
            path_safe=img["safe"],
            file_exists=img["exists"],
            decodes=img["decodes"],
            image_size=img["size"],
            image_channels=img["channels"],
            image_dtype=img["dtype"],
            image_constant=img["constant"],
            image_has_nan=img["has_nan"],
            image_sha256=img["sha256"],
            pixel_sha256=img["pixel_sha256"],
            _img_error=img["error"],
            _img_min=img["min"],
        )
        mask_rel = rec.get("mask") or None
        m = _file_facts(root, mask_rel) if mask_rel else None
        rec.update(
            mask_path_safe=m["safe"] if m else None,
            mask_exists=m["exists"] if m else None,
            mask_decodes=m["decodes"] if m else None,
            mask_size_ok=(m["size"] == img["size"]) if (m and m["size"] and img["size"]) else None,
            _mask_error=m["error"] if m else "",
            _mask_size=m["size"] if m else None,
        )
        records.append(rec)

    # How many splits each patient spans (the patient itself never appears in a report).
    splits_of: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        if rec.get("patient_id") and rec.get("split") in SPLITS:
            splits_of[rec["patient_id"]].add(rec["split"])
    for rec in records:
        pid = rec.get("patient_id")
        rec["patient_splits"] = len(splits_of[pid]) if pid and rec.get("split") in SPLITS else None

    public = [c for c in columns if c] + list(_FACT_COLUMNS)
    df = pd.DataFrame([{c: rec.get(c) for c in public} for rec in records], columns=public, dtype=object)
    return df, records


def _file_facts(root: Path, rel: str | None) -> dict[str, Any]:
    facts: dict[str, Any] = dict(
        safe=None, exists=None, decodes=None, size=None, channels=None, dtype=None,
        constant=None, has_nan=None, sha256=None, pixel_sha256=None, error="", min=None,
    )
    if not rel:
        return facts
    try:
        full = safe_join(root, rel)
    except DatasetError as e:
        facts.update(safe=False, error=_rel_msg(str(e), root))
        return facts
    facts["safe"] = True
    facts["exists"] = full.is_file()
    if not facts["exists"]:
        return facts
    data = full.read_bytes()
    facts["sha256"] = hashlib.sha256(data).hexdigest()
    arr, err = _decode(full, data)
    if arr is None:
        facts.update(decodes=False, error=err)
        return facts
    facts["decodes"] = True
    facts["size"] = f"{arr.shape[0]}x{arr.shape[1]}"
    facts["channels"] = int(arr.shape[2]) if arr.ndim == 3 else 1
    facts["dtype"] = str(arr.dtype)
    is_float = np.issubdtype(arr.dtype, np.floating)
    facts["has_nan"] = bool(np.isnan(arr).any()) if is_float else False
    finite = arr[~np.isnan(arr)] if is_float else arr
    facts["constant"] = bool(finite.size == 0 or finite.min() == finite.max())
    facts["min"] = finite.min().item() if finite.size else None
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    facts["pixel_sha256"] = h.hexdigest()
    return facts


def _decode(path: Path, data: bytes) -> tuple[np.ndarray | None, str]:
    """Decode with Pillow (what consumers read with) and SimpleITK (exact pixel type).

    Pillow silently narrows 16-bit RGB PNGs to 8 bits, so the pixel type, channel count and
    pixel values come from SimpleITK; a file must decode in both.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Image.UnidentifiedImageError:
        return None, "does not decode (not an image format Pillow recognises)"
    except Exception as e:  # noqa: BLE001 - any decoder error means "does not decode"
        return None, f"does not decode ({type(e).__name__}: {e})"
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        return None, f"does not decode (SimpleITK: {last[:200]})"
    if arr.ndim not in (2, 3):
        return None, f"does not decode as a 2-D image (array shape {arr.shape})"
    return arr, ""


def _class_counts_table(info: DatasetInfo, records: list[dict[str, Any]]):
    import pandas as pd

    out = []
    for f in info.findings:
        for cls in ("0", "1"):
            n = sum(1 for r in records if r.get("split") == "train" and r.get(f) == cls)
            out.append({"finding": f, "class": int(cls), "n_train": n})
    return pd.DataFrame(out, columns=["finding", "class", "n_train"], dtype=object)


# ----------------------------------------------------------------------------- GX
@dataclass
class _Check:
    rule: str
    expectation: Any
    file_column: str | None  # which column names the file of a failure
    message: Callable[[dict[str, Any]], str]


def _checks(info: DatasetInfo, records: list[dict[str, Any]]) -> list[_Check]:
    import great_expectations.expectations as gxe

    H, W = info.image_size

    def others(rec: dict[str, Any], key: str) -> str:
        ids = [str(o.get("case_id")) for o in records if o is not rec and o.get(key) == rec.get(key)]
        return ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")

    def patient_msg(rec: dict[str, Any]) -> str:
        other = [
            o for o in records
            if o.get("patient_id") == rec.get("patient_id") and o.get("split") in SPLITS
            and o.get("split") != rec.get("split")
        ]
        splits = sorted({str(o.get("split")) for o in other})
        ids = ", ".join(str(o.get("case_id")) for o in other[:5])
        return (f"its patient also has cases in split(s) {', '.join(splits)} ({ids}); "
                f"a patient must be in exactly one split")

    def dup_rows(rec: dict[str, Any]) -> str:
        rows = [str(o["row"]) for o in records if o.get("case_id") == rec.get("case_id")]
        return f"case_id {rec.get('case_id')!r} is used on rows {', '.join(rows)}"

    C = _Check
    checks: list[_Check] = [
        C("not_empty", gxe.ExpectTableRowCountToBeBetween(min_value=1), None,
          lambda r: "the manifest has no rows"),
        C("row_shape", gxe.ExpectColumnValuesToBeInSet(column="row_fields_ok", value_set=[True]), None,
          lambda r: f"row has {'more' if r['_extra_fields'] else 'fewer'} fields than the header"),
    ]
    for col in NON_EMPTY_COLUMNS:
        checks.append(C("required_values", gxe.ExpectColumnValuesToNotBeNull(column=col), None,
                        lambda r, col=col: f"{col} is empty"))
    checks += [
        C("unique_case_id", gxe.ExpectColumnValuesToBeUnique(column="case_id"), None, dup_rows),
        C("split_values", gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)), None,
          lambda r: f"split {r['split']!r} is not one of {', '.join(SPLITS)}"),
        C("patient_one_split", gxe.ExpectColumnValuesToBeBetween(column="patient_splits", max_value=1), None,
          patient_msg),
    ]
    for f in info.findings:
        checks.append(C("label_values", gxe.ExpectColumnValuesToBeInSet(column=f, value_set=["0", "1"]), None,
                        lambda r, f=f: f"label {f}={r.get(f)!r} is not 0 or 1"))
    checks += [
        C("path_safe", gxe.ExpectColumnValuesToBeInSet(column="path_safe", value_set=[True]), "path",
          lambda r: f"refused: {r['_img_error']}"),
        C("file_exists", gxe.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]), "path",
          lambda r: "image file does not exist"),
        C("decodes", gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]), "path",
          lambda r: f"image {r['_img_error']}"),
        C("sha256_matches",
          gxe.ExpectColumnPairValuesToBeEqual(column_A="sha256", column_B="image_sha256",
                                              ignore_row_if="either_value_is_missing"),
          "path", lambda r: f"sha256 in the manifest {str(r['sha256'])[:16]}... does not match the file's "
                            f"{str(r['image_sha256'])[:16]}..."),
        C("duplicate_image", gxe.ExpectColumnValuesToBeUnique(column="image_sha256"), "path",
          lambda r: f"identical image file to case(s) {others(r, 'image_sha256')}"),
        C("duplicate_image", gxe.ExpectColumnValuesToBeUnique(column="pixel_sha256"), "path",
          lambda r: f"identical pixels to case(s) {others(r, 'pixel_sha256')}"),
        C("image_size", gxe.ExpectColumnValuesToBeInSet(column="image_size", value_set=[f"{H}x{W}"]), "path",
          lambda r: f"image is {r['image_size']} (height x width), {INFO} image_size is {H}x{W}"),
        C("channels", gxe.ExpectColumnValuesToBeInSet(column="image_channels", value_set=[3]), "path",
          lambda r: f"image has {r['image_channels']} channel(s), expected 3 (RGB)"),
        C("bit_depth", gxe.ExpectColumnValuesToBeInSet(column="image_dtype", value_set=["uint8"]), "path",
          lambda r: f"image pixel type is {r['image_dtype']}, expected 8-bit (uint8)"),
        C("not_constant", gxe.ExpectColumnValuesToBeInSet(column="image_constant", value_set=[False]), "path",
          lambda r: f"image is constant (every pixel = {r['_img_min']})"),
        C("no_nan", gxe.ExpectColumnValuesToBeInSet(column="image_has_nan", value_set=[False]), "path",
          lambda r: "image contains NaN pixels"),
        C("path_safe", gxe.ExpectColumnValuesToBeInSet(column="mask_path_safe", value_set=[True]), "mask",
          lambda r: f"refused mask: {r['_mask_error']}"),
        C("file_exists", gxe.ExpectColumnValuesToBeInSet(column="mask_exists", value_set=[True]), "mask",
          lambda r: "mask file does not exist"),
        C("decodes", gxe.ExpectColumnValuesToBeInSet(column="mask_decodes", value_set=[True]), "mask",
          lambda r: f"mask {r['_mask_error']}"),
        C("mask_size", gxe.ExpectColumnValuesToBeInSet(column="mask_size_ok", value_set=[True]), "mask",
          lambda r: f"mask is {r['_mask_size']}, its image is {r['image_size']}"),
    ]
    for i, c in enumerate(checks):
        c.expectation.meta = {"rule": c.rule, "check": i}
        c.expectation.description = RULES[c.rule]
    return checks


def _run_gx(cases, counts, info: DatasetInfo, min_per_class: int, records, docs_dir: Path | None):
    """Run the suites; return (failures, rule ids evaluated)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.checkpoint import UpdateDataDocsAction
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        site = "medti"
        sites = {}
        if docs_dir is not None:
            sites[site] = {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        # In-memory stores, our Data Docs site only, no analytics, no progress bars.
        ctx = gx.get_context(
            mode="ephemeral",
            project_config=DataContextConfig(
                store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                data_docs_sites=sites,
                analytics_enabled=False,
                progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            ),
        )
        ds = ctx.data_sources.add_pandas("medti")
        by_row = {r["row"]: r for r in records}

        failures: list[Failure] = []
        rules: list[str] = []

        tables = []
        checks = _checks(info, records)
        tables.append(("cases", cases, checks, ["row", "case_id"]))
        if info.findings and min_per_class > 0:
            count_check = _Check(
                "min_per_class",
                gxe.ExpectColumnValuesToBeBetween(column="n_train", min_value=min_per_class),
                None,
                lambda r: "",
            )
            count_check.expectation.meta = {"rule": "min_per_class", "check": 0}
            count_check.expectation.description = RULES["min_per_class"] + f" (min_per_class={min_per_class})"
            tables.append(("class_counts", counts, [count_check], ["finding", "class"]))

        for name, df, table_checks, index_cols in tables:
            suite = ctx.suites.add(
                gx.ExpectationSuite(name=name, expectations=[c.expectation for c in table_checks])
            )
            bd = ds.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
            vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=bd, suite=suite))
            cp = ctx.checkpoints.add(
                gx.Checkpoint(
                    name=name,
                    validation_definitions=[vd],
                    actions=[UpdateDataDocsAction(name="data_docs", site_names=[site])] if docs_dir else [],
                    result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_cols},
                )
            )
            res = cp.run(batch_parameters={"dataframe": df})
            for vr in res.run_results.values():
                for er in vr.results:
                    meta = er.expectation_config.meta or {}
                    rule = meta.get("rule", er.expectation_config.type)
                    if rule not in rules:
                        rules.append(rule)
                    if er.success:
                        continue
                    if name == "class_counts":
                        failures += _count_failures(er, min_per_class)
                    else:
                        failures += _case_failures(er, table_checks[meta["check"]], by_row)
    return failures, rules


def _case_failures(er, check: _Check, by_row: dict[int, dict[str, Any]]) -> list[Failure]:
    exc = er.exception_info or {}
    if exc.get("raised_exception"):
        return [Failure(check.rule, f"Great Expectations could not evaluate the check: {exc.get('exception_message')}",
                        file=MANIFEST)]
    idx = (er.result or {}).get("unexpected_index_list") or []
    if not idx:  # a table-level expectation
        return [Failure(check.rule, check.message({}), file=MANIFEST)]
    out = []
    for entry in idx:
        rec = by_row[int(entry["row"])]
        file = rec.get(check.file_column) if check.file_column else MANIFEST
        out.append(Failure(check.rule, check.message(rec), case_id=rec.get("case_id"), row=rec["row"],
                           file=file or MANIFEST))
    return out


def _count_failures(er, min_per_class: int) -> list[Failure]:
    exc = er.exception_info or {}
    if exc.get("raised_exception"):
        return [Failure("min_per_class", f"Great Expectations could not evaluate: {exc.get('exception_message')}",
                        file=MANIFEST)]
    out = []
    for entry in (er.result or {}).get("unexpected_index_list") or []:
        f, cls, n = entry["finding"], int(entry["class"]), int(entry["n_train"])
        out.append(Failure("min_per_class",
                           f"finding {f!r} has {n} train case(s) of class {cls}, fewer than min_per_class={min_per_class}",
                           file=MANIFEST))
    return out


# ----------------------------------------------------------------------------- report
def _dedupe(failures: list[Failure]) -> list[Failure]:
    """One failure per (rule, row, file); keep the first (e.g. identical bytes before pixels)."""
    seen: set[tuple] = set()
    out = []
    for f in failures:
        key = (f.rule, f.row, f.file) if f.row is not None else (f.rule, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    order = {r: i for i, r in enumerate(RULES)}
    return sorted(out, key=lambda f: (f.row is not None, f.row or 0, order.get(f.rule, 999)))


def _write_json(path, root, ok, n_rows, failures, rules, min_per_class, info, rows) -> None:
    by_rule = Counter(f.rule for f in failures)
    per_split = Counter(str(r.get("split") or "") for r in rows)
    doc = {
        "dataset": Path(root).resolve().name,
        "ok": ok,
        "n_rows": n_rows,
        "min_per_class": min_per_class,
        "counts": {
            "rows": n_rows,
            "failures": len(failures),
            "failing_rows": len({f.row for f in failures if f.row is not None}),
            "failures_by_rule": dict(sorted(by_rule.items())),
            "rows_by_split": dict(sorted(per_split.items())),
        },
        "failures": [{k: v for k, v in asdict(f).items()} for f in failures],
        "rules": [{"id": r, "description": RULES.get(r, r)} for r in rules],
        "findings": list(info.findings) if info is not None else None,
    }
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _remove_stale_docs(report: Path) -> None:
    """A report without fresh Data Docs must not sit next to docs of an earlier run."""
    old = report / DATA_DOCS
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
