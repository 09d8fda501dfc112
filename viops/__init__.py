"""viops: the composition root. The ``viops`` command (:mod:`viops.cli`) and the demo (:mod:`viops.demo`) sit above
every layer (models <- pipelines <- monitoring <- dags); nothing below imports this package."""
