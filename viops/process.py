"""Interpreter settings for a process that runs one viops command (or the demo) and exits: the garbage collector, and
the chunk of the frame stack the command runs in.

A viops command imports torch, MLflow and, depending on the command, Lightning or Evidently: some 700,000
long-lived objects. CPython's cyclic collector (3.11) rescans every tracked object each time the old generation has
grown by a quarter, so the imports alone set off about ten full collections (~1.9 s of a `viops monitor`'s 9 s on
the 2-core machine), and the interpreter's shutdown rescans the whole heap several times more (~2 s) after the
command has finished. docs/benchmarks.md has the measurements.

:func:`run_as_process` makes full collections ten times rarer (young objects, where nearly all garbage cycles die,
are collected as often as before) and, once the command has returned, freezes the heap so that shutdown does not
rescan it. It also runs the command in a chunk of CPython's frame stack large enough for all of its calls
(:func:`pipelines.frame_stack.in_one_stack_chunk`): with the 16-KiB chunks CPython 3.11 starts with, a `viops train`
mapped and unmapped 55,000 of them (0.3 s of CPU) and a `viops monitor` 156,000 (1.4 s).
Only the entry points (``viops``, ``python -m viops``, ``python -m viops.demo``) call it: code that calls
:func:`viops.cli.main` in a longer-lived process keeps that process's own settings. The telemetry writer and the test
processes run their main work in a chunk of their own too.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

from pipelines.frame_stack import in_one_stack_chunk

__all__ = ["FULL_COLLECTION_EVERY", "run_as_process"]

#: Young-generation collections between full collections (CPython's default is 10).
FULL_COLLECTION_EVERY = 100


def run_as_process(main: Callable[[], int | None]) -> None:
    """Run ``main`` as the whole life of this process, exit with its return code."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    try:
        code = in_one_stack_chunk(main)
    finally:
        # Whatever is still alive now lives until exit: moving it out of the collector's reach leaves nothing for
        # the shutdown's collections to scan. Finalizers registered with weakref.finalize and atexit still run.
        gc.freeze()
    sys.exit(code)
