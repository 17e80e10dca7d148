"""The medti pipeline run here, with kfp.local: the same graph Kubeflow runs, each task a subprocess of this
Python (``SubprocessRunner(use_venv=False)``: medti is already installed, nothing is pip-installed), one task at a
time, outputs under ``ROOT/kfp``, kfp.local's cache under ``ROOT/kfp-cache``."""

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any


def run_local(params: dict[str, Any], root: Path, *, cache: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Run the pipeline with ``params`` (its parameters by name; ``data`` required); returns its final outputs
    (the finish task's: ``finished`` or why it skipped). Raises when a task fails after its retries."""
    from kfp import local

    from pipelines.medti_pipeline import make_pipeline

    root = Path(root).resolve()
    (root / "workspace").mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"),
               workspace_root=str(root / "workspace"), raise_on_error=True, enable_caching=cache,
               cache_root=str(root / "kfp-cache"))
    pipeline = make_pipeline(parallelism=1)  # two CPU-bound tasks at once only fight over the cores here
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        # kfp warns that the components name a non-Python image: here medti is installed in this Python
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image", category=RuntimeWarning)
        task = pipeline(**params)
    return dict(task.outputs) if hasattr(task, "outputs") else {}
