"""Kubeflow components: one file per pipeline step, each a thin adapter over a medti library step.

A component builds its step's config from its inputs, calls the medti function (through
:func:`medti.tracking.pipeline.run_step`, which makes it a child of the pipeline's MLflow run when tracking is
configured) and returns outputs and artifacts. No logic of its own and no pip at run time: every component runs in
the project image (:data:`MEDTI_IMAGE`, built from ``infra/docker/``), which holds medti, so ``install_kfp_package``
is off and nothing is installed when a pod starts.

Every component takes ``tracking_uri``, ``experiment_name`` and ``parent_run_id`` (empty: the ``MLFLOW_*``
environment the cluster's secret sets, ``infra/k8s/``).
"""

from __future__ import annotations

#: the image every component names; infra/docker/Dockerfile builds it (a CPU variant: Dockerfile.cpu)
MEDTI_IMAGE = "ghcr.io/medti/medti:0.1.0-cuda12.4"
