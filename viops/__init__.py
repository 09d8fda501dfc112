"""viops: the composition root. The ``viops`` command (:mod:`viops.cli`) and the demo (:mod:`viops.demo`) sit above
every layer (models <- pipelines <- monitoring <- dags); nothing below imports this package."""

from pathlib import Path

#: The checkout: its configs/, runbooks/ and dags/ are the defaults of the commands and the demo.
REPO = Path(__file__).resolve().parent.parent
