"""``initscope diff A B``: how two checkpoints (or a checkpoint and a fresh model) differ,
parameter by parameter.

Tensor pairs are streamed: each pair is read, compared in float64 chunks, and dropped, so
memory stays at about two tensors. Per name: relative L2 change ``‖b − a‖ / ‖a‖``, the largest
absolute difference, cosine similarity, std before and after, and a status: ``unchanged``
(bit-identical), ``changed``, ``added`` (only in B), ``removed`` (only in A),
``shape_changed`` or ``dtype_changed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import Enum

import torch

from initscope.io.keys import model_keys
from initscope.io.models import open_target
from initscope.io.targets import TargetOptions
from initscope.measure.pipeline import TensorSource, checkpoint_source, model_source
from initscope.naming import dtype_name
from initscope.parallel.distributed import Group
from initscope.parallel.workers import ProgressFn, spread
from initscope.stats.tensor import CHUNK_ELEMENTS, DEFAULT_MAX_MEMORY, dense

__all__ = [
    "DiffEntry",
    "DiffResult",
    "Status",
    "diff_targets",
    "diff_tensors",
]


class Status(str, Enum):
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    ADDED = "added"
    REMOVED = "removed"
    SHAPE_CHANGED = "shape_changed"
    DTYPE_CHANGED = "dtype_changed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DiffEntry:
    """One name's comparison; the numbers are None where they do not apply."""

    name: str
    status: Status
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    dtype_a: str | None
    dtype_b: str | None
    rel_l2: float | None = None
    max_abs_diff: float | None = None
    cosine: float | None = None
    std_a: float | None = None
    std_b: float | None = None


@dataclass(frozen=True)
class DiffResult:
    a: str
    b: str
    entries: tuple[DiffEntry, ...]

    def count(self, status: Status) -> int:
        return sum(1 for e in self.entries if e.status is status)

    def largest_changes(self) -> list[DiffEntry]:
        """Changed entries, largest relative change first."""
        changed = [e for e in self.entries if e.status is Status.CHANGED]
        return sorted(changed, key=lambda e: -(e.rel_l2 if e.rel_l2 is not None else math.inf))


def _bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    # torch.equal says NaN != NaN; bytes say whether anything changed at all.
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point() or a.is_complex():
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(
            a.element_size()
        )
        if width is not None and not a.is_complex():
            return torch.equal(a.contiguous().view(width), b.contiguous().view(width))
    return torch.equal(a, b)


def _base(
    shape_a: tuple[int, ...], dtype_a: torch.dtype, shape_b: tuple[int, ...], dtype_b: torch.dtype
) -> dict[str, object]:
    return {
        "shape_a": shape_a,
        "shape_b": shape_b,
        "dtype_a": dtype_name(dtype_a),
        "dtype_b": dtype_name(dtype_b),
    }


def diff_tensors(name: str, a: torch.Tensor, b: torch.Tensor) -> DiffEntry:
    """Compare two tensors of one name, in float64 chunks."""
    shape_a, shape_b = tuple(a.shape), tuple(b.shape)
    base = _base(shape_a, a.dtype, shape_b, b.dtype)
    if shape_a != shape_b:
        return DiffEntry(name, Status.SHAPE_CHANGED, **base)  # type: ignore[arg-type]
    return diff_blocks(name, base, [(dense(a), dense(b))])


