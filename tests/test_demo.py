"""`medti demo` end to end on the micro base: phantoms -> validate -> DVC snapshot -> embeddings -> samples."""

from __future__ import annotations

import json

import pytest

from medti.demo import DemoConfig, run_demo


@pytest.fixture()
def dvc_repo(tmp_path, monkeypatch):
    from repos import dvc_repo

    return dvc_repo(tmp_path, monkeypatch, remote=tmp_path / "remote")


def test_demo_runs_end_to_end_and_says_where_outputs_are(dvc_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo-out"
    res = run_demo(DemoConfig(out=out, data=dvc_repo / "data", base="micro", n=40))
    text = res.summary()
    assert (dvc_repo / "data" / "prostate" / "manifest.csv").exists()
    assert (dvc_repo / "data" / "cxr" / "manifest.csv").exists()
    # rendered at the embedded base's size, so textual inversion trains on them unresized
    assert json.loads((dvc_repo / "data" / "prostate" / "dataset.json").read_text())["image_size"] == [32, 32]
    assert (dvc_repo / "data.dvc").exists() and "version" in text
    # the prostate phantoms the pipeline trains on are the experiment's subtle ones
    assert json.loads((dvc_repo / "data" / "prostate" / "dataset.json").read_text())["extra"]["phantom"]["preset"] == "subtle"
    assert res.data["prostate"] == dvc_repo / "data" / "prostate"
    assert "[base] embedded micro base" in text
