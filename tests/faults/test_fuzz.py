"""Property-based fuzzing (hypothesis) of the two boundaries where users' files enter viops: training configs with
their data (``viops prepare`` validates both exactly as ``viops train`` does before a run exists), and production
windows (the monitor's checks, SLOs and decision). Over 1,000 generated cases per run, asserting: no traceback, an
exit code from the documented set, and for a window that breaks the training schema a page, never an automated
change; the champion and the registered versions never change."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from tests.conftest import REPO
from tests.faults.conftest import DOCUMENTED_EXIT_CODES
from viops.cli import main


def fuzz(examples: int) -> settings:
    """Seeded (the same cases in every run, so a failure reproduces), no per-case deadline."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --- configs and their data -----------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["", "..", "../x", "a/b", "has space", "y", "x0", "mean_field", "auto", "1e308"]))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=6), scalars, max_size=3))
KEYS = ["name", "data.target", "data.features", "data.path", "data.sklearn", "data.standardize",
        "data.split.validation", "data.split.test", "model.kind", "model.prior", "model.noise", "guide.family",
        "guide.precondition", "train.batch_size", "train.max_epochs", "train.lr", "train.num_particles",
        "train.devices", "train.strategy", "registry.model_name", "tracking.experiment", "gate.coverage_90", "bogus"]


def _tables(root: Path) -> list[str]:
    """Data files a user might point a config at: good, constant, repeated columns, text, bool, inf, huge, empty,
    header only, not UTF-8, not a table."""
    rng = np.random.default_rng(0)
    good = pd.DataFrame(rng.normal(size=(200, 3)), columns=["x0", "x1", "x2"])
    good["y"] = good.x0 - good.x2 + rng.normal(size=200)
    files = {"good.csv": good, "const_y.csv": good.assign(y=1.0), "const_x.csv": good.assign(x1=0.0),
             "text.csv": good.assign(x1=good.x1.astype(object).where(good.index != 3, "oops")),
             "bool.csv": good.assign(x2=good.x2 > 0), "inf.csv": good.assign(x0=good.x0.where(good.index != 9, np.inf)),
             "huge.csv": good.assign(x0=good.x0.where(good.index != 9, 1e308)), "empty.csv": good.head(0),
             "tiny.csv": good.head(3)}
    for name, frame in files.items():
        frame.to_csv(root / name, index=False)
    (root / "dup.csv").write_text("x0,x0,y\n1,2,3\n4,5,6\n7,8,9\n")
    (root / "latin1.csv").write_bytes("x0,y\n1,caf\xe9\n".encode("latin-1"))
    (root / "nothing.csv").write_text("")
    (root / "table.parquet").write_bytes(b"PAR1 not really")
    good.to_parquet(root / "good.parquet", index=False)
    return [*files, "dup.csv", "latin1.csv", "nothing.csv", "table.parquet", "good.parquet", "missing.csv"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-data")
    return root, _tables(root)


def _set(tree: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        child = tree.get(key)
        tree[key] = child = child if isinstance(child, dict) else {}
        tree = child
    tree[last] = value


@fuzz(600)
@given(data=st.data())
def test_fuzzed_configs_and_data_exit_0_or_2_without_a_traceback(tables, data, tmp_path_factory):
    root, files = tables
    config = {"name": "fuzz", "data": {"path": str(root / data.draw(st.sampled_from(files))), "target": "y"}}
    for key in data.draw(st.lists(st.sampled_from(KEYS), max_size=4, unique=True)):
        _set(config, key, data.draw(values))
    text = data.draw(st.sampled_from(["yaml", "yaml", "yaml", "garbage", "latin1"]))
    path = root / "fuzz.yaml"
    if text == "yaml":
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
    elif text == "garbage":
        path.write_text(data.draw(st.text(max_size=40)))
    else:
        path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["prepare", "--config", str(path), "--out", str(tmp_path_factory.getbasetemp() / "fuzz-out")])
    assert code in (0, 2), err.getvalue()
    event(f"exit {code}")
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("viops prepare: error: "), err.getvalue()


# --- windows ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def watched(example):
    """The example's champion, loaded once, with the shipped checks, SLOs and runbooks."""
    from monitoring.checks.champion import load_champion
    from monitoring.checks.config import load_checks_config
    from monitoring.runbooks import load_runbooks
    from monitoring.slo import load_slos

    root, uri = example
    checks = load_checks_config(REPO / "configs" / "monitoring.yaml")
    champion = load_champion(MlflowClient(uri, uri), "blr-example", tracking_uri=uri, checks=checks)
    return root, uri, champion, checks, load_slos(REPO / "configs" / "slo.yaml"), load_runbooks(REPO / "runbooks")


cells = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12), st.booleans(),
                  st.none(), st.text(max_size=5), st.sampled_from([1e308, -1e308, 5e-324, 0.0, "1.5", "inf", "NaN"]))


