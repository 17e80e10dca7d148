"""The Kubeflow pipeline: the committed YAML is what the code compiles to, and the real pipeline runs here with
kfp.local (every task a subprocess, as a pod would be) against a real ``mlflow server`` on 127.0.0.1.

A scheduled retraining seen end to end: run 1 registers champions; run 2, with no new cases, ends without
training and says why; run 3, after ``data add`` + ``snapshot``, registers version 2 through the gate. A training
task killed half-way is retried by kfp and ends with the embedding an uninterrupted run makes.
"""

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")
mlflow = pytest.importorskip("mlflow")

ROOT = Path(__file__).resolve().parents[1]
DATASET = "phantom-prostate"  # dataset.json's name for generated prostate phantoms
CLASSIFIER = f"medti-{DATASET}-csPCa-classifier"
EMBEDDING = f"medti-{DATASET}-csPCa"

#: the smallest pipeline that still does every step: 2 concepts, 8 synthetic images, one classifier (mixed data:
#: it reads both the real and the synthetic set)
SMALL = {"embedding_steps": 4, "vectors": 2, "embedding_cases": 10, "synthetic_count": 8, "sampler_steps": 2,
         "classifier_steps": 4, "conditions": [{"condition": "mixed", "seed": 0}]}


def test_the_committed_yaml_is_what_the_pipeline_compiles_to(tmp_path):
    from pipelines.medti_pipeline import YAML, compile_pipeline

    fresh = yaml.safe_load(compile_pipeline(tmp_path / "p.yaml").read_text())
    committed = yaml.safe_load(YAML.read_text())
    assert fresh == committed, "pipelines/medti_pipeline.yaml is stale: run `medti pipeline compile` and commit it"


def test_the_compiled_pipeline_asks_kubernetes_for_what_training_needs():
    from pipelines.medti_pipeline import YAML

    spec = yaml.safe_load(YAML.read_text())
    executors = spec["deploymentSpec"]["executors"]
    gpu = {name for name, e in executors.items() if e["container"].get("resources", {}).get("accelerator")}
    assert {n.split("exec-")[1] for n in gpu} == {"train-embedding", "synthesize", "train-classifier"}
    for name in gpu:
        res = executors[name]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and str(res["accelerator"]["resourceCount"]) == "1"
    for e in executors.values():  # the project image holds medti: nothing is installed when a pod starts
        assert e["container"]["image"].startswith("ghcr.io/medti/medti:")
        assert "pip install" not in " ".join(e["container"].get("command", []))

    def tasks(dag):
        for name, t in dag["tasks"].items():
            yield name, t
            sub = spec["components"][t["componentRef"]["name"]].get("dag")
            if sub:
                yield from tasks(sub)

    every = dict(tasks(spec["root"]["dag"]))
    for name in ("train-embedding", "synthesize", "train-classifier"):
        assert every[name]["retryPolicy"]["maxRetryCount"] == 2
    for name in ("check-data-version", "register", "finish", "finish-2"):
        assert not every[name].get("cachingOptions", {}).get("enableCache")
    # caching keys on the data version: every cached task takes it, from the first step, and none takes the
    # parent run's id (new in every pipeline run, it would make every cache key new)
    cached = [n for n, t in every.items() if (t.get("cachingOptions") or {}).get("enableCache")]
    assert {"validate-data", "train-embedding", "synthesize", "train-classifier", "evaluate"} <= set(cached)
    for name in cached:
        params = every[name].get("inputs", {}).get("parameters", {})
        assert "parent_run_id" not in params, name
        if name != "collect":
            assert params["dataset_version"] == {
                "componentInputParameter": "pipelinechannel--check-data-version-dataset_version"}, name


def test_collect_chooses_by_validation_auc_and_tables_every_condition(tmp_path):
    from medti.experiment.conditions import Evaluated, collect_evaluations

    def bundle(name):
        d = tmp_path / name
        (d / "classifier").mkdir(parents=True)
        (d / "classifier" / "who").write_text(name)
        return d

    runs = [Evaluated(bundle("real-0"), "real", 0, auc=0.90, val_auc=0.70),
            Evaluated(bundle("real-1"), "real", 1, auc=0.80, val_auc=0.75),
            Evaluated(bundle("syn-0"), "synthetic", 0, auc=0.95, val_auc=0.60),
            Evaluated(bundle("mixed-0"), "mixed", 0, auc=0.60, val_auc=0.65)]
    out = collect_evaluations(runs, table=tmp_path / "t.md", chosen=tmp_path / "c", embedding_evidence=tmp_path / "e")
    # the test split judges, it does not choose: real seed 1 has the best validation AUC, not the best test AUC
    assert (tmp_path / "c" / "classifier" / "who").read_text() == "real-1" and out["chosen"] == "real-s1"
    assert out["chosen_test_auc"] == 0.80
    # the embedding is judged on the best classifier that learned from synthetic data (by validation AUC)
    assert (tmp_path / "e" / "classifier" / "who").read_text() == "mixed-0" and out["embedding_test_auc"] == 0.60
    table = (tmp_path / "t.md").read_text()
    assert "| real | **0.850** ± 0.071 | 2 | 0.900, 0.800 |" in table and out["auc.synthetic"] == 0.95
    assert table.index("| real |") < table.index("| synthetic |") < table.index("| mixed |")


