"""What a pipeline run records in MLflow besides its steps' own runs.

- :func:`run_step`: one step, tracked as a child of the pipeline's parent run when a tracking URI is set (the
  Kubeflow components call their step through it), untracked otherwise. A cacheable task does not take the parent
  run's id (new in every pipeline run, it would make every task's inputs new, and Kubeflow would never reuse one):
  it takes the dataset's DVC version, and finds the parent as the RUNNING pipeline run of that version
  (:func:`pipeline_parent`);
- :func:`begin`: the parent run of one pipeline run, and the check that starts it: is the dataset's DVC version
  the one the current champion classifier was trained on? A scheduled retraining with no new cases ends there,
  and the parent run says so (``medti.skipped``, ``medti.skip_reason``);
- :func:`finish`: the parent run's end, with the registered versions and the promotion decisions.

Everything here takes plain values (paths, strings), as a component's inputs are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from medti.tracking import TrackingError
from medti.tracking.context import RunContext

R = TypeVar("R")

SKIPPED_TAG = "medti.skipped"
REASON_TAG = "medti.skip_reason"


def context(uri: str = "", experiment: str = "", parent_run_id: str = "") -> RunContext | None:
    """The run context of a pipeline task: the values given, else the ``MLFLOW_*`` environment; None when no
    tracking URI is set anywhere (the task then runs untracked)."""
    return RunContext.from_env(uri or None, experiment or None, parent_run_id or None)


def run_step(step: Callable[..., R], cfg: Any, *, uri: str = "", experiment: str = "", parent_run_id: str = "",
             dataset_version: str = "", name: str | None = None) -> R:
    """``step(cfg)``, when tracking is configured as a child run of ``parent_run_id``, or else of the running
    pipeline run of ``dataset_version``."""
    ctx = context(uri, experiment, parent_run_id)
    if ctx is None:
        return step(cfg)
    if not ctx.parent_run_id and dataset_version:
        ctx = ctx.child(pipeline_parent(ctx, dataset_version))
    from medti.tracking.run import tracked

    return tracked(step, cfg, run=ctx, name=name).result


@dataclass
class Begin:
    parent_run_id: str  # "" when tracking is off
    dataset_version: str
    changed: bool  # False: the champion was trained on this version already; the pipeline stops here
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def begin(data: Path, model: str, *, uri: str = "", experiment: str = "", run_name: str = "pipeline",
          params: dict[str, Any] | None = None, force: bool = False) -> Begin:
    """Start a pipeline run: compare ``data``'s DVC version with the ``medti.dataset_version`` tag of the
    ``champion`` of registered model ``model`` (none yet, or another version: go on), and open the parent run."""
    from medti.data.versions import dataset_version

    version = dataset_version(Path(data))
    ctx = context(uri, experiment)
    champion = _champion_version(ctx, model) if ctx is not None else None
    if force:
        changed, reason = True, "forced"
    elif champion is None:
        changed, reason = True, f"no champion of {model} yet"
    elif champion[1] != version:
        changed, reason = True, (f"dataset version {version} is new: champion {model} v{champion[0]} was trained on "
                                 f"{champion[1]}")
    else:
        changed, reason = False, (f"no new cases: dataset version {version} is the one champion {model} v{champion[0]} "
                                  "was trained on")
    run_id = ""
    if ctx is not None:
        from medti.tracking.run import log_params

        # a pipeline run of this version that never reached its end (killed with its pods) would take the tasks of
        # this one: end it, saying which run replaced it
        stale = _running_pipelines(ctx, version)
        tags = {"mlflow.runName": run_name, "medti.step": "pipeline", "medti.dataset_version": version,
                "medti.model": model, "medti.version_check": reason}
        run_id = ctx.client.create_run(ctx.experiment_id, tags=tags, run_name=run_name).info.run_id
        for old in stale:
            ctx.client.set_tag(old.info.run_id, "medti.superseded_by", run_id)
            ctx.client.set_terminated(old.info.run_id, "KILLED")
        log_params(ctx.client, run_id, {k: str(v) for k, v in (params or {}).items()})
    return Begin(run_id, version, changed, reason)


def _running_pipelines(ctx: RunContext, dataset_version: str) -> list:
    """The pipeline runs of ``dataset_version`` still RUNNING in the context's experiment, newest first."""
    return ctx.client.search_runs(
        [ctx.experiment_id],
        f"tags.`medti.step` = 'pipeline' and tags.`medti.dataset_version` = '{dataset_version}' "
        "and attributes.status = 'RUNNING'", order_by=["attributes.start_time DESC"], max_results=20)


def pipeline_parent(ctx: RunContext, dataset_version: str) -> str:
    """The id of the pipeline run a task of a pipeline on ``dataset_version`` belongs to: the one RUNNING pipeline
    run of that version (:func:`begin` ends older ones). Raises TrackingError naming the version when there is
    none, rather than logging the task outside its pipeline run."""
    runs = _running_pipelines(ctx, dataset_version)
    if not runs:
        raise TrackingError(
            f"no running pipeline run of dataset version {dataset_version} in experiment {ctx.experiment!r} at "
            f"{ctx.uri}: a pipeline task logs under the run its pipeline's first step (check_data_version) opened"
        )
    return runs[0].info.run_id


def _champion_version(ctx: RunContext, model: str) -> tuple[str, str] | None:
    """(version, dataset version) of ``model``'s champion; None when it has none."""
    from mlflow.exceptions import MlflowException

    try:
        mv = ctx.client.get_model_version_by_alias(model, "champion")
    except MlflowException:  # no such model, or no champion alias
        return None
    return mv.version, (mv.tags or {}).get("medti.dataset_version", "unknown")


