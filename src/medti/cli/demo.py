"""``medti demo``: the main job on the embedded default, end to end."""

from __future__ import annotations

from pathlib import Path

import typer

from medti.cli._common import run
from medti.demo import DemoConfig


# the default is DemoConfig's (its module imports nothing heavy)
def demo_cmd(
    out: Path = typer.Option(DemoConfig.out, "--out", help="Where the demo writes its outputs."),
):
    """Run the main job on the embedded default (phantoms, validation, versions, ...)."""
    from medti.demo import run_demo

    res = run(
        run_demo, DemoConfig(out=out),
        interrupted="interrupted; run the demo again to continue (textual inversion resumes from its last checkpoint)",
    )
    typer.echo(res.summary())
