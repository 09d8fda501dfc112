"""A chunk of CPython's frame stack of its own for a process's main work: a viops command, the telemetry writer, a
test session.

CPython 3.11 keeps the frames of Python calls on a per-thread stack of chunks, 16 KiB each. A call that finds no room
in the current chunk maps a new one (``mmap``), and its return unmaps it, so code that calls a function from where
the stack is just short of a chunk's end maps and unmaps a chunk at every call (CPython gh-142183; later versions
keep a spare chunk). Importing torch's, MLflow's and Evidently's modules hits such edges all the time: a
``viops train`` mapped and unmapped 55,000 chunks, a ``viops monitor`` 156,000 and a telemetry writer 10,000, at
8.7 µs each (docs/benchmarks.md).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TypeVar

__all__ = ["FRAME_SLOTS", "in_one_stack_chunk"]

T = TypeVar("T")

#: Value-stack slots (8 bytes each) reserved by the frame that :func:`in_one_stack_chunk` calls from: 512 KiB, so
#: CPython gives that frame a 1-MiB chunk of the frame stack, and the frames of the work it calls the other half.
FRAME_SLOTS = 1 << 16


def _call(main: Callable[[], T]) -> T:
    return main()


def in_one_stack_chunk(main: Callable[[], T]) -> T:
    """``main()``, called from a frame that gives it a frame-stack chunk of its own, 1 MiB instead of 16 KiB.

    The calling frame reserves :data:`FRAME_SLOTS` value-stack slots, which CPython can only place in a chunk of its
    own, sized to a power of two: the frames of ``main`` run in the half of that chunk left after the reservation,
    and reach its end only past a depth of several thousand calls.
    """
    code = _call.__code__.replace(co_stacksize=FRAME_SLOTS)
    return types.FunctionType(code, globals())(main)
