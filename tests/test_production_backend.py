"""The production tracking backend, for real: ``mlflow server`` with a PostgreSQL backend store (a throwaway cluster
from Debian's packages, which ``.ci/run`` installs) and S3-compatible artifact storage (moto's server), all on
127.0.0.1. A run and a registered version land in both; then the whole Kubeflow pipeline (kfp.local) logs and
registers through it, and what it leaves is read back three ways: through MLflow, from the bucket, from the
database's own tables."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from servers import (
    postgres_bin,
    postgres_server,
    production_tracking_server,
    s3_credentials,
    s3_server,
)

mlflow = pytest.importorskip("mlflow")
boto3 = pytest.importorskip("boto3", reason="pip install -e '.[dev]' installs boto3, moto[server] and psycopg")
psycopg = pytest.importorskip("psycopg", reason="pip install -e '.[dev]' installs boto3, moto[server] and psycopg")
pytest.importorskip("moto", reason="pip install -e '.[dev]' installs boto3, moto[server] and psycopg")

BUCKET = "mlflow-artifacts"
TARGET = "csPCa"
CONCEPTS = ("csPCa", "healthy")  # the pipeline's default concepts
CONDITIONS = [{"condition": "real", "seed": 0}, {"condition": "mixed", "seed": 0}]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """PostgreSQL, the S3 server and ``mlflow server`` over both: {uri, db, s3, cwd (the server's)}."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        why = ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): .ci/run installs it "
               "(apt-get install postgresql)")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    root = tmp_path_factory.mktemp("prod-backend")
    with (postgres_server(bin_dir) as db, s3_server(root / "s3", BUCKET) as s3,
          production_tracking_server(root / "mlflow", db, s3, BUCKET) as uri):
        yield {"uri": uri, "db": db, "s3": s3, "cwd": root / "mlflow" / "cwd"}


def _bucket(s3_url: str) -> dict[str, bytes]:
    """Every object in the artifact bucket: {key: body}."""
    s3 = boto3.client("s3", endpoint_url=s3_url, **s3_credentials())
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def _sql(db: str, query: str, *args) -> list[tuple]:
    with psycopg.connect(db) as conn:
        return conn.execute(query, args).fetchall()


def _key_prefix(source: str) -> str:
    """The bucket key prefix of a proxied artifact URI (``mlflow-artifacts:/1/<run>/artifacts/model``)."""
    assert source.startswith("mlflow-artifacts:/"), source  # proxied: the client never sees the bucket
    return source.removeprefix("mlflow-artifacts:").strip("/") + "/"


def _local_files(cwd: Path) -> list[Path]:
    return [p for p in cwd.rglob("*") if p.is_file()]


def test_a_run_and_a_registered_version_land_in_postgresql_and_the_bucket(backend, tmp_path):
    client = mlflow.MlflowClient(backend["uri"])
    exp = client.create_experiment("smoke")
    run = client.create_run(exp, run_name="smoke")
    rid = run.info.run_id
    client.log_metric(rid, "auc", 0.75)
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x00\x01medti" * 100)
    client.log_artifacts(rid, str(model), "model")
    client.set_terminated(rid, "FINISHED")
    client.create_registered_model("medti-smoke")
    mv = client.create_model_version("medti-smoke", f"{run.info.artifact_uri}/model", run_id=rid)
    client.set_registered_model_alias("medti-smoke", "champion", mv.version)

    objects = _bucket(backend["s3"])
    assert objects[_key_prefix(mv.source) + "weights.bin"] == (model / "weights.bin").read_bytes()
    assert _local_files(backend["cwd"]) == []  # no local artifact store beside the server
    assert _sql(backend["db"], "SELECT name, status FROM runs WHERE run_uuid = %s", rid) == [("smoke", "FINISHED")]
    assert _sql(backend["db"], "SELECT key, value FROM latest_metrics WHERE run_uuid = %s", rid) == [("auc", 0.75)]
    assert _sql(backend["db"], "SELECT alias, version FROM registered_model_aliases WHERE name = 'medti-smoke'") \
        == [("champion", 1)]


@pytest.fixture(scope="module")
def pipeline_run(backend, tmp_path_factory):
    """The real pipeline (kfp.local) on small phantoms and the micro base, tracked by the production backend."""
    from medti.data.phantoms import PhantomConfig, generate_phantoms
    from medti.diffusion.base import build_micro
    from pipelines.local import run_local

    root = tmp_path_factory.mktemp("prod-pipeline")
    data = root / "phantoms"
    # 32 px: the micro base's image size (the synthetic rows must match the real ones)
    generate_phantoms(PhantomConfig(kind="prostate", out=data, n=60, size=32, preset="subtle"))
    base = build_micro(root / "micro")
    run_local({"data": str(data), "base": str(base), "target": TARGET, "embedding_steps": 4, "vectors": 2,
               "embedding_cases": 10, "synthetic_count": 8, "sampler_steps": 2, "classifier_steps": 4,
               "conditions": CONDITIONS, "tracking_uri": backend["uri"], "experiment_name": "prod"},
              root / "run", quiet=True)
    return {**backend, "data": data}


@pytest.mark.slow
def test_the_pipeline_logs_and_registers_through_postgresql_and_s3(pipeline_run):
    from medti.tracking.lineage import dataset_name
    from medti.tracking.registry import FILES, model_name

    uri, db = pipeline_run["uri"], pipeline_run["db"]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("prod")
    runs = client.search_runs([exp.experiment_id], max_results=500)

    # one parent pipeline run, FINISHED, every step a FINISHED child of it
    parents = [r for r in runs if r.data.tags.get("medti.step") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    parent = parents[0].info.run_id
    children = {r.info.run_name: r for r in runs if r.info.run_id != parent}
    assert all(r.data.tags.get("mlflow.parentRunId") == parent for r in children.values())
    assert all(r.info.status == "FINISHED" for r in children.values())
    conds = [f"{c['condition']}-s{c['seed']}" for c in CONDITIONS]
    assert set(children) == {"validate_data", "synthesize", "audit_memorization", "register_classifier", "register_embedding",
                             *(f"train_embedding-{c}" for c in CONCEPTS), *(f"train_classifier-{c}" for c in conds),
                             *(f"evaluate-{c}" for c in conds)}

    # both models registered, version 1 the champion, logged by the pipeline's register runs
    dataset = dataset_name(pipeline_run["data"])
    names = {"classifier": model_name(dataset, TARGET, "classifier"), "embedding": model_name(dataset, TARGET)}
    assert names == {"classifier": "medti-phantom-prostate-csPCa-classifier", "embedding": "medti-phantom-prostate-csPCa"}
    versions = {}
    for kind, name in names.items():
        mv = client.get_model_version_by_alias(name, "champion")
        assert mv.version == "1" and mv.run_id == children[f"register_{kind}"].info.run_id
        versions[name] = mv

    # the versions' files are in the bucket, byte for byte what registration hashed, and nowhere on local disk
    objects = _bucket(pipeline_run["s3"])
    for name, mv in versions.items():
        prefix = _key_prefix(mv.source)
        stored = {k.removeprefix(prefix): body for k, body in objects.items() if k.startswith(prefix)}
        files = json.loads(mv.tags[FILES])
        assert files and "MLmodel" in stored, (name, sorted(stored))
        assert {p: hashlib.sha256(b).hexdigest() for p, b in stored.items()} == files, name
    assert _local_files(pipeline_run["cwd"]) == []

    # ... and the runs, models, versions and aliases are rows of PostgreSQL
    (n_runs,), = _sql(db, "SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                          "WHERE e.name = 'prod'")
    assert n_runs == len(runs) == 1 + len(children)
    assert set(names.values()) <= {n for (n,) in _sql(db, "SELECT name FROM registered_models")}
    rows = _sql(db, "SELECT name, version, source, run_id FROM model_versions WHERE name = ANY(%s)", list(names.values()))
    assert sorted(rows) == sorted((n, 1, mv.source, mv.run_id) for n, mv in versions.items())
    aliases = _sql(db, "SELECT name, alias, version FROM registered_model_aliases WHERE name = ANY(%s)",
                   list(names.values()))
    assert sorted(aliases) == sorted((n, "champion", 1) for n in names.values())
