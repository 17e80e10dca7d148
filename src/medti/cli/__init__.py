"""medti command line: one sub-command per step; parse, build the config, call the library, print.

One module per command group (``cli/data.py``, ``cli/base.py``, ...), each with its own ``app``, added below;
``cli/_common.py`` holds the error handling (:func:`~medti.cli._common.run`) and the option aliases several
commands share.  Heavy imports (torch, diffusers, great_expectations, dvc) happen inside the commands so that
``medti --help`` is instant.  No logic lives here.
"""

from __future__ import annotations

import typer

from medti.cli import base, classify, data, demo, embed, experiment, synth

app = typer.Typer(
    help="medti: textual inversion for medical imaging. Learn concept embeddings for a frozen "
    "Stable Diffusion from ~100 cases, synthesise, and measure whether synthetic data helps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo_cmd)

# command groups, in the order `medti --help` lists them: a new group is a module cli/<group>.py with its own
# `app = typer.Typer(...)`, imported above and added here
app.add_typer(data.app, name="data")
app.add_typer(base.app, name="base")
app.add_typer(embed.app, name="embed")
app.add_typer(synth.app, name="synth")
app.add_typer(classify.app, name="classify")
app.add_typer(experiment.app, name="experiment")
