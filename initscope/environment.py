"""Process settings initscope's speed depends on, made when ``initscope`` is imported, so the
Python API gets them as the CLI does. Each only fills in what the user has not set, and only
takes effect when initscope is imported before torch (torch reads them when it starts)."""

from __future__ import annotations

import os
import warnings

__all__ = [
    "tune_environment",
]


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
    # torch warns on import when numpy is absent; initscope never needs numpy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