def diff_blocks(
    name: str, base: dict[str, object], blocks: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> DiffEntry:
    """Compare one name given as aligned pairs of blocks (the whole tensors, or the same rows
    of each), in float64 chunks; memory is one pair of blocks at a time."""
    identical = base["dtype_a"] == base["dtype_b"]
    n = 0
    saa = sbb = sab = sdd = sa = sb = 0.0
    max_abs = 0.0
    with torch.no_grad():
        for block_a, block_b in blocks:
            a, b = dense(block_a), dense(block_b)
            identical = identical and _bit_identical(a, b)
            if not (a.is_floating_point() or a.is_complex()) and a.dtype != torch.bool:
                a, b = a.to(torch.float64), b.to(torch.float64)
            fa, fb = a.reshape(-1), b.reshape(-1)
            for start in range(0, fa.numel(), CHUNK_ELEMENTS):
                x = fa[start : start + CHUNK_ELEMENTS]
                y = fb[start : start + CHUNK_ELEMENTS]
                if x.is_complex():  # both parts count: compare (re, im) pairs
                    x, y = torch.view_as_real(x).reshape(-1), torch.view_as_real(y).reshape(-1)
                x, y = x.to(torch.float64), y.to(torch.float64)
                d = y - x
                n += x.numel()
                saa += float((x * x).sum())
                sbb += float((y * y).sum())
                sab += float((x * y).sum())
                sdd += float((d * d).sum())
                sa += float(x.sum())
                sb += float(y.sum())
                if d.numel():
                    # torch's max propagates NaN; Python's max() would drop it.
                    m = float(d.abs().max())
                    max_abs = m if math.isnan(m) or math.isnan(max_abs) else max(max_abs, m)
    status = (
        Status.DTYPE_CHANGED
        if base["dtype_a"] != base["dtype_b"]
        else Status.UNCHANGED
        if identical
        else Status.CHANGED
    )
    norm_a, norm_b = math.sqrt(saa), math.sqrt(sbb)
    rel = math.sqrt(sdd) / norm_a if norm_a > 0 else (0.0 if sdd == 0 else math.inf)
    cosine = sab / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None
    if cosine is not None and math.isfinite(cosine):
        cosine = min(1.0, max(-1.0, cosine))  # rounding can step past ±1
    if status is Status.UNCHANGED:
        # Bit-identical: no change, even where NaN makes the arithmetic say otherwise.
        rel, max_abs = 0.0, 0.0
        cosine = 1.0 if norm_a > 0 and math.isfinite(norm_a) else cosine

    def std(s: float, ss: float) -> float | None:
        if n < 2:
            return None
        return math.sqrt(max((ss - s * s / n) / (n - 1), 0.0))

    return DiffEntry(
        name,
        status,
        **base,  # type: ignore[arg-type]
        rel_l2=rel,
        max_abs_diff=max_abs,
        cosine=cosine,
        std_a=std(sa, saa),
        std_b=std(sb, sbb),
    )


@contextmanager
def _side(target: str, how: TargetOptions) -> Iterator[TensorSource]:
    """A checkpoint's tensors (read on demand, by rows when large), or a freshly built
    model's state dict."""
    with open_target(target, how) as (traced, ckpt):
        if ckpt is not None:
            keys = model_keys(traced.model, ckpt) if traced is not None else ckpt.keyed()
            yield checkpoint_source(ckpt, keys)
            return
        assert traced is not None
        yield model_source(traced.model.state_dict())


def diff_targets(
    a: str,
    b: str,
    how: TargetOptions = TargetOptions(),
    how_b: TargetOptions | None = None,
    progress: ProgressFn | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    workers: int | None = None,
    group: Group | None = None,
) -> DiffResult:
    """Compare A and B name by name (see the module docstring). The pairs are compared over
    ``workers`` processes (None: one per core when worth it) and, with ``group``, over the
    ranks of a torchrun job; the result is one process's, to the last bit of rounding
    (workers run torch on one thread)."""
    with ExitStack() as stack:
        side_a = stack.enter_context(_side(a, how))
        side_b = stack.enter_context(_side(b, how_b or how))
        in_a, in_b = set(side_a.names), set(side_b.names)
        both = [n for n in side_a.names if n in in_b]
        infos = {n: (_meta(side_a, n), _meta(side_b, n)) for n in both}
        # Elements read per pair, for balancing, and bytes, for progress: nothing when the
        # shapes differ.
        sizes = [math.prod(infos[n][0][0]) if infos[n][0][0] == infos[n][1][0] else 0 for n in both]
        nbytes = [
            size * (infos[n][0][1].itemsize + infos[n][1][1].itemsize)
            for n, size in zip(both, sizes, strict=True)
        ]

        def one(i: int) -> DiffEntry:
            (shape_a, dtype_a), (shape_b, dtype_b) = infos[both[i]]
            return _compare(both[i], side_a, side_b, shape_a, dtype_a, shape_b, dtype_b, max_memory)

        compared = dict(
            zip(
                both,
                spread(
                    one,
                    sizes,
                    workers=workers,
                    max_memory=max_memory,
                    group=group,
                    nbytes=nbytes,
                    progress=progress,
                ),
                strict=True,
            )
        )
        entries: list[DiffEntry] = []
        for name in side_a.names:
            if name in compared:
                entries.append(compared[name])
                continue
            shape_a, dtype_a = _meta(side_a, name)
            entries.append(
                DiffEntry(name, Status.REMOVED, shape_a, None, dtype_name(dtype_a), None)
            )
        for name in side_b.names:
            if name not in in_a:
                shape_b, dtype_b = _meta(side_b, name)
                entries.append(
                    DiffEntry(name, Status.ADDED, None, shape_b, None, dtype_name(dtype_b))
                )
        return DiffResult(a, b, tuple(entries))


def _meta(side: TensorSource, name: str) -> tuple[tuple[int, ...], torch.dtype]:
    info = side.info(name)
    return info.shape, info.dtype


def _rows(side: TensorSource, name: str) -> Callable[[str, int, int], torch.Tensor]:
    """How to read blocks of rows of ``name``: from the file where the format allows it,
    else from the tensor read once, whole (not once per block)."""
    if side.reads_rows:
        return side.rows
    whole = side.load(name)
    return lambda _, start, stop: whole[start:stop]


def _compare(
    name: str,
    side_a: TensorSource,
    side_b: TensorSource,
    shape_a: tuple[int, ...],
    dtype_a: torch.dtype,
    shape_b: tuple[int, ...],
    dtype_b: torch.dtype,
    budget: int,
) -> DiffEntry:
    base = _base(shape_a, dtype_a, shape_b, dtype_b)
    if shape_a != shape_b:
        return DiffEntry(name, Status.SHAPE_CHANGED, **base)  # type: ignore[arg-type]
    numel = math.prod(shape_a)
    width = max(dtype_a.itemsize, dtype_b.itemsize)
    if numel * width * 2 <= budget or not shape_a or numel == 0:
        return diff_blocks(name, base, [(dense(side_a.load(name)), dense(side_b.load(name)))])
    # Over the budget: the same rows of both, a block at a time (two blocks fit the budget);
    # a side that cannot read rows (DCP) is read once, whole, not once per block.
    rows_a, rows_b = _rows(side_a, name), _rows(side_b, name)
    step = max(1, budget // 2 // max(numel // shape_a[0] * width, 1))
    blocks = (
        (rows_a(name, r, min(r + step, shape_a[0])), rows_b(name, r, min(r + step, shape_a[0])))
        for r in range(0, shape_a[0], step)
    )
    return diff_blocks(name, base, blocks)
