"""``medti pipeline``: the Kubeflow pipeline: compile the YAML a user uploads, run it here with kfp.local, schedule
it as a recurring run on a Kubeflow Pipelines server.

The pipeline and its components live in the project checkout (``pipelines/``, ``components/``), not in the
installed package: these commands are for the people who build and debug it, run from the checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from medti.cli._common import fail, fail_if_mlflow_error, registry_context

app = typer.Typer(help="The Kubeflow pipeline: compile, run locally (kfp.local), schedule retraining.",
                  no_args_is_help=True)


def _project() -> Path:
    """The checkout holding pipelines/ and components/ (the working dir or one above it, or medti's own source
    tree), put on the import path."""
    import medti

    here = Path.cwd().resolve()
    for root in (here, *here.parents, Path(medti.__file__).resolve().parents[2]):
        if (root / "pipelines" / "medti_pipeline.py").is_file() and (root / "components").is_dir():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return root
    fail("medti pipeline: no pipelines/medti_pipeline.py here or above; run it from the medti project checkout")
    raise AssertionError  # fail exits


@app.command("compile")
def compile_cmd(out: Path = typer.Option(None, "--out", help="Default: pipelines/medti_pipeline.yaml.")):
    """Write the pipeline's YAML: the file to upload in the Kubeflow UI (Pipelines > Upload pipeline)."""
    root = _project()
    from pipelines.medti_pipeline import compile_pipeline

    typer.echo(compile_pipeline(out or root / "pipelines" / "medti_pipeline.yaml"))


def _params(config: Path | None, data: Path | None, force: bool) -> dict:
    import yaml

    from pipelines.medti_pipeline import medti_pipeline

    params: dict = {}
    if config is not None:
        try:
            params = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            fail(f"{config}: cannot read the pipeline config: {e}")
        if not isinstance(params, dict):
            fail(f"{config}: must be a mapping of pipeline parameters")
    known = set(medti_pipeline.component_spec.inputs or {})
    unknown = sorted(set(params) - known)
    if unknown:
        fail(f"{config}: unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if data is not None:
        params["data"] = str(data.resolve())
    if "data" not in params:
        fail("medti pipeline run: give the dataset dir (--data DIR, or data: in --config)")
    params["data"] = str(Path(params["data"]).resolve())
    if force:
        params["force"] = True
    return params


@app.command("run")
def run_cmd(
    data: Path = typer.Option(None, "--data", help="The real dataset dir (its DVC version decides whether to train)."),
    config: Path = typer.Option(None, "--config", help="YAML of pipeline parameters (steps, conditions, ...)."),
    out: Path = typer.Option(Path("pipeline-runs"), "--out", help="kfp.local's outputs and cache."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse tasks whose inputs are unchanged."),
    force: bool = typer.Option(False, "--force", help="Train even when the champion was trained on this version."),
    verbose: bool = typer.Option(False, "--verbose", help="kfp's whole log here (default: one line per task; the "
                                 "log goes to OUT/pipeline.log)."),
):
    """Run the pipeline here (kfp.local, one task at a time), tracked in MLflow (--tracking-uri, or the local
    store sqlite:///mlflow.db + mlartifacts/)."""
    _project()
    from medti.tracking import TrackingError
    from medti.tracking.pipeline import last_pipeline_run
    from pipelines.local import plain, run_local

    params = _params(config, data, force)
    ctx = registry_context()
    params.setdefault("tracking_uri", ctx.uri)
    params.setdefault("experiment_name", ctx.experiment if ctx.experiment != "medti" else "medti-pipeline")
    try:
        run_local(params, out, cache=cache, quiet=not verbose, progress=typer.echo)
        summary = last_pipeline_run(params["tracking_uri"], params["experiment_name"])
    except TrackingError as e:
        fail(str(e))
    except RuntimeError as e:  # kfp.local: a task failed after its retries
        where = "above" if verbose else f"in {out / 'pipeline.log'}"
        fail(f"medti pipeline run: {plain(str(e))} (its output is {where})")
    except Exception as e:
        fail_if_mlflow_error(e, params["tracking_uri"])
        raise
    typer.echo(summary)


@app.command("schedule")
def schedule_cmd(
    host: str = typer.Option(..., "--host", help="Kubeflow Pipelines API, e.g. http://ml-pipeline-ui.kubeflow:80."),
    cron: str = typer.Option("0 0 3 * * 1", "--cron", help="6-field cron (seconds first): Mondays 03:00 by default."),
    config: Path = typer.Option(None, "--config", help="YAML of pipeline parameters (data: the dataset's path in "
                                "the cluster)."),
    package: Path = typer.Option(None, "--package", help="Compiled pipeline; default pipelines/medti_pipeline.yaml."),
    experiment: str = typer.Option("medti", "--experiment", help="Kubeflow experiment of the recurring run."),
    name: str = typer.Option("medti-retrain", "--name", help="The recurring run's name."),
):
    """Create the recurring run that retrains when new cases arrive (no catch-up, one run at a time)."""
    root = _project()
    import yaml

    from pipelines.schedule import ScheduleError, schedule

    params = yaml.safe_load(config.read_text(encoding="utf-8")) if config else {}
    try:
        res = schedule(host, package or root / "pipelines" / "medti_pipeline.yaml", cron=cron, params=params or {},
                       experiment=experiment, name=name)
    except ScheduleError as e:
        fail(str(e))
    typer.echo(f"recurring run {res['name']} ({res['id']}) in experiment {experiment!r} at {host}: cron {cron!r}, "
               "no catch-up, at most 1 run at a time")
