"""``medti demo``: the main job on the embedded default, end to end: the data steps, then the Kubeflow pipeline
run here with kfp.local, tracked to the local MLflow store."""

from __future__ import annotations

from pathlib import Path

import typer

from medti.cli._common import fail, run
from medti.demo import DemoConfig


# the defaults are DemoConfig's (its module imports nothing heavy)
def demo_cmd(
    out: Path = typer.Option(DemoConfig.out, "--out", help="Where the demo writes its outputs."),
    base: str = typer.Option(DemoConfig.base, "--base", help="tiny (built once per machine) | micro (untrained, "
                             "for a quick plumbing run) | a diffusers dir."),
):
    """Phantoms -> validation -> DVC version -> the pipeline (embeddings, synthetic data, classifiers on real /
    mixed / synthetic data, evaluation, registry), tracked in MLflow."""
    from medti.cli._common import _tracking
    from medti.cli.pipeline import _project
    from medti.demo import run_demo

    res = run(run_demo, DemoConfig(out=out, base=base),  # prints a line per step as it goes
              interrupted="interrupted; run the demo again to continue")
    _project()
    from pipelines.demo import run_demo_pipeline
    from pipelines.local import plain

    tracking = _tracking()
    try:
        text = run(lambda _: run_demo_pipeline(res.data["prostate"], out, base=base,
                                               uri=tracking.uri if tracking else None, progress=typer.echo), None,
                   interrupted="interrupted; run the demo again (finished tasks are reused)")
    except RuntimeError as e:  # kfp.local: a task failed after its retries
        fail(f"medti demo: {plain(str(e))} (its output is in {out / 'pipeline' / 'pipeline.log'})")
    typer.echo(text)
