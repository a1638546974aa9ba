"""Process settings initscope's speed depends on, made when ``initscope`` is imported, so the
Python API gets them as the CLI does. Each only fills in what the user has not set, and only
takes effect when initscope is imported before torch (torch reads them when it starts)."""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "collector_held_by_cli",
    "collector_paused",
    "end_of_cli",
    "hold_collector",
    "release_collector",
    "tune_environment",
]

# Whether hold_collector turned the cycle collector off (and so release_collector may turn it
# back on): a program of the user's keeps whatever setting it chose. And whether it did so in
# this process, the CLI's, whose start-up objects may stay frozen till it ends.
_HELD = [False]
_CLI = [False]


def tune_environment() -> None:
    """Set the defaults below in ``os.environ`` where the user has not."""
    # Let torch's CPU allocator ask for transparent huge pages for its large blocks (c10's
    # THP_MEM_ALLOC_ENABLE, c10/core/alloc_cpu.cpp): each tensor read from a checkpoint is
    # fresh memory, and its 4 KiB page faults are most of the reading time
    # (docs/performance.md).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    # OpenMP's idle threads spin for a while after each parallel torch op (libgomp's default
    # GOMP_SPINCOUNT) on the cores the fused kernel's threads need, between identifications.
    # initscope's own parallelism is the kernel's threads and its processes.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # torch imports numpy where it is installed, and numpy's OpenBLAS starts a thread per
    # core that spins for a while (~0.1 s of a core, measured on 2 cores) though initscope
    # never calls it: those cycles are taken from the forked workers.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # torch warns on import when numpy is absent; initscope never needs numpy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


def hold_collector() -> None:
    """For the CLI, before it imports anything: no cycle collection while torch and initscope
    import. They create some 170,000 long-lived objects, and the collector's full passes over
    them during start-up cost about 0.25 s of every command (median of 7, `check` of a
    one-tensor file: 1.96 s with them, 1.68 s without) and free nothing."""
    if gc.isenabled():
        gc.disable()
        _HELD[0] = _CLI[0] = True


def collector_held_by_cli() -> bool:
    """Whether this process is the CLI's, which held the collector through its start-up
    (:func:`hold_collector`) and ends when its command does."""
    return _CLI[0]


def release_collector() -> None:
    """Once a command has imported what it needs (a TARGET is about to be opened, or a run
    starts): what exists is frozen out of later collections, and the collector is on again.
    Nothing unless :func:`hold_collector` held it."""
    if _HELD[0]:
        _HELD[0] = False
        gc.freeze()
        gc.enable()


def end_of_cli() -> None:
    """The CLI's command is done: the collector is on again, and later runs in this process
    (``main`` called again, as tests do) give their objects back as a library's do. What is
    frozen stays so: the process ends, and Python's last collection at exit would only scan
    it (the cost kept out of every run's end, :func:`collector_held_by_cli`)."""
    release_collector()
    _CLI[0] = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cycle collection inside, for work that makes many objects and no garbage cycles
    (a report's JSON): the collector's full passes rescan every object alive, the report
    included, as those objects accumulate. Rendering 20,000 tensors' JSON spent 0.17-0.22 s
    of its 0.6 s in them. The collector's state is as it was afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
