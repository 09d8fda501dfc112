"""pipelines/frame_stack.py: work called through ``in_one_stack_chunk`` does not map and unmap a chunk of CPython's
frame stack per call, wherever it starts; the test processes run their tests that way (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: The most page faults that 500 calls of a function cost at any of 400 depths of recursion. A call that needs a new
#: chunk of the frame stack maps it and touches it (a fault); its return unmaps it. The called function reserves 100
#: value-stack slots and each level of recursion takes about 12, so some depth in every chunk leaves it less room
#: than the call needs, and 400 levels cross more than one chunk (2,048 slots each) from wherever they start.
WORST_DEPTH_FAULTS = """
import resource, types

def _leaf():
    return None

leaf = types.FunctionType(_leaf.__code__.replace(co_stacksize=100), {})

def worst_depth_faults():
    def descend(n):
        if n:
            return descend(n - 1)
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(500):
            leaf()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
    return max(descend(depth) for depth in range(400))
"""


def test_work_called_in_one_chunk_does_not_map_a_chunk_per_call():
    code = WORST_DEPTH_FAULTS + textwrap.dedent("""
        from pipelines.frame_stack import in_one_stack_chunk
        print(worst_depth_faults(), in_one_stack_chunk(worst_depth_faults))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    bare, in_one_chunk = map(int, out.stdout.split())
    if sys.version_info < (3, 13):  # where CPython maps a chunk per call at a chunk's edge (gh-142183)
        assert bare >= 450, bare  # the probe sees it outside the chunk
    assert in_one_chunk < 50, in_one_chunk


def test_the_test_processes_run_their_tests_in_one_chunk_too():
    probe: dict = {}
    exec(WORST_DEPTH_FAULTS, probe)  # in this process, under tests/conftest.py's pytest_cmdline_main
    assert probe["worst_depth_faults"]() < 50
