"""A viops command's process: full collections are rare, its heap is frozen once the command returns, and its calls do
not map and unmap a chunk of CPython's frame stack each."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.pipelines.test_frame_stack import WORST_DEPTH_FAULTS
from viops.process import FULL_COLLECTION_EVERY

#: Prints, at exit, the old generation's threshold and whether the heap was frozen (atexit runs after sys.exit).
REPORT_AT_EXIT = """
import atexit, gc, sys
atexit.register(lambda: print("gc", gc.get_threshold()[2], gc.get_freeze_count() > 0))
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(REPORT_AT_EXIT + code)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_run_as_process_exits_with_the_commands_code_after_freezing_the_heap():
    out = _run("from viops.process import run_as_process\nrun_as_process(lambda: 3)\n")
    assert out.returncode == 3, out.stderr
    assert out.stdout.split() == ["gc", str(FULL_COLLECTION_EVERY), "True"]


def test_the_heap_is_frozen_when_the_command_raises_too():
    out = _run("from viops.process import run_as_process\nrun_as_process(lambda: 1 / 0)\n")
    assert out.returncode == 1 and "ZeroDivisionError" in out.stderr
    assert out.stdout.split() == ["gc", str(FULL_COLLECTION_EVERY), "True"]


def test_python_m_viops_runs_the_command_as_its_own_process():
    out = _run("import runpy\nsys.argv = ['viops', '--version']\nrunpy.run_module('viops', run_name='__main__')\n")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("viops ") and lines[-1] == f"gc {FULL_COLLECTION_EVERY} True"


def test_calling_main_in_a_process_leaves_that_processs_collector_alone():
    out = _run("from viops.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "gc 10 False"  # CPython's default, and nothing frozen


def test_a_commands_calls_stay_in_one_chunk_of_the_frame_stack():
    out = _run(WORST_DEPTH_FAULTS + "print('bare', worst_depth_faults())\n"
               "from viops.process import run_as_process\n"
               "run_as_process(lambda: print('command', worst_depth_faults()))\n")
    assert out.returncode == 0, out.stderr
    faults = dict(line.split() for line in out.stdout.splitlines() if not line.startswith("gc"))
    if sys.version_info < (3, 13):  # where CPython maps a chunk per call at a chunk's edge (gh-142183)
        assert int(faults["bare"]) >= 450, faults  # the probe sees it outside a command
    assert int(faults["command"]) < 50, faults
