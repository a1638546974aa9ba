"""Spreading per-tensor work over processes on one machine (``--workers N``).

Workers are forked, so they share the parent's open checkpoint (reads are ``pread``s or views
on a read-only map, safe to share) and its traced model, and nothing is pickled on the way in
but an index. Each worker runs torch on one thread: a forked child must not touch the
parent's OpenMP pool (the rule PyTorch's own DataLoader workers follow), and the processes
themselves are the parallelism. Tensors are handed out largest first, one at a time, so the
work balances; results come back in input order.
"""

from __future__ import annotations

import copyreg
import ctypes
import gc
import io
import multiprocessing
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from initscope.environment import collector_held_by_cli, release_collector
from initscope.stats import fused

if TYPE_CHECKING:
    from initscope.parallel.distributed import Group

__all__ = [
    "Advance",
    "Batched",
    "ProgressFn",
    "auto_workers",
    "batches",
    "parallel_map",
    "spread",
    "ticker",
]

T = TypeVar("T")

# Below this much data, starting processes costs more than it saves.
MIN_PARALLEL_BYTES = 64 * 2**20
# Or this many tensors, whatever their size: a forked worker costs a few tens of ms.
MIN_PARALLEL_TENSORS = 1000
# Small tasks go to a worker up to this many at a time (and at most a sixteenth of a worker's
# share, see batches). Each hand-out has a fixed cost in both processes (pickling, the pipe,
# the pool's threads in the parent): with 16 at a time, 20,000 tiny tensors on 2 workers took
# 2.2 s and 1.2 s of the parent's CPU, with 256 1.6 s and 0.7 s; 3,088 expert matrices 0.9 s
# and 0.7 s (measured, build_report).
BATCH = 256

_TASK: Callable[[int], Any] | None = None


@dataclass(frozen=True)
class Batched(Generic[T]):
    """Per-index work that does several indices in one call, ``many(ids)`` giving their
    results in order (a report identifies a batch of tensors together); as a task it is
    ``task(i) = many([i])[0]``, and the maps below hand it up to BATCH indices at a time."""

    many: Callable[[Sequence[int]], list[T]]

    def __call__(self, i: int) -> T:
        return self.many([i])[0]

    def over(self, ids: Sequence[int]) -> Batched[T]:
        """The same work on ``ids[j]`` for each index j given (a rank's share)."""
        return Batched(lambda js: self.many([ids[j] for j in js]))


def _init() -> None:
    torch.set_num_threads(1)


def _tensor(data: bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(data, dtype=dtype).reshape(shape)


def _reduce_tensor(t: torch.Tensor) -> Any:
    if t.device.type != "cpu" or t.layout != torch.strided or t.is_quantized or t.requires_grad:
        return t.__reduce_ex__(pickle.HIGHEST_PROTOCOL)  # type: ignore[no-untyped-call]
    # resolve_*: a lazily conjugated or negated view's bytes are those of its base.
    t = t.resolve_conj().resolve_neg().contiguous()
    raw = ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()) if t.numel() else b""
    return _tensor, (bytearray(raw), t.dtype, tuple(t.shape))