# ----------------------------------------------------------------------------- the real pipeline
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A git + DVC repository holding a snapshotted phantom dataset, a micro base (32 px, as the phantoms: real and
    synthetic images of one classifier must match), and a real mlflow server of its own (the registry's names
    are the dataset's, which other tests register too)."""
    from medti.data.phantoms import PhantomConfig, generate_phantoms
    from medti.data.versions import SnapshotConfig, snapshot_dataset
    from medti.diffusion.base import build_micro
    from repos import dvc_repo
    from servers import tracking_server

    base_dir = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp:
        repo = dvc_repo(base_dir, mp)  # its DVC environment reaches the component subprocesses too
        data = generate_phantoms(PhantomConfig(kind="prostate", out=repo / "data" / "prostate", n=60, size=32,
                                               preset="subtle")).out
        v1 = snapshot_dataset(SnapshotConfig(dataset=data, push=False)).version
        base = build_micro(base_dir / "micro")
        with tracking_server(base_dir / "mlflow") as uri:
            yield {"root": base_dir, "data": data, "v1": v1, "base": str(base), "uri": uri,
                   "params": {"data": str(data), "base": str(base), "tracking_uri": uri,
                              "experiment_name": "pipeline-test", **SMALL}}


def _client(uri):
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _pipeline_runs(uri, experiment="pipeline-test"):
    c = _client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], "tags.`medti.step` = 'pipeline'", order_by=["attributes.start_time ASC"])


def _children(uri, parent_id, experiment="pipeline-test"):
    c = _client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


@pytest.fixture(scope="module")
def first_run(world):
    from pipelines.local import run_local

    run_local(world["params"], world["root"] / "kfp-1", quiet=True)
    return world


def test_the_first_run_registers_champions_with_lineage_and_every_task_nested_under_one_run(first_run):
    w = first_run
    c = _client(w["uri"])
    (parent,) = _pipeline_runs(w["uri"])
    assert parent.info.status == "FINISHED" and parent.data.tags["medti.dataset_version"] == w["v1"]
    assert "medti.skipped" not in parent.data.tags
    children = _children(w["uri"], parent.info.run_id)
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(["validate_data", "train_embedding-csPCa", "train_embedding-healthy", "synthesize",
                            "audit_memorization", "train_classifier-mixed-s0", "evaluate-mixed-s0", "register_classifier",
                            "register_embedding"]), names
    assert all(r.info.status == "FINISHED" for r in children)
    # the table and the figures of each condition reach the parent run
    assert {"auc.mixed", "chosen_test_auc"} <= set(parent.data.metrics)
    table = Path(c.download_artifacts(parent.info.run_id, "table.md", str(w["root"]))).read_text()
    assert "| mixed |" in table
    # the registry: version 1 of each, champion, carrying the data version the next run compares with
    clf = c.get_model_version_by_alias(CLASSIFIER, "champion")
    emb = c.get_model_version_by_alias(EMBEDDING, "champion")
    assert clf.version == "1" and emb.version == "1"
    assert clf.tags["medti.dataset_version"] == w["v1"] and emb.tags["medti.dataset_version"] == w["v1"]
    assert emb.tags["medti.memorization"] == "pass"  # no synthetic image is a copy of a training case
    assert float(clf.tags["medti.eval.auc"]) == pytest.approx(parent.data.metrics["chosen_test_auc"])
    assert emb.tags["medti.embeddings"].count(":") == 2  # csPCa and healthy, served together
    assert "medti.eval.auc" in emb.tags  # judged on the best synthetic-data classifier
    # every step's run carries the lineage tags
    by_name = {r.info.run_name: r for r in children}
    assert by_name["train_embedding-csPCa"].data.tags["medti.base_hash"]
    assert by_name["validate_data"].data.tags["medti.dataset_version"] == w["v1"]


def test_a_rerun_without_new_cases_ends_without_training_and_says_why(first_run):
    from pipelines.local import run_local

    w = first_run
    t0 = time.time()
    run_local(w["params"], w["root"] / "kfp-2", quiet=True)
    runs = _pipeline_runs(w["uri"])
    last = runs[-1]
    assert len(runs) == 2 and last.info.status == "FINISHED"
    assert last.data.tags["medti.skipped"] == "true"
    reason = last.data.tags["medti.skip_reason"]
    assert "no new cases" in reason and w["v1"] in reason and f"{CLASSIFIER} v1" in reason
    assert _children(w["uri"], last.info.run_id) == []  # nothing trained, nothing registered
    assert [v.version for v in _client(w["uri"]).search_model_versions(f"name='{CLASSIFIER}'")] == ["1"]
    assert time.time() - t0 < 60


