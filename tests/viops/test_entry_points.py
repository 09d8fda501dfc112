"""``viops`` (the console script), ``python -m viops`` and the parser are one command with one list of commands."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

from viops.cli import build_parser

COMMANDS = ["prepare", "train", "runs", "register", "conformance", "compare", "diagnose", "evaluate", "promote",
            "rollback", "score", "verify", "serve", "keys", "deploy", "simulate", "monitor", "alerts", "dashboards",
            "alert-receiver", "stack"]


def _commands(help_text: str) -> list[str]:
    """The command names listed under "positional arguments" of a ``--help`` text."""
    return re.findall(r"^    ([a-z][a-z-]*)\b", help_text, re.M)


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)


def test_every_entry_point_lists_the_same_commands():
    module = _run(sys.executable, "-m", "viops", "--help")
    script = _run(str(Path(sys.executable).parent / "viops"), "--help")
    assert module.returncode == script.returncode == 0, module.stderr + script.stderr
    assert _commands(module.stdout) == _commands(script.stdout) == _commands(build_parser().format_help()) == COMMANDS


def test_version_is_the_installed_distributions():
    out = _run(sys.executable, "-m", "viops", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"viops {version('viops')}"


def test_an_unknown_command_is_a_usage_error_naming_the_choices():
    out = _run(sys.executable, "-m", "viops", "trian")
    assert out.returncode == 2 and "invalid choice: 'trian'" in out.stderr and "train" in out.stderr


def test_every_command_has_examples_and_every_option_a_help_text():
    """``viops <command> --help`` ends with examples that use that command, and no option is left unexplained."""
    import argparse

    from viops.cli import EXAMPLES

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        text = command.format_help()
        examples = text.partition("\nexamples:\n")[2]
        assert examples and all(f"viops {name}" in line for line in EXAMPLES[name]), name
        assert all(line in examples for line in EXAMPLES[name]), name
        unexplained = [a.option_strings for a in command._actions if a.option_strings and not a.help]
        assert unexplained == [], (name, unexplained)


def test_commands_that_talk_to_no_tracking_server_do_not_import_mlflow_or_torch(tmp_path):
    """``alerts``, ``dashboards`` and ``keys`` run without MLflow's and PyTorch's imports (seconds of a command that
    takes a fraction of one); a failure of theirs still gets its documented line and exit code."""
    script = textwrap.dedent(f"""
        import sys
        from viops.cli import main
        codes = [main(["alerts", "--out", {str(tmp_path / "alerts.yml")!r}]),
                 main(["dashboards", "--out", {str(tmp_path / "dashboards")!r}]),
                 main(["keys", "generate", "--out", {str(tmp_path / "keys")!r}])]
        print(codes, "mlflow" in sys.modules, "torch" in sys.modules)
        print(main(["alerts", "--slo", {str(tmp_path / "missing.yaml")!r}]), "mlflow" in sys.modules)
    """)
    out = _run(sys.executable, "-c", script)
    assert out.returncode == 0, out.stderr
    ran, failed = out.stdout.splitlines()[-2:]
    assert ran == "[0, 0, 0] False False", out.stdout
    assert "groups:" in (tmp_path / "alerts.yml").read_text() and list((tmp_path / "dashboards").glob("*.json"))
    assert failed == "2 True"  # the failure's classes were imported to say what it was
    missing = tmp_path / "missing.yaml"
    assert out.stderr.strip().splitlines()[-1] == f"viops alerts: error: SLO file not found: {missing}"
