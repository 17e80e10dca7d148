"""Dataset validation (real Great Expectations): a good dataset passes, every kind of breakage
is rejected naming the rule and the case/file, and nothing downstream is written for it."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medti.cli import app
from medti.data.dataset import (
    DatasetError,
    DatasetInfo,
    DatasetWriter,
    encode_png,
    read_manifest,
    write_manifest,
)
from medti.data.validate import RULES, ValidateConfig, require_valid, validate_dataset
from medti.io import sha256_bytes

FINDING = "csPCa"
SPLIT_OF_PATIENT = ("train", "val", "test")


def make_dataset(out: Path, n: int = 12, size: int = 16, seed: int = 0) -> Path:
    """n cases of RGB noise; patient p<k> owns cases 2k and 2k+1 (one of each class) and all
    of a patient's cases share one split; odd (positive) cases carry a lesion mask."""
    rng = np.random.default_rng(seed)
    info = DatasetInfo(
        modality="prostate_mri", channels=["T2W", "ADC", "DWI"], findings=[FINDING],
        image_size=[size, size], source="test",
    )
    with DatasetWriter(out, info, overwrite=True) as w:
        for i in range(n):
            pid = i // 2
            mask = None
            if i % 2:
                mask = np.zeros((size, size), np.uint8)
                mask[2:6, 3:8] = 255
            w.add(
                case_id=f"c{i:02d}", patient_id=f"p{pid}", split=SPLIT_OF_PATIENT[pid % 3],
                labels={FINDING: i % 2}, image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                mask=mask,
            )
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("pristine") / "ds")


@pytest.fixture()
def dataset(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "ds", symlinks=True))


# ----------------------------------------------------------------------------- breakage helpers
def rows_of(ds: Path) -> list[dict[str, str]]:
    return read_manifest(ds)


def write_rows(ds: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> None:
    columns = columns or list(rows[0])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    (ds / "manifest.csv").write_text(buf.getvalue(), encoding="utf-8")


def edit(ds: Path, which: str, **values: str) -> None:
    rows = rows_of(ds)
    for r in rows:
        if r["case_id"] == which:
            r.update(values)
    write_rows(ds, rows)


def put_image(ds: Path, case_id: str, data: bytes, *, fix_sha: bool = True) -> None:
    """Replace a case's image file (and, by default, record its true sha256 so only the
    property under test is wrong)."""
    (ds / "images" / f"{case_id}.png").write_bytes(data)
    if fix_sha:
        edit(ds, case_id, sha256=sha256_bytes(data))


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def outside_fifo(ds: Path) -> Path:
    """A named pipe outside the dataset: opening it for reading would block the test, so a
    passing test also shows that validation never opened it."""
    p = ds.parent / "outside.png"
    if not p.exists():
        os.mkfifo(p)
    return p


def png16_rgb(size: int = 16) -> bytes:
    import SimpleITK as sitk

    arr = (np.random.default_rng(1).integers(0, 65536, (size, size, 3))).astype(np.uint16)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"medti-rgb16-{os.getpid()}.png"
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(tmp))
    try:
        return tmp.read_bytes()
    finally:
        tmp.unlink()


