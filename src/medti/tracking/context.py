"""Where runs go: the tracking URI, the experiment and the parent run, from explicit values or the environment.

Nothing here sets mlflow's global state (no ``mlflow.set_tracking_uri``): every call goes through the
:class:`~mlflow.MlflowClient` of a :class:`RunContext`, so two contexts in one process never mix.

Precedence, for each value: what the caller gives (a CLI option, a config field), then the environment
(``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_PARENT_RUN_ID``), then the default. The URI ``local``
means the local store a user without a server gets: ``sqlite:///mlflow.db`` with artifacts in ``mlartifacts/``,
both in the working directory, which ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` opens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from medti.tracking import TrackingError

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
ENV_PARENT = "MLFLOW_PARENT_RUN_ID"
DEFAULT_EXPERIMENT = "medti"
LOCAL = "local"
LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
#: the tag MLflow's UI nests a run under its parent by
PARENT_TAG = "mlflow.parentRunId"


def resolve_uri(uri: str | None) -> str | None:
    """The tracking URI in use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else None (tracking off).
    ``local`` becomes the working directory's ``sqlite:///mlflow.db``."""
    uri = uri or os.environ.get(ENV_URI) or None
    if uri == LOCAL:
        return f"sqlite:///{(Path.cwd() / LOCAL_DB).as_posix()}"
    return uri


def local_artifact_root(uri: str) -> str | None:
    """For a sqlite store on this machine, ``mlartifacts/`` beside it (as a file URI); None otherwise."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.resolve().parent / LOCAL_ARTIFACTS).as_uri()
    return None  # a server has its own artifact store, mlflow's file store keeps them inside its tree


@dataclass(frozen=True)
class RunContext:
    """Where a tracked step logs: tracking URI, experiment name, the run to nest under, extra tags."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, uri: str | None = None, experiment: str | None = None,
                 parent_run_id: str | None = None) -> RunContext | None:
        """The context the given values and the environment configure; None when no tracking URI is set."""
        resolved = resolve_uri(uri)
        if not resolved:
            return None
        return cls(
            uri=resolved,
            experiment=experiment or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT,
            parent_run_id=parent_run_id or os.environ.get(ENV_PARENT) or None,
        )

    def child(self, parent_run_id: str) -> RunContext:
        """The same place, nested under ``parent_run_id``."""
        return replace(self, parent_run_id=parent_run_id)

    @cached_property
    def client(self):
        import logging

        from mlflow import MlflowClient

        for name in ("alembic", "mlflow.store.db.utils"):  # a new store's migrations log every revision
            logging.getLogger(name).setLevel(logging.WARNING)
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    @cached_property
    def experiment_id(self) -> str:
        """The experiment's id, created on first use (artifacts under ``mlartifacts/`` for a local store)."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            if exp.lifecycle_stage != "active":
                raise TrackingError(
                    f"MLflow experiment {self.experiment!r} at {self.uri} is deleted; restore it "
                    "(mlflow experiments restore) or name another with MLFLOW_EXPERIMENT_NAME"
                )
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=local_artifact_root(self.uri))
        except MlflowException:  # created meanwhile by another process
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def parent_tags(self) -> dict[str, str]:
        return {PARENT_TAG: self.parent_run_id} if self.parent_run_id else {}
