"""medti command line: one sub-command per step; parse, build the config, call the library, print.

One module per command group (``cli/data.py``, ``cli/base.py``, ...), each with its own ``app``, added below;
``cli/_common.py`` holds the error handling (:func:`~medti.cli._common.run`) and the option aliases several
commands share.  Heavy imports (torch, diffusers, great_expectations, dvc) happen inside the commands so that
``medti --help`` is instant.  No logic lives here.
"""

from __future__ import annotations

import typer

from medti.cli import (
    base,
    classify,
    data,
    demo,
    embed,
    experiment,
    pipeline,
    quality,
    registry,
    synth,
)
from medti.cli._common import TRACKING_OPTIONS

app = typer.Typer(
    help="medti: textual inversion for medical imaging. Learn concept embeddings for a frozen "
    "Stable Diffusion from ~100 cases, synthesise, and measure whether synthetic data helps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    tracking_uri: str = typer.Option(
        None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
        help="Track every step in MLflow: a server (http://127.0.0.1:5000), a database (sqlite:///mlflow.db), or "
        "'local' (sqlite:///mlflow.db + mlartifacts/ here; open with: mlflow ui --backend-store-uri "
        "sqlite:///mlflow.db). Off when unset.",
    ),
    experiment_name: str = typer.Option(
        None, "--experiment-name", envvar="MLFLOW_EXPERIMENT_NAME", help="MLflow experiment for the runs (default medti)."
    ),
    parent_run_id: str = typer.Option(
        None, "--parent-run-id", envvar="MLFLOW_PARENT_RUN_ID", help="Nest the step's run under this MLflow run."
    ),
):
    """medti: textual inversion for medical imaging."""
    TRACKING_OPTIONS.set({"tracking_uri": tracking_uri, "experiment": experiment_name, "parent_run_id": parent_run_id})


app.command("demo")(demo.demo_cmd)

# command groups, in the order `medti --help` lists them: a new group is a module cli/<group>.py with its own
# `app = typer.Typer(...)`, imported above and added here
app.add_typer(data.app, name="data")
app.add_typer(base.app, name="base")
app.add_typer(embed.app, name="embed")
app.add_typer(synth.app, name="synth")
app.add_typer(classify.app, name="classify")
app.add_typer(experiment.app, name="experiment")
app.add_typer(quality.app, name="quality")
app.add_typer(registry.app, name="registry")
app.add_typer(pipeline.app, name="pipeline")
