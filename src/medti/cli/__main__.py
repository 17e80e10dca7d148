"""``python -m medti.cli``: the same as the ``medti`` console script."""

from medti.cli import app

app()
