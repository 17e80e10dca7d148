"""medti quality: are synthetic images realistic (distribution), not copies of patients (memorization), and
can experts tell them apart (reader-study)?"""

from __future__ import annotations

import typer

app = typer.Typer(help="Quality and privacy of synthetic data: distribution metrics, memorisation audit, "
                  "reader study.", no_args_is_help=True)
reader_study = typer.Typer(help="Blinded two-alternative forced-choice reader study: make the set, serve it to "
                           "readers in a browser, score their answers.", no_args_is_help=True)
app.add_typer(reader_study, name="reader-study")

# --- distribution ---------------------------------------------------------------------------------------------

# --- memorization ---------------------------------------------------------------------------------------------

# --- reader-study ---------------------------------------------------------------------------------------------
