"""Kubeflow components: one file per pipeline step, each a thin adapter over a medti library step.

A component builds its step's config from its inputs, calls the medti function (through
:func:`medti.tracking.pipeline.run_step`, which makes it a child of the pipeline's MLflow run when tracking is
configured) and returns outputs and artifacts. No logic of its own and no pip at run time: every component runs in
the project image (:data:`MEDTI_IMAGE`, built from ``infra/docker/``), which holds medti, so ``install_kfp_package``
is off and nothing is installed when a pod starts.

Every component takes ``tracking_uri`` and ``experiment_name`` (empty: the ``MLFLOW_*`` environment the cluster's
secret sets, ``infra/k8s/``). The cacheable ones take the dataset's DVC version, not the parent run's id: an input
that is new in every pipeline run would stop Kubeflow from ever reusing a task (its cache keys on the inputs), so
they find their parent run by that version (:func:`medti.tracking.pipeline.pipeline_parent`). Only the uncached
register and finish take the parent run's id.
"""

from __future__ import annotations

#: the image every component names; infra/docker/Dockerfile builds it (a CPU variant: Dockerfile.cpu)
MEDTI_IMAGE = "ghcr.io/medti/medti:0.1.0-cuda12.4"
