"""The classifier layer: training (reproducible, resumable, best validation AUC), evaluation (bootstrap
interval, validation threshold), ONNX export and prediction, and the bad inputs refused before training."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medti.classify import ClassifierError
from medti.data.dataset import DatasetWriter, read_info, read_manifest
from medti.data.phantoms import PhantomConfig, generate_phantoms

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(steps=6, batch=8, eval_every=3, checkpoint_every=2, progress=False)


@pytest.fixture(scope="module")
def prostate(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "prostate"
    generate_phantoms(PhantomConfig(kind="prostate", out=out, n=48, size=32, seed=3))
    return out


@pytest.fixture(scope="module")
def trained(prostate, tmp_path_factory):
    from medti.classify.train import ClassifierConfig, train_classifier

    out = tmp_path_factory.mktemp("cls") / "model"
    res = train_classifier(ClassifierConfig(train=[prostate], val=prostate, targets=["csPCa"], out=out, seed=1, **FAST))
    return out, res


def _train(prostate, out, **kw):
    from medti.classify.train import ClassifierConfig, train_classifier

    args = dict(train=[prostate], val=prostate, targets=["csPCa"], out=out, seed=1, **FAST)
    args.update(kw)
    return train_classifier(ClassifierConfig(**args))


# ----------------------------------------------------------------------------- training
def test_training_keeps_the_best_validation_auc_and_writes_a_classifier_dir(trained):
    out, res = trained
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["kind"] == "medti-classifier" and meta["targets"] == ["csPCa"]
    assert meta["image_size"] == [32, 32] and meta["channels"] == ["T2W", "ADC", "DWI"]
    curves = list(csv.DictReader(open(out / "curves.csv")))
    assert [int(c["step"]) for c in curves] == [3, 6]
    best = max(float(c["val_auc"]) for c in curves)
    assert res.val_auc == pytest.approx(best, abs=1e-6) and meta["val_auc"] == pytest.approx(best, abs=1e-6)
    assert res.best_step == int(curves[[float(c["val_auc"]) for c in curves].index(best)]["step"])
    assert 0.0 <= meta["threshold"]["csPCa"] <= 1.0
    assert (out / "model.safetensors").is_file() and not (out.parent / f".{out.name}.checkpoints").exists()


def test_the_same_seed_gives_the_same_model_bytes_and_predictions(prostate, trained, tmp_path):
    from medti.classify.onnx import open_predictor

    out, _ = trained
    again = tmp_path / "again"
    _train(prostate, again)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    other = tmp_path / "other"
    _train(prostate, other, seed=2)
    assert (other / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    assert np.array_equal(open_predictor(out)(x), open_predictor(again)(x))


def test_a_killed_run_continues_from_its_checkpoint_and_ends_with_the_same_bytes(prostate, tmp_path):
    out = tmp_path / "killed"
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from pathlib import Path\n"
        "from medti.classify.train import ClassifierConfig, train_classifier\n"
        f"train_classifier(ClassifierConfig(train=[Path({str(prostate)!r})], val=Path({str(prostate)!r}), "
        f"targets=['csPCa'], out=Path({str(out)!r}), seed=1, steps=30, batch=8, eval_every=10, checkpoint_every=5, "
        "progress=False))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = tmp_path / ".killed.checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not list(ckpts.glob("step-*.safetensors")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # at its first checkpoint (step 5 of 30)
    proc.wait()
    left = sorted(ckpts.glob("step-*.safetensors"))
    assert left, proc.stderr.read().decode()[-2000:]
    assert not out.exists()  # nothing half-written
    killed_at = int(left[-1].stem.split("-")[1])
    assert killed_at < 30

    # continuing needs the same settings; a run with fewer steps is told so and nothing is lost
    with pytest.raises(ClassifierError, match="other settings"):
        _train(prostate, out, steps=40, eval_every=10, checkpoint_every=5)
    assert sorted(ckpts.glob("step-*.safetensors")) == left
    # the same settings continue from the last checkpoint
    res = _train(prostate, out, steps=30, eval_every=10, checkpoint_every=5)
    assert res.resumed_from == killed_at
    whole = tmp_path / "whole"
    _train(prostate, whole, steps=30, eval_every=10, checkpoint_every=5)
    for name in ("model.safetensors", "curves.csv", "classifier.json"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name


# ----------------------------------------------------------------------------- evaluation, metrics
@pytest.mark.parametrize("p, whole", [
    ([0.1, 0.4, 0.35, 0.8, 0.3, 0.9, 0.5, 0.6], 0.8125),
    ([0.1, 0.5, 0.35, 0.8, 0.35, 0.9, 0.5, 0.5], 0.78125),  # ties across the classes count half
])
def test_bootstrap_interval_matches_a_hand_computation(p, whole):
    from medti.classify.metrics import bootstrap_auc

    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p = np.array(p)

    def hand_auc(yy, pp):  # the Mann-Whitney definition: P(score of a positive > a negative), ties count half
        pos, neg = pp[yy == 1], pp[yy == 0]
        return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))

    rng = np.random.default_rng(7)
    pos_idx, neg_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    stats = []
    for _ in range(300):
        idx = np.r_[rng.choice(pos_idx, 4), rng.choice(neg_idx, 4)]
        stats.append(hand_auc(np.r_[np.ones(4), np.zeros(4)], p[idx]))
    expect = tuple(np.quantile(stats, [0.025, 0.975]))
    assert bootstrap_auc(y, p, n_boot=300, seed=7) == pytest.approx(expect, abs=1e-12)
    assert hand_auc(y, p) == pytest.approx(whole)


def test_evaluate_reports_auc_interval_and_the_validation_threshold(trained, prostate, tmp_path):
    from medti.classify.evaluate import EvaluateConfig, evaluate_classifier

    model, _ = trained
    res = evaluate_classifier(EvaluateConfig(model=model, test=prostate, out=tmp_path / "eval", n_boot=200))
    m = res.metrics["csPCa"]
    lo, hi = m["auc_ci"]
    assert lo <= m["auc"] <= hi
    meta = json.loads((model / "classifier.json").read_text())
    assert m["threshold"] == meta["threshold"]["csPCa"]  # chosen on validation, not on the test split
    rows = list(csv.DictReader(open(tmp_path / "eval" / "predictions.csv")))
    test_ids = {r["case_id"] for r in read_manifest(prostate) if r["split"] == "test"}
    assert {r["case_id"] for r in rows} == test_ids and m["n_pos"] + m["n_neg"] == len(test_ids)
    y = np.array([int(r["csPCa"]) for r in rows])
    p = np.array([float(r["csPCa_probability"]) for r in rows])
    called = p >= m["threshold"]
    assert m["sensitivity"] == pytest.approx(called[y == 1].mean(), abs=1e-6)
    assert m["specificity"] == pytest.approx((~called[y == 0]).mean(), abs=1e-6)
    # patient ids never reach the outputs
    pids = {r["patient_id"] for r in read_manifest(prostate)}
    text = (tmp_path / "eval" / "predictions.csv").read_text() + (tmp_path / "eval" / "metrics.json").read_text()
    assert not any(pid in text for pid in pids)
    from PIL import Image

    assert Image.open(tmp_path / "eval" / "roc.png").size[0] > 100


def test_onnx_and_torch_probabilities_agree_on_the_test_split(trained, prostate, tmp_path):
    from medti.classify.onnx import ExportConfig, PredictConfig, export_onnx, predict

    model, _ = trained
    onnx_file = tmp_path / "model.onnx"
    export_onnx(ExportConfig(model=model, out=onnx_file))
    predict(PredictConfig(model=onnx_file, data=prostate, out=tmp_path / "onnx.csv", split="test"))
    predict(PredictConfig(model=model, data=prostate, out=tmp_path / "torch.csv", split="test"))
    a = {r["case_id"]: float(r["csPCa_probability"]) for r in csv.DictReader(open(tmp_path / "onnx.csv"))}
    b = {r["case_id"]: float(r["csPCa_probability"]) for r in csv.DictReader(open(tmp_path / "torch.csv"))}
    assert a.keys() == b.keys() and len(a) > 5
    assert max(abs(a[k] - b[k]) for k in a) < 1e-4
    with pytest.raises(ClassifierError, match="already exists"):
        export_onnx(ExportConfig(model=model, out=onnx_file))


def test_multi_label_classifier_on_the_chest_x_ray_findings(tmp_path):
    from medti.classify.evaluate import EvaluateConfig, evaluate_classifier

    cxr = tmp_path / "cxr"
    generate_phantoms(PhantomConfig(kind="cxr", out=cxr, n=48, size=32, seed=1))
    targets = ["pleural_effusion", "pneumonia", "cardiomegaly"]
    _train(cxr, tmp_path / "m", targets=targets, train=[cxr], val=cxr)
    res = evaluate_classifier(EvaluateConfig(model=tmp_path / "m", test=cxr, out=tmp_path / "e", n_boot=50))
    assert list(res.metrics) == targets


# ----------------------------------------------------------------------------- bad input
def _copy_dataset(src: Path, out: Path, *, size: int | None = None, modality: str | None = None,
                  only_val_class: int | None = None) -> Path:
    """A copy of a dataset dir with its image size, modality or validation labels changed."""
    from PIL import Image

    from medti.data.dataset import Dataset, load_image

    ds = Dataset(src)
    info = read_info(src)
    if size:
        info.image_size = [size, size]
    if modality:
        info.modality = modality
    with DatasetWriter(out, info) as w:
        for c in ds.cases():
            img = load_image(c.path)
            if size:
                img = np.asarray(Image.fromarray(img).resize((size, size)))
            labels = dict(c.labels)
            if only_val_class is not None and c.split == "val":
                labels = {k: only_val_class for k in labels}
            w.add(case_id=c.case_id, patient_id=c.patient_id, split=c.split, image=img, labels=labels)
    return out


def test_bad_inputs_fail_before_training_naming_the_file_and_value(prostate, tmp_path):
    from medti.classify.train import ClassifierConfig, train_classifier

    def attempt(**kw):
        args = dict(train=[prostate], val=prostate, targets=["csPCa"], out=tmp_path / "out", **FAST)
        args.update(kw)
        with pytest.raises(ClassifierError) as e:
            train_classifier(ClassifierConfig(**args))
        assert not (tmp_path / "out").exists() and not (tmp_path / ".out.checkpoints").exists()
        return str(e.value)

    msg = attempt(targets=["pneumonia"])
    assert str(prostate) in msg and "'pneumonia'" in msg and "csPCa" in msg

    one_class = _copy_dataset(prostate, tmp_path / "one-class", only_val_class=0)
    msg = attempt(val=one_class)
    assert str(one_class) in msg and "only negatives" in msg and "undefined" in msg

    bigger = _copy_dataset(prostate, tmp_path / "bigger", size=48)
    msg = attempt(train=[prostate, bigger])
    assert str(bigger) in msg and "48x48" in msg and "32x32" in msg

    other = _copy_dataset(prostate, tmp_path / "other-modality", modality="cxr")
    msg = attempt(train=[prostate, other])
    assert str(other) in msg and "cxr" in msg and "prostate_mri" in msg


def test_a_synthetic_dir_that_fails_validation_is_refused(prostate, tmp_path):
    import shutil

    from medti.classify.train import ClassifierConfig, train_classifier
    from medti.data.dataset import DatasetError

    broken = tmp_path / "synthetic"
    shutil.copytree(prostate, broken)
    victim = sorted((broken / "images").iterdir())[0]
    victim.write_bytes(b"not a png")
    with pytest.raises(DatasetError) as e:
        train_classifier(ClassifierConfig(train=[prostate, broken], val=prostate, targets=["csPCa"],
                                          out=tmp_path / "out", **FAST))
    assert str(broken) in str(e.value) and victim.name in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_medti_classifier_is_refused(prostate, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from medti.classify.onnx import PredictConfig, predict

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(ClassifierError, match="garbage.onnx: not an ONNX model"):
        predict(PredictConfig(model=garbage, data=prostate, out=tmp_path / "p.csv"))
    # a valid ONNX model, but someone else's
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])),
              str(foreign))
    with pytest.raises(ClassifierError, match="foreign.onnx: an ONNX model, but not a medti classifier"):
        predict(PredictConfig(model=foreign, data=prostate, out=tmp_path / "p.csv"))
    assert not (tmp_path / "p.csv").exists()


# ----------------------------------------------------------------------------- command line
def test_the_classify_commands_train_evaluate_export_and_predict(prostate, trained, tmp_path):
    from typer.testing import CliRunner

    from medti.cli import app

    cli = CliRunner()
    model, _ = trained
    r = cli.invoke(app, ["classify", "train", "--train", str(prostate), "--val", str(prostate), "--target", "nope",
                         "--out", str(tmp_path / "m")])
    assert r.exit_code == 1 and "error:" in r.output and "'nope'" in r.output and not (tmp_path / "m").exists()
    r = cli.invoke(app, ["classify", "evaluate", "--model", str(model), "--test", str(prostate), "--out",
                         str(tmp_path / "e"), "--bootstrap", "100"])
    assert r.exit_code == 0, r.output
    assert "csPCa: AUC" in r.output and "95 % CI" in r.output and (tmp_path / "e" / "roc.png").is_file()
    r = cli.invoke(app, ["classify", "export", "--model", str(model), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["classify", "predict", "--model", str(tmp_path / "m.onnx"), "--data", str(prostate),
                         "--out", str(tmp_path / "p.csv"), "--split", "test"])
    assert r.exit_code == 0 and "onnxruntime" in r.output, r.output
    n_test = sum(1 for row in read_manifest(prostate) if row["split"] == "test")
    assert len((tmp_path / "p.csv").read_text().splitlines()) == n_test + 1
