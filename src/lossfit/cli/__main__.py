"""``python -m lossfit.cli``."""

from lossfit.cli import app

app()
