"""The fused statistics kernel (``kernel.c``), called via ctypes.

One pass over a tensor's values gives every statistic initscope reports (count, mean, M2,
extremes, zero/NaN/inf counts) and copies out the sample and the rows the identification
needs, where torch ops need four passes or more; it reads checkpoint files in small chunks
that stay in cache, with no page faults and no copy to fresh memory (see ``kernel.c``). It is an
accelerator only: every caller has a torch path that gives the same results (to float
rounding), taken when the kernel is not there.

The kernel is built when initscope is installed, if a C compiler works then, and found by
:mod:`initscope.stats.native`; its AVX2 code runs where the CPU has AVX2. Not built, or
``INITSCOPE_FUSED=0``, means the torch path; :func:`describe` says which path is in use.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import torch

from initscope.stats.native import describe, library, loaded_library

__all__ = [
    "DTYPES",
    "SEGMENT",
    "Accumulator",
    "FileChangedError",
    "Lines",
    "RowTest",
    "Scanned",
    "available",
    "describe",
    "gammainc",
    "gammaincc",
    "kolmogorov_sf",
    "ks_distance",
    "positions",
    "row_test",
    "samples",
    "scan",
]

# The values one accumulator covers: results depend on this split and never on the thread
# count, so a report is the same bytes on any machine (torchrun sets OMP_NUM_THREADS=1).
# 256 Ki values, so that a 1024 x 1024 matrix still splits over cores (at 1 Mi, the 684
# attention matrices of the bench's bf16 file ran on one thread each).
SEGMENT = 1 << 18
# dtype codes, as kernel.c's DT_* enum
DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_STATUS_SHORT = 1


class FileChangedError(OSError):
    """A file ended before the data its header promised (truncated, or rewritten while it
    was read)."""


class Accumulator(ctypes.Structure):
    """acc_t in kernel.c: one segment's statistics (moments over finite values)."""

    _fields_ = (
        ("count", ctypes.c_int64),
        ("zeros", ctypes.c_int64),
        ("nans", ctypes.c_int64),
        ("infs", ctypes.c_int64),
        ("mean", ctypes.c_double),
        ("m2", ctypes.c_double),
        ("lo", ctypes.c_double),
        ("hi", ctypes.c_double),
    )


_LOCK = threading.Lock()
_STATE: dict[str, object] = {}
# No positions, no lines: the kernel reads neither array when its count is 0.
_NONE = torch.empty(0, dtype=torch.int64)


def available() -> bool:
    """Whether statistics are computed by the kernel: it is built, loads, and is not turned
    off by ``INITSCOPE_FUSED=0``."""
    return library() is not None


def _lib() -> ctypes.CDLL:
    """The kernel, for a caller that has checked :func:`available`."""
    lib = loaded_library()
    assert lib is not None, "the fused kernel is not available"
    return lib


def _pool() -> ThreadPoolExecutor:
    """Threads for the kernel (ctypes releases the GIL): one per torch thread. A pool made
    before a fork is useless in the child, so each process makes its own."""
    with _LOCK:
        pool = _STATE.get("pool")
        if not isinstance(pool, ThreadPoolExecutor) or _STATE.get("pid") != os.getpid():
            pool = ThreadPoolExecutor(max(1, torch.get_num_threads()), "initscope-fused")
            _STATE["pool"], _STATE["pid"] = pool, os.getpid()
    return pool


@dataclass(frozen=True)
class Lines:
    """Lines of a matrix view to copy out during a scan: ``x[start + j * stride]`` for each
    start and ``j < length`` (rows: stride 1; columns: stride = the row length)."""

    starts: torch.Tensor
    length: int
    stride: int


@dataclass(frozen=True)
class Scanned:
    """A scan's result: one accumulator per SEGMENT values, the values at the positions asked
    for, and the lines asked for (count x length), both float64."""

    accumulators: list[Accumulator]
    sample: torch.Tensor
    lines: torch.Tensor | None


