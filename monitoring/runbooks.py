"""Runbooks: ``runbooks/<AlertName>.md``, one per alert, with YAML front matter that automation reads.

Front matter keys:

- ``alert``: the alert this runbook answers; must exist in ``monitoring/prometheus/alerts.yml``.
- ``severity``: ``page`` or ``ticket``, as on the alert.
- ``action``: what the decision does when the alert fires: ``retrain`` or ``rollback`` (automated), ``page`` (a
  person now) or ``ticket`` (an incident record with severity ticket, exported to Prometheus; a person looks in
  working hours, nothing is changed); ``canary_rollback`` for an alert about a live challenger, whose deployment
  policy (:mod:`monitoring.shadow`), not the champion's decision, rejects the candidate (the champion never moved).
- ``preconditions``: all must hold before the action runs. Otherwise the alert asks for a person at its
  ``severity`` (a ticket or a page).
  - ``min_labelled_rows``: the window must have this many labelled rows (retraining needs data to learn from);
  - ``inputs_valid``: no NaN/inf inputs in the window, so nothing is trained on broken data;
  - ``promoted_within_windows``: the champion was promoted at most this many windows ago;
  - ``previous_champion``: a ``previous-champion`` exists to roll back to.
- ``cooldown``: windows after an executed automated action during which this runbook triggers no other one.
- ``page_after_windows``: a ``ticket`` becomes a ``page`` once the alert has fired this many windows in a row.

The body has the sections Meaning, Impact, Diagnosis and Mitigation, with the exact commands to run.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, PositiveInt, ValidationError

from pipelines.config.base import ConfigError, StrictModel

__all__ = ["Preconditions", "Runbook", "load_runbook", "load_runbooks", "SECTIONS"]

SECTIONS = ("Meaning", "Impact", "Diagnosis", "Mitigation")
_FRONT = re.compile(r"\A---\n(.*?)\n---\n(.*)\Z", re.S)


class Preconditions(StrictModel):
    min_labelled_rows: PositiveInt | None = None
    inputs_valid: bool = False
    promoted_within_windows: PositiveInt | None = None
    previous_champion: bool = False


class Runbook(StrictModel):
    alert: str = Field(pattern=r"^Viops[A-Za-z0-9]+$")
    severity: Literal["page", "ticket"]
    action: Literal["retrain", "rollback", "page", "ticket", "canary_rollback"]
    preconditions: Preconditions = Preconditions()
    cooldown: PositiveInt = 1
    page_after_windows: PositiveInt | None = None
    title: str
    path: str = ""


def load_runbook(path: str | Path) -> Runbook:
    """Parse and check one runbook. A file read before with the same text is not parsed again (a monitor in a
    long-lived worker reads every runbook for every window); an edited one is.

    Raises:
        ConfigError: no front matter, an invalid key, a file name that is not ``<alert>.md``, or a missing section.
    """
    path = Path(path)
    return _parse(path, path.read_text())


@functools.lru_cache(maxsize=256)
def _parse(path: Path, text: str) -> Runbook:
    match = _FRONT.match(text)
    if not match:
        raise ConfigError(f"runbook {path}: no YAML front matter between '---' lines at the top")
    try:
        front = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"runbook {path}: front matter is not valid YAML: {exc}") from None
    body = match.group(2)
    title = next((line[2:].strip() for line in body.splitlines() if line.startswith("# ")), "")
    try:
        runbook = Runbook.model_validate({**front, "title": title, "path": str(path)})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"runbook {path}: {problems}") from None
    if path.stem != runbook.alert:
        raise ConfigError(f"runbook {path}: file name must be {runbook.alert}.md (its alert)")
    missing = [s for s in SECTIONS if not re.search(rf"^## {s}\b", body, re.M)]
    if missing:
        raise ConfigError(f"runbook {path}: missing section(s) {missing}")
    return runbook


def load_runbooks(directory: str | Path) -> dict[str, Runbook]:
    """Every runbook in ``directory`` (``*.md`` except README.md), by alert name."""
    return {rb.alert: rb for rb in (load_runbook(p) for p in sorted(Path(directory).glob("*.md"))
                                    if p.name != "README.md")}
