"""`medti data add`: new cases reach a dataset validated and whole, or not at all."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from diffusion_fixtures import make_blob_dataset
from medti.cli import app
from medti.data.dataset import DatasetError, read_manifest
from medti.data.phantoms import PhantomConfig, generate_phantoms
from medti.data.validate import require_valid
from medti.data.versions import content_version


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def base(tmp_path):
    return generate_phantoms(PhantomConfig(kind="prostate", out=tmp_path / "data", n=30, size=32, seed=0)).out


def test_new_cases_are_added_validated_and_the_dataset_gets_a_new_version(base, tmp_path):
    new = make_blob_dataset(tmp_path / "new", n=16, size=32)
    before, version = read_manifest(base), content_version(base)
    res = CliRunner().invoke(app, ["data", "add", "--to", str(base), "--from", str(new)])
    assert res.exit_code == 0, res.output
    assert "added 16 case(s)" in res.output and "now holds 46" in res.output
    rows = read_manifest(base)
    assert rows[: len(before)] == before and {r["case_id"] for r in rows[len(before):]} == {
        r["case_id"] for r in read_manifest(new)}
    require_valid(base, min_per_class=0)
    assert content_version(base) != version
    assert (base / "images" / "case-000.png").read_bytes() == (new / "images" / "case-000.png").read_bytes()


@pytest.mark.parametrize("case, words", [
    ("again", ["case id(s) already in", "case-000"]),
    ("size", ["image_size", "[16, 16]", "[32, 32]", "dataset.json"]),
    ("patient", ["another split", "would leak"]),
    ("broken", ["failed validation"]),
])
def test_bad_new_cases_are_refused_naming_the_reason_and_the_dataset_is_untouched(base, tmp_path, case, words):
    new = make_blob_dataset(tmp_path / "new", n=16, size=16 if case == "size" else 32)
    if case == "again":
        CliRunner().invoke(app, ["data", "add", "--to", str(base), "--from", str(new)])
    if case == "patient":  # a new case of a patient the dataset has, under another split
        old = read_manifest(base)[0]
        rows = read_manifest(new)
        other = next(r for r in rows if r["split"] != old["split"])
        other["patient_id"] = old["patient_id"]
        with open(new / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if case == "broken":
        (new / "images" / "case-003.png").write_bytes(b"not a png")
    kept = _files(base)
    res = CliRunner().invoke(app, ["data", "add", "--to", str(base), "--from", str(new)])
    assert res.exit_code == 1 and res.output.startswith("error:"), res.output
    for w in words:
        assert w in res.output, (w, res.output)
    assert _files(base) == kept
    assert not [p for p in base.parent.iterdir() if p.name.startswith(".data.") and p.name.endswith(".tmp")]


def test_a_dataset_without_new_cases_is_refused(base, tmp_path):
    from medti.data.add import AddConfig, add_cases

    with pytest.raises(DatasetError, match="(?s)new failed validation.*the manifest has no rows"):
        new = make_blob_dataset(tmp_path / "new", n=0, size=32)
        add_cases(AddConfig(to=base, source=new))
    assert len(read_manifest(base)) == 30