class _Job(ctypes.Structure):
    """scan_t in kernel.c."""

    _fields_ = (
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int64),
        ("file_offset", ctypes.c_int64),
        ("dtype", ctypes.c_int64),
        ("seg", ctypes.c_int64),
        ("out", ctypes.POINTER(Accumulator)),
        ("pos", ctypes.c_void_p),
        ("npos", ctypes.c_int64),
        ("sample", ctypes.c_void_p),
        ("line_start", ctypes.c_void_p),
        ("nlines", ctypes.c_int64),
        ("line_len", ctypes.c_int64),
        ("line_stride", ctypes.c_int64),
        ("lines", ctypes.c_void_p),
    )


def scan(
    dtype: torch.dtype,
    numel: int,
    *,
    address: int | None = None,
    fd: int | None = None,
    offset: int = 0,
    positions: torch.Tensor | None = None,
    lines: Lines | None = None,
) -> Scanned:
    """Statistics of ``numel`` values of ``dtype``, in memory at ``address`` or in file ``fd``
    at byte ``offset``, in one pass shared out over threads by segment; the values at
    ``positions`` (ascending flat positions) and the ``lines`` are copied out on the way.
    A file that ends early raises :class:`FileChangedError`."""
    lib = _lib()
    count = -(-numel // SEGMENT)
    out = (Accumulator * count)()
    pos = _NONE if positions is None else _as_int64(positions)
    npos = pos.numel()
    sample = torch.empty(npos, dtype=torch.float64)
    starts, length, stride, copied = _NONE, 0, 1, None
    if lines is not None:
        starts, length, stride = _as_int64(lines.starts), lines.length, lines.stride
        copied = torch.empty(starts.numel(), length, dtype=torch.float64)
    # positional, in _Job's field order: keywords cost microseconds a tensor
    job = _Job(
        address,
        -1 if fd is None else fd,
        offset,
        DTYPES[dtype],
        SEGMENT,
        out,
        pos.data_ptr(),
        npos,
        sample.data_ptr(),
        starts.data_ptr(),
        starts.numel(),
        length,
        stride,
        None if copied is None else copied.data_ptr(),
    )
    threads = 1 if count == 1 else min(max(1, torch.get_num_threads()), count)
    if threads == 1:
        statuses = [int(lib.fused_scan(ctypes.addressof(job), 0, numel))]
    else:
        per = -(-count // threads)

        def part(j: int) -> int:
            start, stop = j * per * SEGMENT, min(numel, (j + 1) * per * SEGMENT)
            return int(lib.fused_scan(ctypes.addressof(job), start, stop)) if start < stop else 0

        statuses = list(_pool().map(part, range(threads)))
    for status in statuses:
        if status == _STATUS_SHORT:
            raise FileChangedError("the file ends before the tensor's data does")
        if status < 0:
            raise OSError(-status, os.strerror(-status))
        if status != 0:
            raise MemoryError("the statistics kernel could not allocate its read buffer")
    return Scanned(list(out), sample, copied)


class RowTest(NamedTuple):
    """fused_row_test's numbers for a (k, len) matrix of rows (see kernel.c): the row
    test's two χ² statistics and the s2 and v0 they are scaled by, then the first row's
    squared norm and its product with the second (the orthogonality test's first step)."""

    means: float
    variances: float
    s2: float
    v0: float
    norm0: float
    dot01: float


def row_test(rows: torch.Tensor) -> RowTest:
    """:class:`RowTest` for a (k, len) float64 matrix, k and len ≥ 2."""
    lib = _lib()
    x = rows  # the kernel's lines are contiguous float64 (view() would cost ~8 µs)
    if x.dtype != torch.float64 or not x.is_contiguous():
        x = x.to(torch.float64).contiguous()
    k, length = x.shape
    out = (ctypes.c_double * 6)()
    if lib.fused_row_test(x.data_ptr(), k, length, out) != 0:
        raise MemoryError("the statistics kernel could not allocate its row buffers")
    return RowTest(*out)


def _as_int64(v: torch.Tensor) -> torch.Tensor:
    """``v`` as contiguous int64 (positions and line starts are so already)."""
    if v.dtype == torch.int64 and v.is_contiguous():
        return v
    return v.to(torch.int64).contiguous()


def _as_f64(v: torch.Tensor) -> torch.Tensor:
    """``v``'s values as contiguous float64 on the CPU: ``v`` itself when it is so already
    (identification's samples are), which costs attribute reads where a conversion costs
    torch calls."""
    if v.dtype == torch.float64 and v.device.type == "cpu" and v.is_contiguous():
        return v
    return v.detach().reshape(-1).to("cpu", torch.float64).contiguous()


def samples(values: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[float]]:
    """For float64 samples of any sizes, in one call: each sorted ascending (a radix sort,
    O(n)), and each one's kurtosis b2 = m4 / m2² about its mean (NaN when empty or
    constant). The results are views of one buffer."""
    lib = _lib()
    parts = [_as_f64(v) for v in values]
    count = len(parts)
    pointers = (ctypes.c_void_p * max(count, 1))(*[p.data_ptr() for p in parts])
    sizes = [p.numel() for p in parts]
    offsets = (ctypes.c_int64 * (count + 1))()
    at = 0
    for i, size in enumerate(sizes):
        at += size
        offsets[i + 1] = at
    ordered = torch.empty(at, dtype=torch.float64)
    b2 = (ctypes.c_double * max(count, 1))()
    if lib.fused_samples(pointers, offsets, count, ordered.data_ptr(), b2) != 0:
        raise MemoryError("the statistics kernel could not allocate its sort buffer")
    if count == 1:
        return [ordered], [b2[0]]
    return list(torch.split(ordered, sizes)), list(b2[:count])


# kernel.c's KS_* codes for the continuous families, by name (Family's values)
_KS_FAMILIES = {"uniform": 0, "normal": 1, "trunc_normal": 2}


def ks_distance(
    ordered: torch.Tensor, family: str, a: float, b: float, lo: float = 0.0, hi: float = 1.0
) -> float:
    """The KS distance of sorted float64 values from a continuous CDF: ``family`` uniform
    (bounds a, b), normal (loc a, scale b) or trunc_normal (that normal's, rescaled from its
    CDF values lo, hi at the cut points), as
    :meth:`~initscope.knowledge.distributions.Distribution.cdf_form` gives them. One pass
    in C that takes the CDF only where the maximum can be (kernel.c, fused_ks)."""
    lib = _lib()
    x = _as_f64(ordered)
    return float(lib.fused_ks(x.data_ptr(), x.numel(), _KS_FAMILIES[family], a, b, lo, hi))


def gammainc(a: float, x: float) -> float:
    """The regularized lower incomplete gamma P(a, x), as ``torch.special.gammainc`` computes
    it on the CPU (kernel.c's port of torch's calc_igamma), for plain floats."""
    return float(_lib().fused_gammainc(a, x, 0))


def gammaincc(a: float, x: float) -> float:
    """The regularized upper incomplete gamma Q(a, x) = 1 − P(a, x), as
    ``torch.special.gammaincc`` computes it on the CPU (kernel.c's port of calc_igammac)."""
    return float(_lib().fused_gammainc(a, x, 1))


def positions(numel: int, size: int, seed: int) -> torch.Tensor:
    """:func:`~initscope.stats.tensor.sample_positions` for ``0 < size < numel``: the same
    positions, drawn with the same generator as torch's (kernel.c, fused_positions)."""
    out = torch.empty(size, dtype=torch.int64)
    _lib().fused_positions(seed & 0xFFFFFFFFFFFFFFFF, numel, size, out.data_ptr())
    return out


def kolmogorov_sf(x: float) -> float:
    """:func:`initscope.knowledge.goodness.kolmogorov_sf`, the same series in C: the same
    value, bit for bit."""
    return float(_lib().fused_kolmogorov_sf(x))
