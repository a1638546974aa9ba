"""One measurement of one tensor, the way report, check and diff all read it.

A TARGET's tensor comes as one of three :data:`Readable` forms, chosen by :func:`readable`:

- a :class:`~initscope.io.checkpoints.StoredTensor` (where it lies in the file), which the
  fused kernel scans from the file in small chunks, whatever its size;
- :class:`Pieces` (blocks of rows), for a tensor over ``--max-memory`` that the kernel cannot
  read: statistics from one block at a time;
- a whole ``torch.Tensor`` (a model's parameter, or a checkpoint tensor within the budget).

:func:`measure` turns any of them into a :class:`Measured`: the streaming statistics (with
their reproducible sample), the row/column lines the structure tests need, and the values
themselves when the caller asks for them and they fit.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from initscope.io.checkpoints import Checkpoint, StoredTensor, TensorInfo
from initscope.knowledge.identification import (
    MIN_ELEMENTS,
    Structure,
    row_lines,
    structure_of_rows,
)
from initscope.stats import fused
from initscope.stats.tensor import (
    DEFAULT_MAX_MEMORY,
    RunningStats,
    dense,
    file_stats,
    running_stats,
    stream_stats,
)

__all__ = [
    "Measured",
    "Pieces",
    "Readable",
    "measure",
    "readable",
    "sample_seed",
]


@dataclass(frozen=True)
class Pieces:
    """A tensor over the memory budget: its metadata and its blocks of rows, read lazily as
    (offset in elements, block)."""

    info: TensorInfo
    blocks: Iterator[tuple[int, torch.Tensor]]


Readable = torch.Tensor | StoredTensor | Pieces


@dataclass(frozen=True)
class Measured:
    """What one read of a tensor gives. ``stats`` is None for a tensor without values (on
    the meta device); ``values`` holds the values (float64 or complex, dense) only when they
    were asked for and fit the budget; ``structure`` the row/column lines read by the
    kernel (the structure tests use these when there are no values)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    numel: int
    stats: RunningStats | None
    values: torch.Tensor | None = None
    structure: Structure | None = None


def sample_seed(name: str) -> int:
    """The sample's positions depend on the name only, so reports are reproducible."""
    return zlib.crc32(name.encode())


def readable(
    ckpt: Checkpoint, key: str, budget: int = DEFAULT_MAX_MEMORY, *, values: bool = False
) -> Readable:
    """How to read checkpoint tensor ``key``: where it is stored, when the fused kernel can
    scan it there (unless the caller needs ``values``); whole, within ``budget``; else in
    pieces of at most ``budget`` bytes."""
    info = ckpt.infos[key]
    if not values and info.dtype in fused.DTYPES and info.numel:
        stored = ckpt.stored(key)
        if stored is not None and fused.available():
            return stored
    if info.numel * info.dtype.itemsize <= budget:
        return ckpt.load(key)
    return Pieces(info, ckpt.chunks(key, budget))


@dataclass(frozen=True)
class TensorSource:
    """One TARGET's tensors by name, as report, check and diff read them: their metadata,
    each one whole, some rows of one, or as a :data:`Readable` for :func:`measure`."""

    names: tuple[str, ...]
    info: Callable[[str], TensorInfo]
    load: Callable[[str], torch.Tensor]
    # Rows [start, stop) of a tensor, reading only those where the format allows it.
    rows: Callable[[str, int, int], torch.Tensor]
    # Whether ``rows`` reads only the rows asked for (else it loads the tensor).
    reads_rows: bool
    readable: Callable[[str, int, bool], Readable]  # (name, budget, values needed)


def checkpoint_source(ckpt: Checkpoint, keys: Mapping[str, str]) -> TensorSource:
    """The tensors of ``ckpt``, by the names in ``keys`` (name -> saved key)."""
    return TensorSource(
        tuple(keys),
        lambda n: ckpt.infos[keys[n]],
        lambda n: ckpt.load(keys[n]),
        lambda n, start, stop: ckpt.read_rows(keys[n], start, stop),
        ckpt.reads_rows,
        lambda n, budget, values: readable(ckpt, keys[n], budget, values=values),
    )


def model_source(tensors: Mapping[str, torch.Tensor]) -> TensorSource:
    """Tensors in memory (a model's parameters, buffers or state dict), detached."""
    state = {name: t.detach() for name, t in tensors.items()}

    def info(name: str) -> TensorInfo:
        t = state[name]
        return TensorInfo(name, tuple(int(d) for d in t.shape), t.dtype)

    return TensorSource(
        tuple(state),
        info,
        state.__getitem__,
        lambda n, start, stop: state[n][start:stop],
        True,
        lambda n, budget, values: state[n],
    )


def measure(
    name: str,
    source: Readable,
    *,
    max_memory: int = DEFAULT_MAX_MEMORY,
    structure: bool = True,
) -> Measured:
    """Statistics of one tensor, read once. The sample is seeded by ``name``. Without
    ``structure`` (a caller that identifies nothing), the kernel copies out no lines and
    the structure tests do not run."""
    seed = sample_seed(name)
    if isinstance(source, StoredTensor):
        return _measure_stored(source, seed, max_memory, structure)
    if isinstance(source, Pieces):
        info = source.info
        stats = stream_stats(source.blocks, info.numel, seed=seed)
        return Measured(info.shape, info.dtype, info.numel, stats)
    shape = tuple(int(s) for s in source.shape)
    if source.device.type == "meta":
        return Measured(shape, source.dtype, source.numel(), None)
    values = dense(source)
    return Measured(shape, source.dtype, source.numel(), running_stats(values, seed=seed), values)


def _measure_stored(stored: StoredTensor, seed: int, max_memory: int, structure: bool) -> Measured:
    """The fused kernel's scan of a tensor in its file: statistics, sample, and (as for a
    tensor loaded whole, only within the memory budget) the lines the structure tests read."""
    info = stored.info
    whole = (
        structure and info.numel * info.dtype.itemsize <= max_memory and info.numel >= MIN_ELEMENTS
    )
    try:
        stats, rows = file_stats(
            stored.fd,
            stored.offset,
            info.dtype,
            info.numel,
            seed=seed,
            lines=row_lines(info.shape) if whole else None,
        )
    except OSError as exc:
        raise stored.error(exc) from exc
    return Measured(info.shape, info.dtype, info.numel, stats, None, structure_of_rows(rows))
