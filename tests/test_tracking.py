"""MLflow tracking against a real ``mlflow server`` on 127.0.0.1: what a person browsing the runs sees afterwards
(runs, nesting, params, metric histories, artifacts, lineage tags, inputs), and what must never be there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medti.cli import app
from medti.data.versions import dataset_version
from medti.diffusion.base import build_micro, weights_hash

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

mlflow = pytest.importorskip("mlflow")


def _invoke(args, uri, experiment, **env):
    res = CliRunner().invoke(app, ["--tracking-uri", uri, "--experiment-name", experiment, *map(str, args)],
                             env=env or None)
    assert res.exit_code == 0, res.output
    return res


def _runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id], max_results=500)}


def _artifacts(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return out


@pytest.fixture(scope="module")
def steps(mlflow_server, tmp_path_factory):
    """Phantoms -> validate -> embed train -> synth generate on the micro base, each a tracked CLI command."""
    root = tmp_path_factory.mktemp("tracked")
    base = build_micro(root / "micro")
    data, emb, gen = root / "ph", root / "csPCa.safetensors", root / "gen"
    exp = "steps"
    _invoke(["data", "phantom", "prostate", "--n", "24", "--size", "32", "--out", data], mlflow_server, exp)
    _invoke(["data", "validate", data], mlflow_server, exp)
    _invoke(["embed", "train", "--data", data, "--concept", "csPCa", "--where", "csPCa=1", "--base", base,
             "--vectors", "2", "--steps", "60", "--batch", "2", "--out", emb, "--checkpoint-every", "0"],
            mlflow_server, exp)
    _invoke(["synth", "generate", "--base", base, "--embeddings", emb, "--prompt", "axial prostate mri, csPCa",
             "--n", "2", "--steps", "2", "--out", gen], mlflow_server, exp)
    client = mlflow.MlflowClient(mlflow_server)
    return {"client": client, "runs": _runs(client, exp), "data": data, "base": base, "emb": emb}


def test_every_command_leaves_a_finished_run_with_its_whole_config_as_params(steps):
    runs = steps["runs"]
    assert set(runs) == {"generate_phantoms", "validate_dataset", "train_embedding", "generate_images"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    p = runs["train_embedding"].data.params
    assert p["steps"] == "60" and p["vectors"] == "2" and p["concept"] == "csPCa" and p["where"] == "csPCa=1"
    assert p["data"] == str(steps["data"]) and p["max_norm"] == "None"
    g = runs["generate_images"].data.params
    assert g["sampler.steps"] == "2" and g["n"] == "2"  # nested configs flattened with dots


def test_lineage_tags_name_the_data_version_base_hash_embeddings_and_code(steps):
    runs = steps["runs"]
    version = dataset_version(steps["data"])
    t = runs["train_embedding"].data.tags
    assert t["medti.dataset_version"] == version and t["medti.dataset"]
    assert t["medti.base"] == str(steps["base"]) and t["medti.base_hash"] == weights_hash(steps["base"])
    assert t["medti.version"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    if commit:
        assert t["medti.git_commit"] == commit == t["mlflow.source.git.commit"]
    gen = runs["generate_images"].data.tags
    from medti.diffusion.embeddings import load_embedding

    assert gen["medti.embeddings"] == f"csPCa:{load_embedding(steps['emb']).version}"
    assert runs["validate_dataset"].data.tags["medti.dataset_version"] == version
    # the dataset is a logged input whose digest is its DVC version
    inputs = steps["client"].get_run(runs["train_embedding"].info.run_id).inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [version[:36]]


def test_training_curves_and_result_figures_are_metrics(steps):
    client, runs = steps["client"], steps["runs"]
    hist = client.get_metric_history(runs["train_embedding"].info.run_id, "loss")
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == [25, 50, 60]  # every read-back of the losses
    assert runs["train_embedding"].data.metrics["final_loss"] > 0
    assert runs["generate_phantoms"].data.metrics["counts.csPCa"] > 0
    assert runs["validate_dataset"].data.metrics["ok"] == 1.0


def test_artifacts_are_what_a_person_opens(steps):
    client, runs = steps["client"], steps["runs"]
    emb = _artifacts(client, runs["train_embedding"].info.run_id)
    assert "csPCa.safetensors" in emb and "csPCa.samples.png" in emb
    val = _artifacts(client, runs["validate_dataset"].info.run_id)
    assert "validation/validation.json" in val and "validation/data_docs/index.html" in val
    gen = _artifacts(client, runs["generate_images"].info.run_id)
    assert "grid.png" in gen and "manifest.csv" in gen
    assert not any(a.startswith("images/") for a in gen + val)  # the image files themselves stay out


def test_a_step_in_another_process_nests_under_the_parent_run_it_is_given(steps, mlflow_server):
    client = steps["client"]
    exp = client.get_experiment_by_name("steps").experiment_id
    parent = client.create_run(exp, run_name="pipeline-run").info.run_id
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "steps",
           "MLFLOW_PARENT_RUN_ID": parent, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "medti.cli", "data", "validate", str(steps["data"])],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert [c.info.run_name for c in children] == ["validate_dataset"]


def test_curves_reach_the_server_while_the_step_is_still_running(mlflow_server):
    from medti.tracking.context import RunContext
    from medti.tracking.run import MetricStream

    ctx = RunContext(mlflow_server, experiment="stream")
    run_id = ctx.client.create_run(ctx.experiment_id).info.run_id
    stream = MetricStream(ctx.client, run_id, interval=0.2)
    t0 = time.time()
    stream(1, {"loss": 0.5})
    stream(2, {"loss": 0.4})
    assert time.time() - t0 < 0.05  # report() only queues: the loop never waits for the server
    try:
        deadline = time.time() + 20
        while len(ctx.client.get_metric_history(run_id, "loss")) < 2:
            assert time.time() < deadline, "the curve never reached the server while the run was open"
            time.sleep(0.2)
    finally:
        stream.close()
    assert stream.error is None


def test_a_failed_step_ends_its_run_failed_naming_only_the_error_type(mlflow_server, tmp_path):
    res = CliRunner().invoke(app, ["--tracking-uri", mlflow_server, "--experiment-name", "failing",
                                   "data", "validate", str(tmp_path / "no-such-dataset")])
    assert res.exit_code == 1
    client = mlflow.MlflowClient(mlflow_server)
    (run,) = _runs(client, "failing").values()
    assert run.info.status == "FAILED" and run.data.tags["medti.error"] in ("DatasetError", "FileNotFoundError")


def test_an_unreachable_tracking_server_fails_before_the_step_naming_the_uri(tmp_path):
    uri = "http://127.0.0.1:9"  # the discard port: nothing answers
    res = CliRunner().invoke(app, ["--tracking-uri", uri, "data", "phantom", "prostate", "--n", "12",
                                   "--out", str(tmp_path / "ph")], env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                                                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"})
    assert res.exit_code == 1 and uri in res.output
    assert not (tmp_path / "ph").exists()


def test_without_a_tracking_uri_a_step_runs_as_before_and_never_imports_mlflow(tmp_path):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from medti.cli import app\n"
        f"r = CliRunner().invoke(app, ['data', 'phantom', 'prostate', '--n', '12', '--out', {str(tmp_path / 'ph')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "ph" / "manifest.csv").is_file()


# ----------------------------------------------------------------------------- patient identifiers
def test_no_patient_identifier_reaches_mlflow(mlflow_server, tmp_path):
    from test_importers import ORIGINAL_IDS, build_picai

    images, labels = build_picai(tmp_path / "picai")
    out = tmp_path / "imported"
    _invoke(["data", "import", "picai", "--images", images, "--labels", labels, "--out", out, "--size", "64"],
            mlflow_server, "pii", MEDTI_SALT="tracking-test-salt")
    _invoke(["data", "validate", out, "--min-per-class", "0"], mlflow_server, "pii")
    client = mlflow.MlflowClient(mlflow_server)
    runs = _runs(client, "pii")
    assert set(runs) == {"import_picai", "validate_dataset"}
    seen = []
    for run in runs.values():
        run = client.get_run(run.info.run_id)
        seen += list(run.data.params) + list(run.data.params.values())
        seen += list(run.data.tags) + list(run.data.tags.values()) + list(run.data.metrics)
        for path in _artifacts(client, run.info.run_id):
            seen.append(path)
            local = Path(client.download_artifacts(run.info.run_id, path, str(tmp_path / "dl" / run.info.run_id)))
            if local.suffix in (".csv", ".json", ".html", ".txt", ".md", ".yaml"):
                text = local.read_text(encoding="utf-8", errors="replace")
                if local.name == "manifest.csv":  # sha256 is a hash of pixels, not of any id
                    import csv
                    import io

                    text = "\n".join(",".join(v for k, v in r.items() if k != "sha256")
                                     for r in csv.DictReader(io.StringIO(text)))
                seen.append(text)
    assert "salt" not in runs["import_picai"].data.params  # the pseudonym salt is never logged
    blob = json.dumps(seen)
    assert "tracking-test-salt" not in blob
    for original in ORIGINAL_IDS:
        assert original not in blob, original


# ----------------------------------------------------------------------------- an experiment
def test_an_experiment_is_a_parent_run_with_one_child_per_task(mlflow_server, tmp_path):
    import yaml

    config = {
        "name": "tracked-micro", "target": "csPCa", "seeds": [0], "base": "micro",
        "data": {"phantom": {"kind": "prostate", "preset": "subtle", "size": 32, "seed": 5}, "val": 8, "test": 8},
        "classifier": {"steps": 4, "batch": 8, "eval_every": 2},
        "rows": [{"name": "real-20", "real": 20}],
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    _invoke(["experiment", "augment", "--config", tmp_path / "exp.yaml", "--out", tmp_path / "run"], mlflow_server,
            "experiment")
    client = mlflow.MlflowClient(mlflow_server)
    runs = _runs(client, "experiment")
    parent = runs.pop("tracked-micro")
    assert parent.data.tags["medti.step"] == "run_plan" and parent.data.params["experiment.name"] == "tracked-micro"
    assert set(runs) == {"phantom", "validate-source", "real-val", "real-test", "real-train-20", "train-real-20-s0",
                         "evaluate-real-20-s0", "summary"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    train = runs["train-real-20-s0"]
    assert train.data.tags["medti.row"] == "real-20" and train.data.tags["medti.seed"] == "0"
    assert [m.step for m in client.get_metric_history(train.info.run_id, "val_auc")] == [2, 4]
    assert "roc.png" in _artifacts(client, runs["evaluate-real-20-s0"].info.run_id)
    assert {"table.md", "figure.png"} <= set(_artifacts(client, parent.info.run_id))
    assert "summary.rows.real-20.auc_mean" in parent.data.metrics