def noise(size: int = 16, channels: int | None = 3, seed: int = 5) -> np.ndarray:
    shape = (size, size) if channels is None else (size, size, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def drop_column(ds: Path, col: str) -> None:
    rows = rows_of(ds)
    write_rows(ds, rows, [c for c in rows[0] if c != col])


def float_nan_tiff(ds: Path) -> None:
    a = np.random.default_rng(2).random((16, 16)).astype(np.float32)
    a[3, 4] = np.nan
    Image.fromarray(a, mode="F").save(ds / "images" / "c08.tif")
    (ds / "images" / "c08.png").unlink()
    edit(ds, "c08", path="images/c08.tif", sha256=sha256_bytes((ds / "images" / "c08.tif").read_bytes()))


def non_utf8(ds: Path) -> None:
    """A Latin-1 'e acute' in c03's caption (manifest line 5)."""
    edit(ds, "c03", caption="CAPTION_HERE")
    data = (ds / "manifest.csv").read_bytes()
    (ds / "manifest.csv").write_bytes(data.replace(b"CAPTION_HERE", "l\u00e9sion".encode("latin-1")))


def extra_field(ds: Path) -> None:
    lines = (ds / "manifest.csv").read_text(encoding="utf-8").splitlines()
    lines = [ln + ",surplus" if ln.startswith("c05,") else ln for ln in lines]
    (ds / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def bad_image_size_json(ds: Path) -> None:
    info = json.loads((ds / "dataset.json").read_text())
    info["image_size"] = "big"
    (ds / "dataset.json").write_text(json.dumps(info))


@dataclass
class Breakage:
    name: str
    apply: Callable[[Path], None]
    rule: str
    case_id: str | None = None  # the failure must name this case ...
    file: str | None = None  # ... and/or this file
    text: str | None = None  # ... and say this
    min_per_class: int = 1
    also: tuple[str, ...] = ()  # other rules this breakage legitimately breaks too


B = Breakage
BREAKAGES = [
    B("corrupt_png", lambda d: put_image(d, "c03", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20), "decodes", "c03", "images/c03.png"),
    B("truncated_png", lambda d: put_image(d, "c05", (d / "images/c05.png").read_bytes()[:200]), "decodes", "c05"),
    B("wrong_size", lambda d: put_image(d, "c02", png(noise(8))), "image_size", "c02", "images/c02.png", "8x8"),
    B("grey_png", lambda d: put_image(d, "c04", png(noise(channels=None))), "channels", "c04", text="1 channel"),
    B("rgba_png", lambda d: put_image(d, "c06", png(noise(channels=4))), "channels", "c06", text="4 channel"),
    B("constant_image", lambda d: put_image(d, "c07", png(np.full((16, 16, 3), 128, np.uint8))), "not_constant", "c07", text="128"),
    B("duplicate_case_id", lambda d: edit(d, "c09", case_id="c08"), "unique_case_id", "c08"),
    B("label_2", lambda d: edit(d, "c01", **{FINDING: "2"}), "label_values", "c01", text="'2'"),
    B("label_blank", lambda d: edit(d, "c01", **{FINDING: ""}), "label_values", "c01"),
    B("label_yes", lambda d: edit(d, "c10", **{FINDING: "yes"}), "label_values", "c10", text="'yes'"),
    B("missing_file", lambda d: (d / "images/c05.png").unlink(), "file_exists", "c05", "images/c05.png"),
    B("sha_mismatch", lambda d: edit(d, "c10", sha256="0" * 64), "sha256_matches", "c10", "images/c10.png"),
    B("patient_in_two_splits", lambda d: edit(d, "c02", patient_id="p0"), "patient_one_split", "c02", text="train"),
    B("bad_split", lambda d: edit(d, "c04", split="training"), "split_values", "c04", text="'training'"),
    B("empty_class_in_train", lambda d: [edit(d, c, **{FINDING: "0"}) for c in ("c01", "c07")], "min_per_class",
      file="manifest.csv", text="'csPCa' has 0 train case(s) of class 1"),
    B("min_per_class_3", lambda d: None, "min_per_class", file="manifest.csv", text="has 2 train case(s)", min_per_class=3),
    B("path_dotdot", lambda d: (outside_fifo(d), edit(d, "c06", path="../outside.png")), "path_safe", "c06", "../outside.png", "'..'"),
    B("path_absolute", lambda d: edit(d, "c06", path=str(outside_fifo(d))), "path_safe", "c06", text="absolute"),
    B("symlink_outside", lambda d: ((d / "images/c06.png").unlink(), (d / "images/c06.png").symlink_to(outside_fifo(d))),
      "path_safe", "c06", "images/c06.png", "escapes"),
    B("mask_path_dotdot", lambda d: (outside_fifo(d), edit(d, "c03", mask="../outside.png")), "path_safe", "c03", "../outside.png"),
    B("non_utf8_csv", non_utf8, "manifest_utf8", file="manifest.csv", text="line 5"),
    B("missing_column", lambda d: drop_column(d, "sha256"), "required_columns", file="manifest.csv", text="sha256"),
    B("missing_finding_column", lambda d: drop_column(d, FINDING), "required_columns", file="manifest.csv", text=FINDING),
    B("duplicate_image_bytes", lambda d: put_image(d, "c02", (d / "images/c00.png").read_bytes()), "duplicate_image", "c02", text="c00"),
    B("duplicate_image_pixels",
      lambda d: put_image(d, "c02", png(np.asarray(Image.open(d / "images/c00.png")))), "duplicate_image", "c02", text="identical pixels"),
    B("missing_dataset_json", lambda d: (d / "dataset.json").unlink(), "dataset_json", file="dataset.json"),
    B("bad_image_size_in_json", bad_image_size_json, "dataset_json", file="dataset.json", text="image_size"),
    B("png_16bit_rgb", lambda d: put_image(d, "c08", png16_rgb()), "bit_depth", "c08", text="uint16"),
    B("png_16bit_grey", lambda d: put_image(d, "c09", png(noise(channels=None).astype(np.uint16) * 257)), "bit_depth", "c09",
      also=("channels",)),
    B("float_image_with_nan", float_nan_tiff, "no_nan", "c08", "images/c08.tif", also=("channels", "bit_depth")),
    B("mask_wrong_size", lambda d: (d / "masks/c01.png").write_bytes(encode_png(np.zeros((8, 8), np.uint8))), "mask_size", "c01", "masks/c01.png"),
    B("mask_missing", lambda d: (d / "masks/c03.png").unlink(), "file_exists", "c03", "masks/c03.png"),
    B("mask_corrupt", lambda d: (d / "masks/c05.png").write_bytes(b"nope"), "decodes", "c05", "masks/c05.png"),
    B("no_manifest", lambda d: (d / "manifest.csv").unlink(), "manifest_exists", file="manifest.csv"),
    B("empty_manifest", lambda d: write_manifest(d / "manifest.csv", [], [FINDING]), "not_empty", text="no rows",
      also=("min_per_class",)),
    B("blank_case_id", lambda d: edit(d, "c04", case_id=""), "required_values", file="manifest.csv", text="case_id is empty"),
    B("blank_patient_id", lambda d: edit(d, "c04", patient_id=" "), "required_values", "c04", text="patient_id is empty"),
    B("extra_field_in_row", extra_field, "row_shape", "c05", text="more fields"),
]


def assert_named(failures, b: Breakage) -> None:
    hits = [f for f in failures if f.rule == b.rule]
    assert hits, f"{b.name}: no {b.rule!r} failure in {[str(f) for f in failures]}"
    if b.case_id is not None:
        hits = [f for f in hits if f.case_id == b.case_id]
        assert hits, f"{b.name}: {b.rule} does not name case {b.case_id}: {[str(f) for f in failures]}"
    if b.file is not None:
        hits = [f for f in hits if f.file == b.file]
        assert hits, f"{b.name}: {b.rule} does not name file {b.file}: {[str(f) for f in failures]}"
    if b.text is not None:
        assert any(b.text in f.message for f in hits), f"{b.name}: {[str(f) for f in hits]}"
    # and nothing else is blamed (no collateral false alarms)
    assert {f.rule for f in failures} <= {b.rule, *b.also}, [str(f) for f in failures]


# ----------------------------------------------------------------------------- tests
def test_valid_dataset_passes_and_writes_reports(dataset):
    res = validate_dataset(ValidateConfig(dataset=dataset))
    assert res.ok, res.summary()
    assert res.failures == [] and res.n_rows == 12
    doc = json.loads(res.report_json.read_text())
    assert res.report_json == dataset / "validation" / "validation.json"
    assert doc["ok"] is True and doc["counts"]["rows"] == 12 and doc["failures"] == []
    assert doc["counts"]["rows_by_split"] == {"test": 4, "train": 4, "val": 4}
    # every rule with a per-file/per-row check was actually evaluated on this labelled, masked set
    assert {r["id"] for r in doc["rules"]} == set(RULES)
    assert res.data_docs == dataset / "validation" / "data_docs" / "index.html"
    html = res.data_docs.read_text()
    assert "cases" in html and "class_counts" in html
    assert "OK" in res.summary()
    # a re-run on the same data writes the same JSON bytes (no timestamps)
    before = res.report_json.read_bytes()
    validate_dataset(ValidateConfig(dataset=dataset, data_docs=False))
    assert res.report_json.read_bytes() == before
    require_valid(dataset)  # does not raise


def test_unlabeled_corpus_skips_class_counts(tmp_path):
    info = DatasetInfo(modality="cxr", channels=["x", "x", "x"], findings=[], image_size=[16, 16], source="test")
    with DatasetWriter(tmp_path / "u", info) as w:
        for i in range(3):
            w.add(case_id=f"u{i}", patient_id=f"q{i}", split="train", image=noise(seed=i), caption="chest x-ray")
    res = validate_dataset(ValidateConfig(dataset=tmp_path / "u", report=tmp_path / "rep", min_per_class=5))
    assert res.ok, res.summary()
    assert "min_per_class" not in res.rules and (tmp_path / "rep" / "validation.json").is_file()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("b", BREAKAGES, ids=[b.name for b in BREAKAGES])
def test_malformed_dataset_is_rejected_naming_the_cause(dataset, b):
    b.apply(dataset)
    res = validate_dataset(ValidateConfig(dataset=dataset, min_per_class=b.min_per_class, data_docs=False))
    assert not res.ok
    assert_named(res.failures, b)
    # the report says the same thing, and the summary a user reads names rule and case
    doc = json.loads(res.report_json.read_text())
    assert doc["ok"] is False and any(f["rule"] == b.rule for f in doc["failures"])
    summary = res.summary()
    assert f"[{b.rule}]" in summary
    if b.case_id:
        assert f"case {b.case_id}" in summary


CONSUMER_STOPPED = ["corrupt_png", "label_2", "path_dotdot", "missing_column", "empty_class_in_train"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("b", [b for b in BREAKAGES if b.name in CONSUMER_STOPPED], ids=CONSUMER_STOPPED)
def test_require_valid_stops_consumers(dataset, b):
    b.apply(dataset)
    with pytest.raises(DatasetError) as e:
        require_valid(dataset, min_per_class=b.min_per_class)
    msg = str(e.value)
    assert f"[{b.rule}]" in msg and "failed validation" in msg
    if b.case_id:
        assert f"case {b.case_id}" in msg
    assert not (dataset / "validation").exists()  # a consumer's check writes nothing into the data


def test_failures_are_reported_together_with_rows(dataset):
    edit(dataset, "c01", **{FINDING: "2"})
    (dataset / "images/c05.png").unlink()
    res = validate_dataset(ValidateConfig(dataset=dataset, data_docs=False))
    got = {(f.rule, f.case_id, f.row) for f in res.failures}
    assert ("label_values", "c01", 3) in got  # header is row 1, c00 is row 2
    assert ("file_exists", "c05", 7) in got
    assert len(res.failures) == 2, res.summary()


def test_failing_run_replaces_stale_data_docs(dataset):
    ok = validate_dataset(ValidateConfig(dataset=dataset))
    assert ok.data_docs is not None and ok.data_docs.is_file()
    (dataset / "manifest.csv").unlink()
    bad = validate_dataset(ValidateConfig(dataset=dataset))
    assert not bad.ok and bad.data_docs is None
    assert not (dataset / "validation" / "data_docs").exists()


def test_dvcignore_excludes_reports():
    # The repository ignores report dirs so validating never changes a dataset's DVC version.
    root = Path(__file__).resolve().parents[1]
    rules = [ln.strip() for ln in (root / ".dvcignore").read_text().splitlines()]
    assert "validation/" in rules


def test_cli_validate_exit_codes(dataset, monkeypatch):
    runner = CliRunner()
    monkeypatch.chdir(dataset.parent)  # a relative dataset path, as typed by a user
    r = runner.invoke(app, ["data", "validate", dataset.name])
    assert r.exit_code == 0, r.output
    assert "OK" in r.output and "validation.json" in r.output
    assert (dataset / "validation" / "data_docs" / "index.html").is_file()
    edit(dataset, "c10", sha256="f" * 64)
    r = runner.invoke(app, ["data", "validate", str(dataset), "--report", str(dataset.parent / "rep")])
    assert r.exit_code != 0
    assert "[sha256_matches]" in r.output and "case c10" in r.output and "images/c10.png" in r.output
    assert (dataset.parent / "rep" / "validation.json").is_file()
    assert "Calculating Metrics" not in r.output  # GX progress bars are off
    r = runner.invoke(app, ["data", "validate", str(dataset.parent / "nope")])
    assert r.exit_code != 0 and "does not exist" in r.output


def test_validating_a_dir_that_holds_datasets_names_them_and_writes_nothing(dataset, tmp_path):
    # e.g. `medti data validate data` meant for data/prostate: say which dirs to validate, leave data/ as it was
    import shutil

    parent = tmp_path / "data"
    shutil.copytree(dataset, parent / "prostate")
    (parent / "notes").mkdir()
    r = CliRunner().invoke(app, ["data", "validate", str(parent)])
    assert r.exit_code == 1
    assert "not a dataset dir" in r.output and str(parent / "prostate") in r.output and "notes" not in r.output
    assert sorted(p.name for p in parent.iterdir()) == ["notes", "prostate"]
