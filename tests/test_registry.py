"""The model registry against a real ``mlflow server``: versions with lineage and figures, the champion /
challenger gate, aliases that never point at an incomplete version, the terminal tables, and a registered
champion served by ``mlflow models serve -m models:/NAME@champion``."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medti.cli import app
from medti.data.phantoms import PhantomConfig, generate_phantoms
from medti.data.versions import dataset_version
from medti.diffusion.base import build_micro, load_base
from medti.diffusion.embeddings import Embedding, load_embedding, save_embedding

mlflow = pytest.importorskip("mlflow")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

NAME = "medti-phantom-prostate-csPCa"


def _cli(uri, *args, code=0):
    res = CliRunner().invoke(app, ["--tracking-uri", uri, "--experiment-name", "registry", *map(str, args)])
    assert res.exit_code == code, (res.output, res.exception)
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res.output


def _evaluation(root: Path, auc: float) -> Path:
    """An evaluation dir as ``medti classify evaluate`` writes it (the figure the gate compares)."""
    d = root / f"eval-{auc}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"metrics": {"csPCa": {"auc": auc, "sensitivity": 0.7,
                                                                      "specificity": 0.6, "n": 40}}}))
    return d


@pytest.fixture(scope="module")
def reg(mlflow_store, tmp_path_factory):
    uri, artifacts = mlflow_store
    root = tmp_path_factory.mktemp("registry")
    base = build_micro(root / "micro")
    base_hash = load_base(str(base), progress=False).model_hash
    data = generate_phantoms(PhantomConfig(kind="prostate", out=root / "data", n=24, size=32, seed=1)).out
    embs = {}
    for i, concept in enumerate(("csPCa", "healthy")):
        vec = torch.randn(3, 32, generator=torch.Generator().manual_seed(i)) * 0.5
        meta = {"concept": concept, "modality": "prostate_mri", "base_model_hash": base_hash, "base_model": "micro",
                "dataset_version": dataset_version(data)}
        embs[concept] = save_embedding(Embedding(f"<{concept.lower()}>", vec, meta), root / f"{concept}.safetensors")
    outputs = []
    for auc in (0.70, 0.65, 0.72):  # v1 first, v2 worse, v3 better
        outputs.append(_cli(uri, "registry", "register-embedding", embs["csPCa"], "--data", data, "--with",
                            embs["healthy"], "--base", base, "--evaluation", _evaluation(root, auc)))
    return {"uri": uri, "artifacts": artifacts, "root": root, "base": base, "base_hash": base_hash, "data": data,
            "embs": embs, "outputs": outputs, "client": mlflow.MlflowClient(uri)}


def test_the_gate_makes_the_first_and_every_at_least_as_good_version_champion(reg):
    client = reg["client"]
    assert "champion: the first version" in reg["outputs"][0]
    assert "challenger: test AUC 0.6500 < champion v1's 0.7000" in reg["outputs"][1]
    assert "champion: test AUC 0.7200 >= champion v1's 0.7000" in reg["outputs"][2]
    assert client.get_model_version_by_alias(NAME, "champion").version == "3"
    assert client.get_model_version_by_alias(NAME, "challenger").version == "2"
    # the losing version says why, with both figures
    assert client.get_model_version(NAME, "2").tags["medti.promotion"] == "challenger: test AUC 0.6500 < champion v1's 0.7000"


def test_a_version_carries_lineage_figures_and_the_hashes_of_its_files(reg):
    v = reg["client"].get_model_version(NAME, "3")
    t = v.tags
    assert t["medti.base_hash"] == reg["base_hash"] and t["medti.base"] == str(reg["base"])
    assert t["medti.dataset_version"] == dataset_version(reg["data"])
    assert t["medti.embedding_version"] == load_embedding(reg["embs"]["csPCa"]).version
    assert t["medti.embeddings"].startswith("csPCa:") and ";healthy:" in t["medti.embeddings"]
    assert t["medti.vectors"] == "3" and t["medti.prompt_template"] == "axial prostate mri, csPCa"
    assert float(t["medti.eval.auc"]) == 0.72 and float(t["medti.eval.csPCa.sensitivity"]) == 0.7
    files = json.loads(t["medti.files"])
    assert "MLmodel" in files and any(f.endswith("csPCa.safetensors") for f in files)
    run = reg["client"].get_run(v.run_id)  # the version links to the run that registered it
    assert run.data.tags["medti.registered_model"] == NAME and run.info.status == "FINISHED"


def test_a_version_with_incomplete_artifacts_never_gets_an_alias(reg):
    client = reg["client"]
    _cli(reg["uri"], "registry", "register-embedding", reg["embs"]["csPCa"], "--data", reg["data"], "--base",
         reg["base"], "--evaluation", _evaluation(reg["root"] / "v4", 0.99), "--no-promote")
    v4 = client.get_model_version(NAME, "4")
    assert not v4.aliases
    # the artifact store loses a file of version 4, as when a registration is killed while uploading
    (lost,) = [p for p in reg["artifacts"].rglob("csPCa.safetensors") if v4.run_id in p.as_posix()]
    lost.unlink()
    out = _cli(reg["uri"], "registry", "promote", NAME, "4", code=1)
    assert "artifacts incomplete" in out and "csPCa.safetensors" in out and "no alias was moved" in out
    assert client.get_model_version_by_alias(NAME, "champion").version == "3"  # untouched, despite AUC 0.99


def test_list_and_show_print_the_registry_for_people_in_a_shell(reg):
    listed = _cli(reg["uri"], "registry", "list")
    assert NAME in listed and "champion=v3" in listed and "challenger=v2" in listed and "embedding" in listed
    shown = _cli(reg["uri"], "registry", "show", f"{NAME}@champion")
    assert "0.72" in shown and reg["base_hash"] in shown and "champion" in shown
    assert "no such registered model" in _cli(reg["uri"], "registry", "show", "medti-nothing", code=1)


def test_the_champion_is_served_from_the_registry_with_composed_prompts(reg):
    from PIL import Image

    from servers import model_server

    env = {**os.environ, "MLFLOW_TRACKING_URI": reg["uri"]}
    request = {"inputs": {"prompt": ["healthy:30% AND csPCa:70%"]},
               "params": {"n": 2, "seed": 0, "steps": 2, "guidance": 3.0}}
    with model_server(f"models:/{NAME}@champion", reg["root"] / "serve.log", env) as url:
        req = urllib.request.Request(f"{url}/invocations", data=json.dumps(request).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            rows = json.loads(r.read())["predictions"]
        bad = urllib.request.Request(f"{url}/invocations", data=json.dumps({**request, "params": {"n": 0}}).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=60)
        assert e.value.code == 400
    assert [(r["index"], r["seed"], r["guidance"]) for r in rows] == [(0, 0, 3.0), (1, 1, 3.0)]
    for r in rows:
        with Image.open(io.BytesIO(base64.b64decode(r["image"]))) as im:
            assert im.format == "PNG" and im.size == (32, 32)


def test_a_classifier_is_registered_in_onnx_form_and_gated_alike(reg, tmp_path, monkeypatch):
    from medti.classify.train import ClassifierConfig, train_classifier

    data = reg["data"]
    train_classifier(ClassifierConfig(train=[data], val=data, targets=["csPCa"], out=tmp_path / "cls", seed=0,
                                      steps=2, batch=8, eval_every=2, checkpoint_every=2, validate=False,
                                      progress=False))
    out = _cli(reg["uri"], "registry", "register-classifier", tmp_path / "cls", "--data", data, "--evaluation",
               _evaluation(tmp_path, 0.61))
    name = "medti-phantom-prostate-csPCa-classifier"
    assert f"registered {name} version 1" in out and "champion" in out
    v = reg["client"].get_model_version(name, "1")
    assert v.tags["medti.kind"] == "classifier" and v.tags["medti.targets"] == "csPCa"
    assert any(f.endswith(".onnx") for f in json.loads(v.tags["medti.files"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert [c.name for c in model.metadata.signature.inputs] == ["image"]
    assert _cli(reg["uri"], "registry", "register-classifier", tmp_path / "nothing.onnx", "--name", "x",
                code=1).startswith("error:")