def _dumps(value: Any) -> bytes:
    """Pickle a result by value. multiprocessing's own pickler (torch registers reducers with
    it) moves every tensor through a shared-memory file, 5 ms each, measured, and plain
    pickle goes through torch.save, 0.15 ms; the raw bytes of a report's 32 KiB sample cost a
    few microseconds."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {**copyreg.dispatch_table, torch.Tensor: _reduce_tensor}
    pickler.dump(value)
    return out.getvalue()


def _run(task: Callable[[int], T], batch: Sequence[int]) -> list[T]:
    if isinstance(task, Batched):
        values: list[T] = task.many(batch)
        return values
    return [task(i) for i in batch]


def _call(batch: list[int]) -> tuple[list[int], bytes]:
    assert _TASK is not None
    return batch, _dumps(_run(_TASK, batch))


def can_fork() -> bool:
    # fork is the start method that shares the open files; macOS and Windows lack it or
    # make it unsafe with threads.
    return sys.platform.startswith("linux")


def auto_workers(total_bytes: int, largest_bytes: int, max_memory: int, count: int = 0) -> int:
    """The default: one per core, as many as the memory budget holds of the largest
    tensor, and one when there is too little work to share: under MIN_PARALLEL_BYTES of
    data in fewer than MIN_PARALLEL_TENSORS tensors (each costs a fixed ~0.2 ms besides
    its bytes, so 20,000 tiny tensors are seconds of work)."""
    little = total_bytes < MIN_PARALLEL_BYTES and count < MIN_PARALLEL_TENSORS
    if little or not can_fork():
        return 1
    fit = max(1, max_memory // max(largest_bytes, 1))
    return max(1, min(os.cpu_count() or 1, fit))


@contextmanager
def _settled() -> Iterator[None]:
    """The objects alive before a run (torch's modules and functions: some 170,000) are
    left out of the garbage collector's full collections while it lasts, and out of the
    forked workers' copies of memory. A full collection that scans them takes about 0.2 s,
    and the objects a run creates trigger one or two. They come back to the collector when
    the run ends, except in the CLI, which ends soon after: there, given back, they cost a
    full collection while the report is rendered (0.4 s of `report` on 3,088 tensors)."""
    release_collector()
    gc.freeze()
    try:
        yield
    finally:
        if not collector_held_by_cli():
            gc.unfreeze()


def parallel_map(
    task: Callable[[int], T],
    weights: Sequence[int],
    workers: int,
    tick: Callable[[int], None] | None = None,
) -> list[T]:
    """``[task(i) for i in range(len(weights))]``, over ``workers`` forked processes when
    there are several, largest weight first; ``tick(i)`` after each."""
    with _settled():
        return _map(task, weights, workers, tick)


def _map(
    task: Callable[[int], T],
    weights: Sequence[int],
    workers: int,
    tick: Callable[[int], None] | None,
) -> list[T]:
    count = len(weights)
    if workers <= 1 or count < 2 or not can_fork():
        out: list[T] = []
        # in order, in the batches a worker would get: the progress moves at least 16 times
        groups = batches(range(count), weights, 1) if isinstance(task, Batched) else None
        for batch in groups or ([i] for i in range(count)):
            out.extend(_run(task, batch))
            if tick is not None:
                for i in batch:
                    tick(i)
        return out
    global _TASK
    _TASK = task
    fused.available()  # load the kernel once here, not in each forked worker
    results: list[Any] = [None] * count
    order = sorted(range(count), key=lambda i: -weights[i])
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, count), _init) as pool:
            for batch, value in pool.imap_unordered(_call, batches(order, weights, workers)):
                for i, result in zip(batch, pickle.loads(value), strict=True):
                    results[i] = result
                    if tick is not None:
                        tick(i)
    finally:
        _TASK = None
    return results


def batches(order: Sequence[int], weights: Sequence[int], workers: int) -> list[list[int]]:
    """``order`` cut into hand-outs of up to BATCH tasks each, none heavier than a
    sixteenth of a worker's share unless it is one task alone: a large tensor goes out by
    itself, as before, and the work still balances at the end."""
    limit = sum(weights) / (16 * workers)
    out: list[list[int]] = []
    weight = 0
    for i in order:
        if out and len(out[-1]) < BATCH and weight + weights[i] <= limit:
            out[-1].append(i)
            weight += weights[i]
        else:
            out.append([i])
            weight = weights[i]
    return out


@dataclass(frozen=True)
class Advance:
    """Where a run stands, after each tensor: what a progress bar shows."""

    done_bytes: int
    total_bytes: int
    done_tensors: int
    total_tensors: int


# Called after each tensor (and once at the start) with where the run stands.
ProgressFn = Callable[[Advance], None]


def ticker(progress: ProgressFn | None, nbytes: Sequence[int]) -> Callable[[int], None]:
    """``tick(i)``: item ``i`` (of ``nbytes[i]`` bytes) is done; reported to ``progress``,
    which first hears the totals with nothing done."""
    total = sum(nbytes)
    done = count = 0
    if progress is not None:
        progress(Advance(0, total, 0, len(nbytes)))

    def tick(i: int) -> None:
        nonlocal done, count
        done += nbytes[i]
        count += 1
        if progress is not None:
            progress(Advance(done, total, count, len(nbytes)))

    return tick


def spread(
    task: Callable[[int], T],
    sizes: Sequence[int],
    *,
    workers: int | None,
    max_memory: int,
    nbytes: Sequence[int],
    group: Group | None = None,
    progress: ProgressFn | None = None,
) -> list[T]:
    """``task(i)`` for every tensor (``sizes`` in elements, ``nbytes`` in bytes read): over
    the ranks of a torchrun job when ``group`` has several, and over ``workers`` processes on
    each (None: see :func:`auto_workers`). The progress is this process's share: on a rank,
    the tensors that rank reads."""

    def local(part_task: Callable[[int], T], ids: Sequence[int]) -> list[T]:
        part = [nbytes[i] for i in ids]
        n = workers
        if n is None:
            n = auto_workers(sum(part), max(part, default=0), max_memory, len(part))
        return parallel_map(part_task, [sizes[i] for i in ids], n, ticker(progress, part))

    if group is None or group.world == 1:
        return local(task, range(len(sizes)))
    from initscope.parallel.distributed import map_over_ranks

    return map_over_ranks(task, sizes, group, local)
