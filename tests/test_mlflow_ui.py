"""The MLflow UI screenshots (experiments/mlflow_ui_screenshots.py) over a small store made here with MlflowClient:
a parent run with a nested child run, a metric history, a PNG and a table.md artifact, a registered model whose
version is ``champion``. Needs a Chromium binary (``apt-get install chromium``; .ci/run installs one for the reader-study
test); marked slow, so the default suite leaves it out."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("mlflow_ui_screenshots",
                                                  ROOT / "experiments" / "mlflow_ui_screenshots.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def make_store(root: Path) -> dict[str, str]:
    """A small store under ``root`` as medti lays one out: ``mlflow.db`` and ``mlartifacts/`` beside it."""
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("ui-test", artifact_location=(root / "mlartifacts").as_uri())
    parent = client.create_run(exp, run_name="pipeline", tags={"medti.step": "pipeline"}).info.run_id
    child = client.create_run(exp, run_name="train_embedding",
                              tags={"mlflow.parentRunId": parent, "medti.step": "train_embedding"}).info.run_id
    ts = 1_700_000_000_000
    client.log_batch(child, metrics=[Metric("loss", float(1.0 / (1 + s) + 0.05 * np.sin(s)), ts + s, s)
                                     for s in range(30)])
    client.log_param(child, "steps", "30")
    client.log_metric(parent, "test_auc", 0.81)
    client.log_metric(parent, "val_auc", 0.77)

    files = root / "files"
    files.mkdir()
    yy, xx = np.mgrid[0:128, 0:128]
    img = np.stack([xx * 2, yy * 2, (xx + yy) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(img).save(files / "roc.png")
    client.log_artifact(child, str(files / "roc.png"), artifact_path="eval")
    (files / "table.md").write_text("| condition | AUC |\n|---|---|\n| real | 0.81 |\n| mixed | 0.84 |\n")
    client.log_artifact(parent, str(files / "table.md"))
    client.set_terminated(child)
    client.set_terminated(parent)

    client.create_registered_model("medti-classifier")
    mv = client.create_model_version("medti-classifier", f"runs:/{child}/model", run_id=child)
    client.set_model_version_tag("medti-classifier", mv.version, "medti.decision", "champion: first version")
    client.set_registered_model_alias("medti-classifier", "champion", mv.version)
    return {"parent": parent, "child": child}


@pytest.mark.slow  # ~45 s: an mlflow server, Chromium, nine pages of a single-page app
def test_screenshots_of_the_mlflow_ui(tmp_path):
    mod = _script()
    if mod.find_chromium() is None:
        pytest.skip("no Chromium binary (apt-get install chromium)")
    make_store(tmp_path / "store")
    shots = mod.main(["--store", str(tmp_path / "store"), "--out", str(tmp_path / "shots")])
    names = {p.name for p in shots}
    expected = {"runs.png", "run.png", "run_table.png", "metric.png", "artifact_image.png", "models.png",
                "model.png", "model_version.png"}
    assert expected <= names, f"missing: {expected - names}"
    for p in shots:
        assert p.is_file() and p.stat().st_size > 0, p
        assert mod.is_blank(p) is None, f"{p.name}: {mod.is_blank(p)}"
