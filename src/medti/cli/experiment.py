"""medti experiment: the augmentation experiment (does synthetic data help the classifier?) as one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medti.cli._common import fail, run

app = typer.Typer(help="Experiments: real vs synthetic vs mixed training data, AUC on real test cases.",
                  no_args_is_help=True)

Config = Annotated[Path | None, typer.Option("--config", help="Experiment YAML (keys in the README); over the "
                                              "preset when --quick or --preset is given too.")]
Quick = Annotated[bool, typer.Option("--quick", help="The quick preset: the whole table on 2 CPU cores in < 30 min.")]
Preset = Annotated[str | None, typer.Option("--preset", help="quick | full (the reference's settings, scaled).")]


def _config(config: Path | None, quick: bool, preset: str | None):
    from medti.experiment.config import REFERENCE_ROWS, ExperimentConfig, load_config
    from medti.experiment.config import preset as named

    if quick and preset and preset != "quick":
        fail(f"--quick and --preset {preset} ask for two presets; give one")
    base = named("quick" if quick else preset) if (quick or preset) else ExperimentConfig(rows=REFERENCE_ROWS)
    return load_config(config, base=base) if config else base


@app.command("augment")
def augment_cmd(
    out: Annotated[Path, typer.Option("--out", help="Experiment dir (a killed run continues when run again).")],
    config: Config = None,
    quick: Quick = False,
    preset: Preset = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads.")] = None,
):
    """Train classifiers on each row's real and synthetic cases over N seeds; table, figure, ROC curves,
    sample grids in --out."""
    from medti.experiment.runner import RunConfig, run_plan

    exp = run(lambda _: _config(config, quick, preset), None)

    def report(i: int, n: int, task, state: str, result) -> None:
        if state == "start":
            typer.echo(f"[{i + 1}/{n}] {task.id} ...")
        elif state == "reused":
            typer.echo(f"[{i + 1}/{n}] {task.id}: reused")
        elif state == "done" and result:
            figures = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in result.items() if isinstance(v, int | float))
            typer.echo(f"[{i + 1}/{n}] {task.id}: {figures}")

    res = run(run_plan, RunConfig(experiment=exp, out=out, on_task=report, threads=threads),
              interrupted="interrupted; finished tasks and checkpoints are kept: run the same command again to "
              "continue")
    typer.echo(res.text())


@app.command("plan")
def plan_cmd(
    config: Config = None,
    quick: Quick = False,
    preset: Preset = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON (what the pipeline fans out).")]
    = False,
):
    """Print the tasks an experiment runs (step, what each needs), without running them."""
    from medti.experiment.plan import make_plan

    plan = make_plan(run(lambda _: _config(config, quick, preset), None))
    if json_out:
        typer.echo(plan.to_json())
        return
    for t in plan.tasks:
        needs = f"  <- {', '.join(t.needs)}" if t.needs else ""
        typer.echo(f"{t.id:32s} {t.step:17s}{needs}")
    typer.echo(f"{len(plan.tasks)} tasks")
