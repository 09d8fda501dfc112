"""One exit-code table for every command (README.md#exit-codes), and the codes no other test reaches from the
command line: 3 (training diverged), 5 (busy) and ``monitor --fail-on``. Codes 1, 2, 4 and 6 are asserted where
their faults are drilled (tests/faults/, tests/pipelines/registry/test_gate_and_promotion.py)."""

from __future__ import annotations

import re

import pytest
import torch
from mlflow import MlflowClient

from models.blr import BayesianLinearRegression
from pipelines.registry import promotion
from pipelines.registry.lease import TOKEN_ENV, hold
from tests.conftest import REPO
from tests.faults.conftest import DOCUMENTED_EXIT_CODES
from viops.cli import main
from viops.commands.common import EXIT_BUSY, EXIT_CODES, EXIT_REJECTED, EXIT_TRAINING_FAILED
from viops.commands.monitoring import _fail_on


def _readme_table() -> dict[int, str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Exit codes"):]
    section = section[:section.index("\n#")] if "\n#" in section else section
    return {int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M)}


def test_the_readme_table_is_the_table_the_commands_use():
    table = _readme_table()
    assert sorted(table) == sorted(EXIT_CODES) == sorted(DOCUMENTED_EXIT_CODES)
    assert table[EXIT_REJECTED].startswith("a negative verdict") and table[EXIT_BUSY].startswith("busy")
    assert table[EXIT_TRAINING_FAILED].startswith("training diverged")


def test_diverged_training_exits_3_naming_the_failed_run(example_dir, tracking_uri, monkeypatch, capsys):
    original = BayesianLinearRegression.log_likelihood
    calls = {"n": 0}

    def poisoned(self, z, x, y):  # the likelihood turns NaN after 30 evaluations
        calls["n"] += 1
        out = original(self, z, x, y)
        return out * torch.nan if calls["n"] > 30 else out

    monkeypatch.setattr(BayesianLinearRegression, "log_likelihood", poisoned)
    code = main(["train", "--config", str(example_dir / "blr_csv.yaml"), "--set", "train.max_epochs=20",
                 "--set", "train.accelerator=cpu", "--tracking-uri", tracking_uri])  # a graph replay would not call it
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == EXIT_TRAINING_FAILED
    assert err.startswith("viops train: training failed: non-finite") and "marked FAILED" in err
    assert MlflowClient(tracking_uri, tracking_uri).search_model_versions("name='blr-example'") == []


def test_a_promotion_while_another_operation_holds_the_lease_exits_5(tracking_uri, monkeypatch, capsys):
    client = MlflowClient(tracking_uri, tracking_uri)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setattr(promotion, "LEASE_WAIT_SECONDS", 0.5)
    with hold(client, "m", "retrain", incident="abc123"):
        monkeypatch.delenv(TOKEN_ENV)  # the promotion is another process: it does not carry the token
        code = main(["promote", "--model", "m", "--version", "1", "--tracking-uri", tracking_uri])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BUSY
    assert re.fullmatch(r"viops promote: busy: a promote of m cannot start: already in progress \(retrain by .* "
                        r"since .*, incident abc123\)", err), err


@pytest.mark.parametrize("level, action, code", [
    (None, "rollback", 0), ("page", "none", 0), ("page", "ticket", 0), ("page", "page", 1), ("page", "retrain", 1),
    ("ticket", "ticket", 1), ("rollback", "retrain", 0), ("rollback", "rollback", 1),
])
def test_monitor_fail_on_exits_1_at_that_decision_or_a_stronger_one(level, action, code):
    assert _fail_on(level, action) == code