@pytest.mark.slow  # a second pipeline run: 45 s the 10-minute suite cannot spare (the compiled-spec test above
# guards the cache keys in the suite)
def test_a_forced_rerun_with_other_classifier_settings_reuses_the_data_embeddings_and_synthetic_set(first_run):
    from pipelines.local import plain, run_local

    w = first_run
    root = w["root"] / "kfp-1"  # the first run's root: its kfp cache
    run_local({**w["params"], "force": True, "classifier_steps": 6}, root, quiet=True)
    log = plain((root / "pipeline.log").read_text())
    log = log[log.rindex("Executing task 'check-data-version'"):]  # this run's part (the log is appended to)
    ran = set(re.findall(r"Executing task '([^']+)'", log))
    assert ran == {"check-data-version", "train-classifier", "evaluate", "collect", "register", "finish"}, ran
    reused = re.findall(r"Task '([^']+)' reused from kfp's cache", log)
    assert sorted(reused) == ["audit-memorization", "synthesize", "train-embedding", "train-embedding",
                              "validate-data"], reused
    last = _pipeline_runs(w["uri"])[-1]
    assert last.info.status == "FINISHED" and last.data.tags["medti.version_check"] == "forced"
    # what ran again logs under this run; what the cache gave stays under the run that made it
    names = sorted(r.info.run_name for r in _children(w["uri"], last.info.run_id))
    assert names == ["evaluate-mixed-s0", "register_classifier", "register_embedding", "train_classifier-mixed-s0"]
    versions = {v.version for v in _client(w["uri"]).search_model_versions(f"name='{CLASSIFIER}'")}
    assert versions == {"1", "2"}


@pytest.mark.slow
def test_new_cases_and_a_snapshot_give_a_new_version_that_the_gate_judges(first_run, tmp_path):
    from diffusion_fixtures import make_blob_dataset
    from medti.data.add import AddConfig, add_cases
    from medti.data.versions import SnapshotConfig, snapshot_dataset
    from pipelines.local import run_local

    w = first_run
    add_cases(AddConfig(to=w["data"], source=make_blob_dataset(tmp_path / "new", n=16, size=32)))
    v2 = snapshot_dataset(SnapshotConfig(dataset=w["data"], push=False)).version
    assert v2 != w["v1"]
    c = _client(w["uri"])
    old = c.get_model_version_by_alias(CLASSIFIER, "champion")
    run_local(w["params"], w["root"] / "kfp-3", quiet=True)
    last = _pipeline_runs(w["uri"])[-1]
    assert "medti.skipped" not in last.data.tags and w["v1"] in last.data.tags["medti.version_check"]
    latest = max(int(v.version) for v in c.search_model_versions(f"name='{CLASSIFIER}'"))
    new = c.get_model_version(CLASSIFIER, str(latest))
    assert new.tags["medti.dataset_version"] == v2 and new.version != old.version
    champion = c.get_model_version_by_alias(CLASSIFIER, "champion")
    if float(new.tags["medti.eval.auc"]) >= float(old.tags["medti.eval.auc"]):
        assert champion.version == new.version
    else:
        assert champion.version == old.version
        assert c.get_model_version_by_alias(CLASSIFIER, "challenger").version == new.version
        assert "medti.promotion" in new.tags


# ----------------------------------------------------------------------------- a killed training task
def _kill_when_checkpointed(root: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the train_embedding task's processes once its first checkpoint is on disk (once)."""
    while not stop.is_set() and not killed:
        if any(root.rglob("step-*.safetensors")):
            for proc in Path("/proc").iterdir():
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except (OSError, ValueError):
                    continue
                if "executor_main" in cmd and "train-embedding" in cmd and proc.name.isdigit():
                    os.kill(int(proc.name), signal.SIGKILL)  # the task's shell and its python, as a pod dies whole
                    killed.append(int(proc.name))
            if killed:
                return
        time.sleep(0.2)


@pytest.mark.slow
def test_a_training_task_killed_half_way_is_retried_and_ends_with_the_uninterrupted_embedding(world, tmp_path):
    from kfp import dsl, local

    from components.train_embedding import train_embedding
    from components.validate_data import validate_data
    from medti.diffusion.embeddings import load_embedding
    from pipelines.medti_pipeline import _retried

    @dsl.pipeline(name="embed-once")  # (kfp reads these annotations: this module has no postponed annotations)
    def embed_once(data: str, base: str):
        val = validate_data(data=data)
        _retried(train_embedding(data=val.outputs["dataset"], concept="csPCa", target="csPCa", label=1, base=base,
                                 vectors=2, steps=400, max_images=10))

    def run(root: Path, kill: bool) -> Path:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
                   workspace_root=str(root / "ws"))
        stop, killed = threading.Event(), []
        watcher = threading.Thread(target=_kill_when_checkpointed, args=(root, stop, killed), daemon=True)
        if kill:
            watcher.start()
        try:
            embed_once(data=str(world["data"]), base=world["base"])
        finally:
            stop.set()
        assert bool(killed) == kill
        (emb,) = root.rglob("csPCa.safetensors")
        return emb

    killed_run = load_embedding(run(tmp_path / "killed", kill=True))
    whole_run = load_embedding(run(tmp_path / "whole", kill=False))
    import torch

    assert torch.equal(killed_run.vectors, whole_run.vectors)
