"""MLflow for medti: runs with lineage, metric curves and artifacts; the model registry; pyfunc serving models.

This package is the only one that imports mlflow, and it wraps the library's steps from outside: a step
(``fn(Config) -> Result``) never knows it is tracked, and with nothing configured it runs exactly as it does
without this package and never imports mlflow.

- :mod:`~medti.tracking.context`: where runs go (tracking URI, experiment, parent run), from explicit values or the
  ``MLFLOW_*`` environment; the local default store;
- :mod:`~medti.tracking.lineage`: the tags every run carries (dataset and its DVC version, base and its hash,
  embeddings, medti version, git commit) and the datasets logged as run inputs;
- :mod:`~medti.tracking.run`: :func:`tracked` (a step's config as params, its curves streamed as metric
  histories, its result as metrics and artifacts), and a parent run that nests children;
- :mod:`~medti.tracking.registry`: embeddings and classifiers as model versions, ``champion`` / ``challenger``
  aliases behind an evaluation gate, listing and showing them;
- :mod:`~medti.tracking.serving`: the pyfunc models ``mlflow models serve`` answers with.
"""

from __future__ import annotations


class TrackingError(RuntimeError):
    """A tracking or registry action that cannot be done; the message names the run, model or value."""