def finish(parent_run_id: str, *, uri: str = "", experiment: str = "", skipped_reason: str = "",
           summary: dict[str, Any] | None = None) -> None:
    """End the pipeline's parent run FINISHED: skipped (and why), or with the summary's figures and decisions."""
    ctx = context(uri, experiment)
    if ctx is None or not parent_run_id:
        return
    from medti.tracking.run import log_metrics

    client = ctx.client
    try:
        if skipped_reason:
            client.set_tag(parent_run_id, SKIPPED_TAG, "true")
            client.set_tag(parent_run_id, REASON_TAG, skipped_reason)
        for key, value in (summary or {}).items():
            if key == "table":
                client.log_text(parent_run_id, str(value), "table.md")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                log_metrics(client, parent_run_id, {key: float(value)})
            else:
                client.set_tag(parent_run_id, f"medti.{key}", str(value)[:5000])
        client.set_terminated(parent_run_id, "FINISHED")
    except Exception as e:  # noqa: BLE001 - name the run; MLflow's own message follows
        raise TrackingError(f"pipeline run {parent_run_id} at {ctx.uri}: cannot record its end: {e}") from e


def classifier_model(data: Path, target: str) -> str:
    """The registered model a pipeline's classifier for ``target`` on ``data`` becomes, and is compared with."""
    from medti.tracking.registry import _dataset_name, model_name

    return model_name(_dataset_name(Path(data), f"dataset {data}"), target, "classifier")


def register(*, data: Path, chosen: Path, embeddings: list[Path], concept: str, embedding_evidence: Path,
             dataset_version: str, base: str = "tiny", audit: Path | None = None, uri: str = "",
             experiment: str = "", parent_run_id: str = "") -> dict[str, Any]:
    """Register the chosen classifier (judged on its real-test evaluation) and the finding's embedding (with the
    other concepts as companions; judged on the best synthetic-data classifier's evaluation), each through the
    champion/challenger gate. An embedding whose synthetic set failed its memorisation ``audit`` is not
    registered (the decision names the flagged images); the classifier still is. Returns what the parent run
    records."""
    from medti.tracking.registry import (
        RegisterClassifierConfig,
        RegisterEmbeddingConfig,
        register_classifier,
        register_embedding,
    )

    ctx = context(uri, experiment, parent_run_id)
    if ctx is None:
        raise TrackingError("register: no tracking URI; set MLFLOW_TRACKING_URI or the pipeline's tracking_uri")
    finding = [p for p in embeddings if Path(p).stem == concept]
    if len(finding) != 1:
        raise TrackingError(f"register: expected one embedding of concept {concept!r}, got "
                            f"{', '.join(Path(p).name for p in embeddings)}")
    clf = register_classifier(RegisterClassifierConfig(
        model=Path(chosen) / "classifier", data=Path(data), evaluation=Path(chosen) / "evaluation",
        dataset_version=dataset_version), run=ctx)
    out = {"classifier": f"{clf.name}/{clf.version}", "classifier_decision": clf.decision}
    if audit is not None:
        from medti.quality.memorization import read_audit

        verdict = read_audit(Path(audit))
        if not verdict.passed:
            return {**out, "embedding": "not registered",
                    "embedding_decision": f"refused: its synthetic set failed the memorisation audit "
                                          f"({len(verdict.flagged)} of {verdict.n_synthetic} images flagged as "
                                          f"copies of training cases: {verdict.flagged_summary()})"}
    evidence = Path(embedding_evidence) / "evaluation"
    emb = register_embedding(RegisterEmbeddingConfig(
        embedding=finding[0], data=Path(data), companions=[Path(p) for p in embeddings if p != finding[0]],
        base=base, evaluation=evidence if evidence.is_dir() else None, audit=audit,
        dataset_version=dataset_version), run=ctx)
    return {**out, "embedding": f"{emb.name}/{emb.version}", "embedding_decision": emb.decision}


def last_pipeline_run(uri: str, experiment: str) -> str:
    """What the latest pipeline run in ``experiment`` did, for a terminal: skipped and why, or its table and the
    versions it registered."""
    ctx = context(uri, experiment)
    if ctx is None:
        return "tracking is off: nothing recorded"
    runs = ctx.client.search_runs([ctx.experiment_id], "tags.`medti.step` = 'pipeline'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return f"no pipeline run in experiment {experiment!r} at {uri}"
    r = runs[0]
    tags = r.data.tags
    lines = [f"pipeline run {r.info.run_id} ({r.info.status}) in experiment {experiment!r} at {uri}",
             f"data version check: {tags.get('medti.version_check', '?')}"]
    if tags.get(SKIPPED_TAG) == "true":
        lines.append(f"skipped: {tags.get(REASON_TAG, '')}")
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="medti-table-") as tmp:
            try:
                table = Path(ctx.client.download_artifacts(r.info.run_id, "table.md", tmp)).read_text(encoding="utf-8")
            except Exception:  # noqa: BLE001 - a run that failed before collect has no table
                table = ""
        if table:
            lines += ["", "AUC on the real test split:", table]
        for key in ("classifier", "embedding"):
            if f"medti.{key}" in tags:
                lines.append(f"{key}: {tags[f'medti.{key}']} - {tags.get(f'medti.{key}_decision', '')}")
    if uri.startswith("sqlite:///"):
        lines.append(f"open: mlflow ui --backend-store-uri {uri}")
    return "\n".join(lines)
