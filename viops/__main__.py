"""``python -m viops``: the same command as the ``viops`` console script."""

from viops.cli import entry_point

entry_point()
