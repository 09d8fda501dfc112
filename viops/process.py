"""Interpreter settings for a process that runs one viops command (or the demo) and exits: the garbage collector, and
the chunk of the frame stack the command runs in.

A viops command imports torch, MLflow and, depending on the command, Lightning or Evidently: some 700,000
long-lived objects. CPython's cyclic collector (3.11) rescans every tracked object each time the old generation has
grown by a quarter, so the imports alone set off about ten full collections (~1.9 s of a `viops monitor`'s 9 s on
the 2-core machine), and the interpreter's shutdown rescans the whole heap several times more (~2 s) after the
command has finished. docs/benchmarks.md has the measurements.

:func:`run_as_process` makes full collections ten times rarer (young objects, where nearly all garbage cycles die,
are collected as often as before) and, once the command has returned, freezes the heap so that shutdown does not
rescan it. It also runs the command in a chunk of CPython's frame stack large enough for all of its calls: with the
16-KiB chunks CPython 3.11 starts with, a `viops train` mapped and unmapped 55,000 of them (0.3 s of CPU) and a
`viops monitor` 156,000 (1.4 s).
Only the entry points (``viops``, ``python -m viops``, ``python -m viops.demo``) call it: code that calls
:func:`viops.cli.main` in a longer-lived process keeps that process's own settings. The test processes run their
session under :func:`in_one_stack_chunk` too (tests/conftest.py).
"""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Callable

__all__ = ["FULL_COLLECTION_EVERY", "in_one_stack_chunk", "run_as_process"]

#: Young-generation collections between full collections (CPython's default is 10).
FULL_COLLECTION_EVERY = 100
#: Value-stack slots (8 bytes each) reserved by the frame a command runs under: 512 KiB, so CPython gives that frame
#: a 1 MiB chunk of the frame stack, and the command's own frames the other half (see in_one_stack_chunk).
COMMAND_FRAME_SLOTS = 1 << 16


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


def _call(main: Callable[[], int | None]) -> int | None:
    return main()


def in_one_stack_chunk(main: Callable[[], int | None]) -> int | None:
    """``main()``, called from a frame that gives the command a data-stack chunk of its own, 1 MiB instead of 16 KiB.

    CPython keeps the frames of Python calls on a per-thread stack of chunks, 16 KiB each. A call that finds no room
    in the current chunk maps a new one (``mmap``), and its return unmaps it, so code that calls a function from
    where the stack is just short of a chunk's end maps and unmaps a chunk at every call (CPython gh-142183; later
    versions keep a spare chunk). Importing a command's libraries hits such edges all the time. This frame reserves
    :data:`COMMAND_FRAME_SLOTS` value-stack slots, which CPython can only place in a chunk of its own, sized to a
    power of two: the command's frames run in the half of that chunk left after the reservation, and reach its
    end only past a depth of several thousand calls.
    """
    code = _call.__code__.replace(co_stacksize=COMMAND_FRAME_SLOTS)
    return types.FunctionType(code, globals())(main)