@st.composite
def windows(draw, max_rows: int = 60):
    """A window as a producer might send it: some of x0..x2 and y (missing, extra or renamed columns), each a
    well-typed column, a bool column, or cells of any type."""
    rows = draw(st.integers(0, max_rows))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    frame = {}
    if draw(st.integers(0, 4)):  # mostly every feature, to reach the checks; sometimes any columns at all
        columns = ["x0", "x1", "x2", *draw(st.lists(st.sampled_from(["y", "extra"]), max_size=2, unique=True))]
    else:
        columns = draw(st.lists(st.sampled_from(["x0", "x1", "x2", "y", "extra"]), min_size=1, max_size=5,
                                unique=True))
    for column in columns:
        kind = draw(st.sampled_from(["normal", "normal", "normal", "bool", "int", "cells", "shifted"]))
        if kind == "normal":
            frame[column] = rng.normal(size=rows)
        elif kind == "shifted":
            frame[column] = rng.normal(size=rows) + draw(st.floats(-1e9, 1e9))
        elif kind == "bool":
            frame[column] = rng.normal(size=rows) > 0
        elif kind == "int":
            frame[column] = rng.integers(-5, 5, size=rows)
        else:
            frame[column] = pd.Series([draw(cells) for _ in range(rows)], dtype=object)
    return pd.DataFrame(frame)


def _schema_ok(frame: pd.DataFrame, champion) -> bool:
    """Whether every feature is numeric (not bool) with values within the reference's bound: the property's oracle,
    computed independently of the code under test."""
    for column in champion.features:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            return False
        numbers = pd.to_numeric(values.map(lambda v: math.nan if isinstance(v, bool) else v), errors="coerce")
        if (values.notna() & numbers.isna()).any():
            return False
        ref = champion.reference[column]
        finite = numbers[np.isfinite(numbers)]
        if (np.abs(finite - ref.mean()) > 1e6 * max(ref.std(ddof=0), 1e-6 * max(abs(ref.mean()), 1.0))).any():
            return False
    return True


@fuzz(500)
@given(frame=windows())
def test_fuzzed_windows_are_checked_and_decided_without_a_traceback(watched, frame):
    from monitoring.decision import decide
    from monitoring.monitor import check_window
    from monitoring.slo import evaluate_slos
    from monitoring.windows import Window
    from pipelines.tables import DataError

    root, _, champion, checks, slos, runbooks = watched
    window = Window("fuzz", root / "fuzz.csv", frame)
    event("schema ok" if all(c in frame.columns for c in champion.features) and _schema_ok(frame, champion)
          else "schema broken")
    if any(c not in frame.columns for c in champion.features):
        event("missing feature column")
        with pytest.raises(DataError, match="window lacks feature column"):
            check_window(window, champion, checks)
        return
    report = check_window(window, champion, checks)
    statuses = evaluate_slos(slos, report)
    facts = {"labelled_rows": report.inputs.labelled_rows, "nonfinite_values": report.inputs.nonfinite_values,
             "windows_since_promotion": 10, "has_previous_champion": True}
    decision = decide(statuses, runbooks, [], facts)
    event(f"decision {decision.action}")
    assert report.inputs.finite_rows <= report.inputs.rows == len(frame)
    if not _schema_ok(frame, champion):
        assert report.inputs.schema_violations > 0 and decision.action == "page", (report.inputs, decision)
    if report.inputs.nonfinite_values:
        assert decision.action not in ("retrain", "rollback"), decision
    assert len(report.predictions) == report.inputs.finite_rows


@fuzz(20)
@given(frame=windows(max_rows=30))
def test_fuzzed_windows_through_the_command_change_nothing(watched, frame, tmp_path_factory):
    root, uri, *_ = watched
    client = MlflowClient(uri, uri)
    before = ([v.version for v in client.search_model_versions("name='blr-example'")],
              client.get_model_version_by_alias("blr-example", "champion").version)
    path = tmp_path_factory.getbasetemp() / "fuzz-window.csv"
    frame.to_csv(path, index=False)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["monitor", "--model", "blr-example", "--window", str(path), "--tracking-uri", uri, "--execute",
                     "--state-dir", str(tmp_path_factory.getbasetemp() / "fuzz-state")])
    assert code in DOCUMENTED_EXIT_CODES and code in (0, 2), err.getvalue()
    after = ([v.version for v in client.search_model_versions("name='blr-example'")],
             client.get_model_version_by_alias("blr-example", "champion").version)
    assert after == before
