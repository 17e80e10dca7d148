"""The memorisation audit as a user meets it: planted copies of training images (exact, mirrored, re-noised,
shifted, brightness and contrast changed) mixed into a clean synthetic set are every one flagged and nothing else
is; the clean set passes; the report, tables and pictures are written beside the set; bad inputs fail naming the
file and field; and the registry refuses an embedding whose synthetic set failed, naming the images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medti.cli import app
from medti.data.dataset import (
    Dataset,
    DatasetInfo,
    DatasetWriter,
    load_image,
    read_manifest,
    write_manifest,
)
from medti.data.phantoms import PhantomConfig, generate_phantoms
from medti.data.versions import dataset_version
from medti.diffusion.embeddings import Embedding, save_embedding
from medti.quality import QualityError
from medti.quality.memorization import MemorizationConfig, audit_memorization, default_out

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SIZE = 32


def _plants(train: list[np.ndarray]) -> dict[str, tuple[np.ndarray, str]]:
    """Copies of training images (H x W x 3 uint8) as a careless or memorising generator would make them:
    name -> (image, the transform the audit should report)."""
    rng = np.random.default_rng(0)

    def noisy(x):
        return np.clip(x + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)

    def shifted(x, dy, dx):  # the rolled-in border lies outside the window the audit compares
        return np.roll(x, (dy, dx), axis=(0, 1))

    def dimmed(x, gain, offset):
        return np.clip(x.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)

    return {
        "exact": (train[0], "identity"),
        "flip": (train[1][:, ::-1], "flip"),
        "renoised": (noisy(train[2]), "identity"),
        "shift": (shifted(train[3], 2, -3), "shift +2,-3"),
        "flip-shift": (shifted(train[4][:, ::-1], -1, 1), "flip, shift -1,+1"),
        "darker": (dimmed(train[5], 0.6, 0), "identity"),
        "brighter-flatter": (dimmed(train[6], 0.7, 60), "identity"),
        "renoised-shift": (noisy(shifted(train[7], 0, 2)), "shift +0,+2"),
    }


def _synthetic(out: Path, images: dict[str, np.ndarray], version: str, *, size: int = SIZE,
               channels=("T2W", "ADC", "DWI")) -> Path:
    """A synthetic dataset dir, as medti synth writes one (rows name the embedding version they were made with)."""
    info = DatasetInfo(modality="prostate_mri", channels=list(channels), findings=["csPCa"], image_size=[size, size],
                       source="synthetic", name=out.name)
    with DatasetWriter(out, info) as w:
        for i, (case, img) in enumerate(images.items()):
            w.add(case_id=case, patient_id=f"SYN-{i:05d}", split="train", image=img, labels={"csPCa": i % 2},
                  prompt="axial prostate mri, csPCa", seed=i, embedding_version=f"csPCa:{version}")
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem")
    # train split = the training cases; val + test = the held-out real cases the threshold is calibrated on
    real = generate_phantoms(PhantomConfig(kind="prostate", out=root / "real", n=72, size=SIZE, seed=1)).out
    other = generate_phantoms(PhantomConfig(kind="prostate", out=root / "other", n=40, size=SIZE, seed=2)).out
    emb = save_embedding(Embedding("<cspca>", torch.randn(3, 32, generator=torch.Generator().manual_seed(0)),
                                   {"concept": "csPCa", "modality": "prostate_mri", "base_model_hash": "0" * 16,
                                    "where": "csPCa=1", "split": "train", "n_images": "4",
                                    "dataset_version": dataset_version(real)}), root / "csPCa.safetensors")
    from medti.diffusion.embeddings import load_embedding

    version = load_embedding(emb).version
    train_cases = Dataset(real).cases("train")
    train = [load_image(c.path) for c in train_cases]
    # the clean synthetic set: cases of the same generator that are not in the training set
    clean = {f"syn-{i:04d}": load_image(c.path) for i, c in enumerate(Dataset(other).cases())}
    plants = _plants(train)
    planted = dict(clean) | {f"syn-plant-{k}": img for k, (img, _) in plants.items()}
    return {"root": root, "real": real, "other": other, "emb": emb, "version": version,
            "train_ids": [c.case_id for c in train_cases], "plants": plants,
            "clean": _synthetic(root / "syn-clean", clean, version),
            "planted": _synthetic(root / "syn-planted", planted, version)}


@pytest.fixture(scope="module")
def audits(sets):
    clean = audit_memorization(MemorizationConfig(train=sets["real"], synthetic=sets["clean"]))
    planted = audit_memorization(MemorizationConfig(train=sets["real"], synthetic=sets["planted"]))
    return clean, planted


# ----------------------------------------------------------------------------- what it catches
def test_every_planted_copy_is_flagged_and_nothing_else(sets, audits):
    _, res = audits
    assert not res.passed
    assert sorted(res.flagged_ids) == sorted(f"syn-plant-{k}" for k in sets["plants"])
    assert res.copy_rate == pytest.approx(len(sets["plants"]) / res.n_synthetic)
    doc = json.loads((res.out / "audit.json").read_text())
    assert doc["verdict"] == "fail" and doc["flagged"] == len(sets["plants"])
    by_case = {f["case_id"]: f for f in doc["flags"]}
    for i, (name, (_, transform)) in enumerate(sets["plants"].items()):
        found = by_case[f"syn-plant-{name}"]["pixel"]
        # each plant is traced to the training case it was made from, under the transform that made it
        assert found["train_case_id"] == sets["train_ids"][i], name
        assert found["transform"] == transform, name
        assert found["similarity"] > doc["spaces"]["pixel"]["threshold"]


def test_a_clean_synthetic_set_of_new_cases_passes(audits):
    res, _ = audits
    assert res.passed and res.flagged == 0 and res.copy_rate == 0.0
    assert res.threshold > res.heldout_max  # calibrated above every real held-out case
    assert "PASS" in res.summary()


def test_brightness_and_contrast_do_not_hide_a_copy(sets, audits):
    _, res = audits
    rows = {r["case_id"]: r for r in csv.DictReader(open(res.out / "nearest.csv"))}
    for name in ("darker", "brighter-flatter"):
        assert float(rows[f"syn-plant-{name}"]["pixel_similarity"]) > 0.99
    assert float(rows["syn-plant-exact"]["pixel_similarity"]) == pytest.approx(1.0, abs=1e-5)


def test_the_report_is_written_beside_the_synthetic_set_not_inside_it(sets, audits):
    res, _ = audits
    assert res.out == default_out(sets["clean"]) == sets["clean"].resolve().with_name("syn-clean.memorization")
    assert sorted(p.name for p in res.out.iterdir()) == ["audit.json", "calibration.csv", "closest_pairs.png",
                                                       "histogram.png", "nearest.csv"]
    assert not any(p.name.endswith(".memorization") for p in sets["clean"].iterdir())
    doc = json.loads((res.out / "audit.json").read_text())
    cal = doc["spaces"]["pixel"]
    assert doc["heldout"]["split"] == "val+test" and doc["heldout"]["dir"] == "real"
    assert "held-out real case" in cal["rule"] and cal["threshold"] == pytest.approx(1 - 0.5 * (1 - cal["heldout_max"]))
    assert doc["synthetic"]["embeddings"] == [f"csPCa:{sets['version']}"]
    nearest = list(csv.DictReader(open(res.out / "nearest.csv")))
    assert len(nearest) == res.n_synthetic and {r["pixel_train_case_id"] for r in nearest} <= set(sets["train_ids"])
    assert len(list(csv.DictReader(open(res.out / "calibration.csv")))) == res.n_heldout
    # case ids only: no patient id of the real or the synthetic set reaches any output
    patients = {r["patient_id"] for d in (sets["real"], sets["clean"]) for r in read_manifest(d)}
    text = "".join(p.read_text() for p in res.out.glob("*.[jc]s*"))
    assert not [p for p in patients if p in text]
    from PIL import Image

    for png in ("histogram.png", "closest_pairs.png"):
        with Image.open(res.out / png) as im:
            assert im.size[0] > 300 and im.size[1] > 200


def test_a_feature_space_is_searched_too_when_given_a_network(sets, tmp_path):
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    net = tmp_path / "resnet"
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")) \
        .save_pretrained(net, safe_serialization=True)
    res = audit_memorization(MemorizationConfig(train=sets["real"], synthetic=sets["planted"], features=net,
                                                out=tmp_path / "audit"))
    doc = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert set(doc["spaces"]) == {"pixel", "feature"} and res.feature_threshold is not None
    assert {f"syn-plant-{k}" for k in sets["plants"]} <= set(res.flagged_ids)
    exact = next(f for f in doc["flags"] if f["case_id"] == "syn-plant-exact")
    assert "feature" in exact["flagged_by"] and exact["feature"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    # by default a feature-space exceedance alone is listed for review, not counted as a copy
    assert not doc["spaces"]["feature"]["counted"] and doc["spaces"]["pixel"]["counted"]
    assert all(f["flagged_by"] == ["feature"] for f in doc["review"]) and res.flagged == len(sets["plants"])
    header = next(csv.reader(open(tmp_path / "audit" / "nearest.csv")))
    assert "feature_similarity" in header and "feature_train_case_id" in header and "review" in header
    both = audit_memorization(MemorizationConfig(train=sets["real"], synthetic=sets["planted"], features=net,
                                                 flag_features=True, out=tmp_path / "both"))
    assert set(both.flagged_ids) == set(res.flagged_ids) | set(res.review_ids) and not both.review_ids


def test_embeddings_narrow_the_training_set_to_the_cases_they_learnt_from(sets, tmp_path):
    res = audit_memorization(MemorizationConfig(train=sets["real"], synthetic=sets["planted"], embeddings=(sets["emb"],),
                                                out=tmp_path / "audit"))
    doc = json.loads((tmp_path / "audit" / "audit.json").read_text())
    learnt = sorted(c.case_id for c in Dataset(sets["real"]).cases("train", where={"csPCa": 1}))[:4]
    assert res.n_train == 4 and doc["train"]["embeddings"][0]["where"] == "csPCa=1"
    plant_sources = dict(zip((f"syn-plant-{k}" for k in sets["plants"]), sets["train_ids"], strict=False))
    caught = {c for c, src in plant_sources.items() if src in learnt}
    assert caught <= set(res.flagged_ids)  # copies of what it learnt from are still caught


# ----------------------------------------------------------------------------- command line
def test_the_command_line_fails_a_set_with_copies_and_names_them(sets, tmp_path):
    out = tmp_path / "cli-audit"
    res = CliRunner().invoke(app, ["quality", "memorization", "--train", str(sets["real"]), "--synthetic",
                                   str(sets["planted"]), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "memorisation audit FAIL" in res.output and "syn-plant-exact" in res.output
    assert json.loads((out / "audit.json").read_text())["verdict"] == "fail"
    again = CliRunner().invoke(app, ["quality", "memorization", "--train", str(sets["real"]), "--synthetic",
                                     str(sets["planted"]), "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output  # never replaced without --force
    tolerant = CliRunner().invoke(app, ["quality", "memorization", "--train", str(sets["real"]), "--synthetic",
                                        str(sets["planted"]), "--out", str(out), "--force", "--tolerance", "0.3"])
    assert tolerant.exit_code == 0 and "PASS" in tolerant.output


def test_with_tracking_on_the_verdict_and_the_report_reach_mlflow(sets, audits, mlflow_server, tmp_path):
    import mlflow

    out = tmp_path / "tracked"
    res = CliRunner().invoke(app, ["--tracking-uri", mlflow_server, "--experiment-name", "memorization-audit",
                                   "quality", "memorization", "--train", str(sets["real"]), "--synthetic",
                                   str(sets["clean"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    client = mlflow.MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("memorization-audit").experiment_id])
    assert run.data.metrics["passed"] == 1.0 and run.data.metrics["copy_rate"] == 0.0
    assert run.data.metrics["threshold"] == pytest.approx(json.loads((out / "audit.json").read_text())
                                                          ["spaces"]["pixel"]["threshold"])
    assert {"audit.json", "nearest.csv", "closest_pairs.png", "histogram.png"} <= \
        {a.path for a in client.list_artifacts(run.info.run_id)}


# ----------------------------------------------------------------------------- bad inputs
def _edited(src: Path, out: Path, *, info=None, rows=None) -> Path:
    shutil.copytree(src, out)
    if info:
        doc = json.loads((out / "dataset.json").read_text())
        doc.update(info)
        (out / "dataset.json").write_text(json.dumps(doc))
    if rows is not None:
        write_manifest(out / "manifest.csv", rows(read_manifest(out)), ["csPCa"])
    return out


def _bad(sets, tmp: Path, case: str) -> tuple[dict, str]:
    real, clean = sets["real"], sets["clean"]
    if case == "size":
        small = {"syn-0": np.zeros((24, 24, 3), np.uint8) + 9}
        return dict(synthetic=_synthetic(tmp / "s24", small, "x", size=24)), "image_size is [24, 24]"
    if case == "channels":
        syn = _edited(clean, tmp / "chan", info={"channels": ["T1", "T2", "FLAIR"]})
        return dict(synthetic=syn), "channels is ['T1', 'T2', 'FLAIR']"
    if case == "empty":
        return dict(synthetic=_edited(clean, tmp / "empty", rows=lambda r: [])), "no cases at all"
    if case == "overlap":
        return dict(heldout=real, heldout_split="train"), "are training cases too"
    if case == "same-patient":
        def share(rows):
            first = next(r for r in rows if r["split"] == "train")
            next(r for r in rows if r["split"] == "val")["patient_id"] = first["patient_id"]
            return rows

        held = _edited(real, tmp / "held", rows=share)
        return dict(heldout=held, heldout_split="val"), "patients in the training set"
    if case == "duplicate":
        img = load_image(Dataset(real).cases("train")[0].path)
        return dict(heldout=_synthetic(tmp / "dup", {"real-x": img}, "x")), "identical to training images"
    if case == "features":
        (tmp / "notes.txt").write_text("not a network")
        return dict(features=tmp / "notes.txt"), "not a network medti can read"
    if case == "no-heldout":
        only = _edited(real, tmp / "only-train", rows=lambda rows: [r for r in rows if r["split"] == "train"])
        return dict(train=only), "no val or test split"
    if case == "inside":
        return dict(out=clean / "audit"), "inside the dataset dir"
    if case == "margin":
        return dict(margin=1.5), "margin = 1.5 must be in (0, 1]"
    if case == "shift":
        return dict(shift=8), "leaves too little of a 32x32 image"
    if case == "embedding-version":
        other = save_embedding(Embedding("<cspca>", torch.ones(2, 32), {"concept": "csPCa", "where": "csPCa=1",
                                                                       "n_images": "2", "dataset_version": "v0"}),
                               tmp / "other.safetensors")
        return dict(embeddings=(other,)), "dataset_version is v0"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["size", "channels", "empty", "overlap", "same-patient", "duplicate", "features",
                                  "no-heldout", "inside", "margin", "shift", "embedding-version"])
def test_bad_inputs_fail_naming_the_file_and_field(sets, tmp_path, case):
    kw, message = _bad(sets, tmp_path, case)
    cfg = dict(train=sets["real"], synthetic=sets["clean"], out=tmp_path / "audit") | kw
    with pytest.raises(QualityError) as e:
        audit_memorization(MemorizationConfig(**cfg))
    assert message in str(e.value)
    named = {"size": "s24", "channels": "chan", "empty": "empty", "overlap": "real", "same-patient": "held",
             "duplicate": "dup", "features": "notes.txt", "no-heldout": "only-train", "inside": "audit",
             "margin": "margin", "shift": "shift = 8", "embedding-version": "other.safetensors"}[case]
    assert named in str(e.value)
    assert not (tmp_path / "audit").exists()  # nothing written


# ----------------------------------------------------------------------------- the registry gate
def _register(uri: str, emb: Path, data: Path, audit: Path, code: int) -> str:
    res = CliRunner().invoke(app, ["--tracking-uri", uri, "--experiment-name", "memorization", "registry",
                                   "register-embedding", str(emb), "--data", str(data), "--name", "medti-mem-csPCa",
                                   "--base", "tiny", "--no-promote", "--audit", str(audit)])
    assert res.exit_code == code, (res.output, res.exception)
    return res.output


def test_the_registry_refuses_an_embedding_whose_synthetic_set_failed_and_accepts_a_passing_one(
        sets, audits, mlflow_server, tmp_path):
    import mlflow

    clean, planted = audits
    client = mlflow.MlflowClient(mlflow_server)
    out = _register(mlflow_server, sets["emb"], sets["real"], planted.out, code=1)
    assert "failed the memorisation audit" in out and f"{len(sets['plants'])} of {planted.n_synthetic}" in out
    assert "syn-plant-" in out and "and 3 more" in out  # the first few flagged images by case id, and the count
    assert not client.search_registered_models("name = 'medti-mem-csPCa'")  # nothing registered
    # an audit of a set made with another embedding does not vouch for this one
    other = audit_memorization(MemorizationConfig(
        train=sets["real"], synthetic=_synthetic(tmp_path / "syn-other", {"syn-0": load_image(
            Dataset(sets["other"]).cases()[0].path)}, "another"), out=tmp_path / "other-audit"))
    assert other.passed
    assert "not with this embedding" in _register(mlflow_server, sets["emb"], sets["real"], other.out, code=1)
    assert not client.search_registered_models("name = 'medti-mem-csPCa'")
    out = _register(mlflow_server, sets["emb"], sets["real"], clean.out / "audit.json", code=0)
    assert "registered medti-mem-csPCa version 1" in out
    tags = client.get_model_version("medti-mem-csPCa", "1").tags
    assert tags["medti.memorization"] == "pass" and float(tags["medti.memorization.copy_rate"]) == 0.0


def test_an_audit_that_is_missing_or_tampered_with_is_refused_naming_the_file(audits, tmp_path):
    from medti.quality.memorization import read_audit

    _, planted = audits
    with pytest.raises(QualityError, match=r"nope/audit.json: no such file"):
        read_audit(tmp_path / "nope" / "audit.json")
    doc = json.loads(planted.report.read_text())
    doc["passed"] = True  # the verdict says fail: a hand-edited pass is not believed
    (tmp_path / "audit.json").write_text(json.dumps(doc))
    with pytest.raises(QualityError, match=r"audit.json: not a medti memorisation audit .*disagree"):
        read_audit(tmp_path)
    assert not read_audit(planted.out).passed and read_audit(planted.out).flagged_summary().count("syn-plant-") == 5
