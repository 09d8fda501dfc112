"""The layers of docs/architecture.md, checked on the source: imports point down only, DAG files are loaded only by
the composition root, and no module outgrows one concept (~300 lines)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

#: Each layer may import the layers after it in this list, never the ones before.
LAYERS = ["viops", "dags", "monitoring", "pipelines", "models"]
MAX_LINES = 300


def _modules(layer: str) -> list[Path]:
    return sorted(p for p in (REPO / layer).rglob("*.py") if "__pycache__" not in p.parts)


def _imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in the module, at any depth (imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down_only(layer):
    above = set(LAYERS[: LAYERS.index(layer)])
    wrong = {str(p.relative_to(REPO)): sorted(_imported_packages(p) & above) for p in _modules(layer)}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_models_know_nothing_of_the_platform():
    platform = {"pytorch_lightning", "lightning", "mlflow", "airflow", "evidently", "pandas", "prometheus_client"}
    wrong = {str(p.relative_to(REPO)): sorted(_imported_packages(p) & platform) for p in _modules("models")}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_no_layer_below_the_root_names_a_command_module_or_loads_dags():
    """Below ``viops/`` no module names an upper module even as a string, and none loads DAG files."""
    forbidden = re.compile(r"\b(monitoring\.cli|pipelines\.cli|DagBag|viops\.cli|viops\.demo|viops\.commands)\b")
    hits = [f"{p.relative_to(REPO)}: {match.group(0)}" for layer in ("dags", "monitoring", "pipelines", "models")
            for p in _modules(layer) for match in forbidden.finditer(p.read_text())]
    assert hits == []


def test_no_module_outgrows_one_concept():
    long = {str(p.relative_to(REPO)): n for layer in LAYERS for p in _modules(layer)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checker_sees_an_upward_import(tmp_path):
    """The direction test must be able to fail: a function-level import of a higher layer is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from monitoring.windows import Window\n    import viops.cli\n")
    assert _imported_packages(module) == {"monitoring", "viops"}


def test_every_folder_of_code_is_a_package():
    """setuptools installs only folders with an ``__init__.py``: a folder without one would be missing from a wheel."""
    folders = {p.parent for layer in ("viops", "pipelines", "monitoring", "models") for p in _modules(layer)}
    assert sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").exists()) == []


def test_the_long_modules_that_start_first_exist():
    from tests.conftest import LONG_MODULES, REPO

    assert len(set(LONG_MODULES)) == len(LONG_MODULES)
    assert [m for m in LONG_MODULES if not (REPO / m).is_file()] == []
