"""Streaming, mergeable statistics of a tensor's values, plus a bounded sample of them.

A tensor is read in chunks of ``CHUNK_ELEMENTS`` elements, each converted to float64, so memory
stays bounded whatever the tensor's size or dtype (bf16, fp16, int8...). Chunks combine with
Chan et al.'s parallel update of the mean and the sum of squared deviations, which is exact up
to float rounding in any split, so shards and processes can merge their partial results.

The sample is the values at ``SAMPLE_SIZE`` positions drawn (one per stratum of the flat
range) from a generator seeded by the caller: the same positions whatever the chunking, so a
sample merged from chunks equals the one-pass sample exactly, and a goodness-of-fit test on it
costs O(sample), not O(numel).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from initscope.stats import fused

__all__ = [
    "CHUNK_ELEMENTS",
    "SAMPLE_SIZE",
    "RunningStats",
    "TensorStats",
    "dense",
    "file_stats",
    "sample_positions",
    "tensor_stats",
]

# 4 Mi elements: a 32 MiB float64 working copy per chunk, large enough that per-call overhead
# is negligible next to the arithmetic.
CHUNK_ELEMENTS = 1 << 22
# The fast path's working block: 1 Mi elements (4 MiB of float32 for the deviations) stays in
# cache between the passes over it, and is big enough that torch splits each op over cores.
FAST_ELEMENTS = 1 << 20
# Float dtypes the fast path takes, and those it reads without widening first.
_NATIVE = frozenset({torch.float32, torch.float64})
_FAST = frozenset(
    _NATIVE
    | {torch.float16, torch.bfloat16}
    | {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)}
)
# Enough for a KS test to tell apart distributions whose CDFs differ by ~2.5% (the 5% critical
# value of the KS statistic is 1.36/sqrt(n) = 0.021 at n = 4096).
SAMPLE_SIZE = 4096
# What a single tensor may occupy in memory before it is read in blocks of rows (--max-memory).
DEFAULT_MAX_MEMORY = 2 * 2**30


@dataclass(frozen=True)
class TensorStats:
    """Summary statistics of one tensor. Moments and extremes are over finite values only."""

    numel: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    abs_max: float | None
    zero_fraction: float
    nan_count: int
    inf_count: int


def sample_positions(numel: int, size: int, seed: int) -> torch.Tensor:
    """``min(size, numel)`` distinct flat positions, ascending, drawn with ``seed``: one
    uniformly at random within each of ``size`` equal strata of the flat range.

    Any positions chosen without looking at the values give an iid sample when the values
    are iid (what the goodness-of-fit tests assume); strata also spread the sample evenly
    over rows, so a structured tensor cannot hide in an unsampled region. It costs O(size)
    and needs no sort: a permutation of the positions and a sort of the picks took 0.7 ms
    per tensor, measured, more than the statistics of a 1 MiB tensor."""
    if size <= 0:
        return torch.empty(0, dtype=torch.long)
    if numel <= size:
        return _every_position(numel)
    if fused.available():  # the same draw, in C: torch's calls cost ~50 µs a tensor
        return fused.positions(numel, size, seed)
    starts, widths, last = _strata(numel, size)
    g = torch.Generator().manual_seed(seed)
    offsets = torch.rand(size, generator=g, dtype=torch.float64).mul_(widths).long()
    return torch.minimum(offsets, last, out=offsets).add_(starts)


@functools.lru_cache(maxsize=64)
def _every_position(numel: int) -> torch.Tensor:
    """0 .. numel − 1: the sample of a small tensor is all of it (kept per size, read
    only)."""
    return torch.arange(numel)


@functools.lru_cache(maxsize=64)
def _strata(numel: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The strata of :func:`sample_positions` (first positions, widths as float64, last
    offsets): the same for every tensor of one size, so a checkpoint of many equal
    tensors computes them once. Read only."""
    bounds = torch.arange(size + 1, dtype=torch.long) * numel // size
    widths = bounds[1:] - bounds[:-1]
    return bounds[:-1], widths.to(torch.float64), widths - 1


def _fusable(t: torch.Tensor) -> bool:
    """Whether the fused kernel can read ``t`` where it lies."""
    return (
        t.dtype in fused.DTYPES
        and t.device.type == "cpu"
        and t.is_contiguous()
        and not t.is_neg()  # lazily negated or conjugated views: the memory is not the values
        and not t.is_conj()
    )


_SCRATCH = threading.local()


def _scratch(dtype: torch.dtype, n: int, slot: int = 0) -> torch.Tensor:
    """A reused working buffer of ``n`` elements (at most FAST_ELEMENTS), one per thread,
    dtype and slot: the fast path writes its deviations here instead of allocating."""
    key = (dtype, slot)
    buffers: dict[tuple[torch.dtype, int], torch.Tensor] = _SCRATCH.__dict__.setdefault(
        "buffers", {}
    )
    buf = buffers.get(key)
    if buf is None:
        buf = buffers[key] = torch.empty(FAST_ELEMENTS, dtype=dtype)
    return buf[:n]


@dataclass
class RunningStats:
    """Accumulates statistics over chunks of one tensor; ``merge`` combines two of them."""

    positions: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    count: int = 0  # finite values seen
    seen: int = 0  # all values seen
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    zeros: int = 0
    nans: int = 0
    infs: int = 0
    sample_at: list[torch.Tensor] = field(default_factory=list)
    sample_values: list[torch.Tensor] = field(default_factory=list)

    def update(self, chunk: torch.Tensor, offset: int) -> None:
        """Add a flat chunk whose first element is at flat position ``offset``."""
        c = chunk.reshape(-1)
        if c.is_complex():
            # Statistics over the real and imaginary components, each counted as a value.
            c = torch.view_as_real(c).reshape(-1)
        n_all = c.numel()
        if n_all == 0:
            return
        if _fusable(c) and fused.available():
            self._update_fused(c, offset)
            return
        self.seen += n_all
        if c.dtype in _FAST:
            for start in range(0, n_all, FAST_ELEMENTS):
                self._update_float(c[start : start + FAST_ELEMENTS], offset + start)
            return
        c = c.to(torch.float64)
        self._take_sample(c, offset)
        self._update_exact(c)

    def _update_fused(self, c: torch.Tensor, offset: int) -> None:
        """The whole chunk in one pass of the fused kernel (see initscope.stats.fused)."""
        lo, hi = self._positions_in(offset, c.numel())
        at = self.positions[lo:hi]
        scanned = fused.scan(c.dtype, c.numel(), address=c.data_ptr(), positions=at - offset)
        self.absorb(scanned, at)

    def _positions_in(self, offset: int, n: int) -> tuple[int, int]:
        if self.positions.numel() == 0:
            return 0, 0
        lo = int(torch.searchsorted(self.positions, offset))
        return lo, int(torch.searchsorted(self.positions, offset + n))

    def absorb(self, scanned: fused.Scanned, at: torch.Tensor) -> None:
        """Fold a scan's accumulators (in order) into this one, with its sample values, taken
        at the flat positions ``at``."""
        for a in scanned.accumulators:
            self.seen += a.count + a.nans + a.infs
            self.zeros += a.zeros
            self.nans += a.nans
            self.infs += a.infs
            if a.count:
                self._combine(a.count, a.mean, a.m2, a.lo, a.hi)
        if at.numel():
            self.sample_at.append(at)
            self.sample_values.append(scanned.sample)

    def _update_float(self, c: torch.Tensor, offset: int) -> None:
        """A finite float block in as few passes as torch allows; anything else falls back to
        :meth:`_update_exact`.

        The obvious way (``std_mean``, ``aminmax``, ``(t == 0).sum()``, ``isnan().sum()``,
        ``isinf().sum()``) is slow for three reasons this avoids: torch's var kernel updates
        Welford's mean and M2 per element; each comparison allocates a boolean tensor of the
        whole tensor; and ``count_nonzero`` branches per element. Instead, per cache-sized
        block, with reused buffers:

        - ``aminmax``: min and max propagate NaN and ±inf, so finite extremes prove there is
          neither, and the NaN/inf counts cost nothing;
        - zeros as n − Σ sign(x)², whose 0/1 terms add exactly in float32 below 2^24;
        - the mean and the sum of squared deviations in float64, through torch's cascade
          ``sum`` (``dot`` and ``vector_norm`` are faster but accumulate in float32 lanes,
          which loses about three digits over tens of millions of values).
        """
        n = c.numel()
        if c.dtype not in _NATIVE:
            # bf16/fp16/fp8 widen exactly to float32 (copy_ into a reused buffer: 5x faster
            # than .float(), which allocates); sign has no out= of another dtype, and torch
            # has no aminmax for fp8.
            c = _scratch(torch.float32, n, slot=1).copy_(c)
        self._take_sample(c, offset)
        lo, hi = (float(v) for v in torch.aminmax(c))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            self._update_exact(c.to(torch.float64))
            return
        if lo == hi:  # a constant block (a zero bias, a norm's ones): nothing more to read
            self.zeros += n if lo == 0 else 0
            self._combine(n, lo, 0.0, lo, hi)
            return
        if lo <= 0 <= hi:
            wide = torch.float64 if c.dtype == torch.float64 else torch.float32
            s = torch.sign(c, out=_scratch(wide, n, slot=2))
            self.zeros += n - round(float(torch.dot(s, s)))
        # The moments in float64 throughout: the block widened into a reused float64 buffer
        # (one cache-resident copy; float32 deviations lost ~1e-8 of the mean to rounding),
        # the mean, then the deviations in place. Their own sum corrects the mean's rounding,
        # which otherwise showed on 50M values of mean 1 and std 1e-4.
        d = _scratch(torch.float64, n).copy_(c)
        mean = float(d.sum()) / n
        if not math.isfinite(mean):  # float64 values near the maximum: the sum overflowed
            self._update_exact(c.to(torch.float64))
            return
        shift = float(d.sub_(mean).sum())
        squares = float(d.square_().sum())
        # Deviations beyond ~1e154 square to inf: the spread is then reported as inf, not
        # as the NaN that inf - inf would give.
        m2 = max(squares - shift * shift / n, 0.0) if math.isfinite(squares) else squares
        mean += shift / n
        self._combine(n, mean, m2, lo, hi)

    def _update_exact(self, c: torch.Tensor) -> None:
        """A float64 chunk, NaN and inf included: counted, then left out of the moments."""
        finite = torch.isfinite(c)
        n_finite = int(finite.sum())
        if n_finite != c.numel():
            nan = int(torch.isnan(c).sum())
            self.nans += nan
            self.infs += c.numel() - n_finite - nan
            c = c[finite]
        if n_finite == 0:
            return
        lo, hi = torch.aminmax(c)
        m = float(c.mean())
        if not math.isfinite(m):  # the sum overflowed; the mean of x/n cannot
            m = float((c / n_finite).sum())
        m2 = float(((c - m) ** 2).sum())
        self.zeros += int((c == 0).sum())
        self._combine(n_finite, m, m2, float(lo), float(hi))

    def _take_sample(self, c: torch.Tensor, offset: int) -> None:
        lo, hi = self._positions_in(offset, c.numel())
        if hi > lo:
            at = self.positions[lo:hi]
            self.sample_at.append(at)
            self.sample_values.append(c[at - offset].to(torch.float64))

    def _combine(self, n: int, mean: float, m2: float, lo: float, hi: float) -> None:
        # Chan, Golub & LeVeque (1979): pairwise update of count, mean and M2. The first part
        # is taken as it is, and the weights are formed before they multiply: delta * n
        # overflowed for float64 values near the type's maximum.
        total = self.count + n
        if self.count == 0:
            self.mean, self.m2 = mean, m2
        else:
            delta = mean - self.mean
            self.mean += delta * (n / total)
            self.m2 += m2 + delta * delta * (self.count * n / total)
        self.count = total
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold ``other`` (the same tensor, other chunks) into this one and return self."""
        self.seen += other.seen
        self.zeros += other.zeros
        self.nans += other.nans
        self.infs += other.infs
        self.sample_at.extend(other.sample_at)
        self.sample_values.extend(other.sample_values)
        if other.count:
            self._combine(other.count, other.mean, other.m2, other.min, other.max)
        return self

    def sample(self) -> torch.Tensor:
        """The sampled values (float64) in flat-position order."""
        if not self.sample_values:
            return torch.empty(0, dtype=torch.float64)
        if len(self.sample_values) > 1:
            # Fold the pieces into one, so that asking again costs nothing.
            at = torch.cat(self.sample_at)
            values = torch.cat(self.sample_values)
            if bool((at[1:] < at[:-1]).any()):  # pieces merged out of order
                order = at.argsort()
                at, values = at[order], values[order]
            self.sample_at, self.sample_values = [at], [values]
        return self.sample_values[0]

    def result(self) -> TensorStats:
        if self.count == 0:
            return TensorStats(self.seen, None, None, None, None, None, 0.0, self.nans, self.infs)
        # Bessel-corrected, as torch.std's default.
        var = self.m2 / (self.count - 1) if self.count > 1 else 0.0
        return TensorStats(
            numel=self.seen,
            mean=self.mean,
            std=math.sqrt(max(var, 0.0)),
            # -0.0 + 0.0 is 0.0: a zero is reported as 0 whichever zero the extremes met first
            min=self.min + 0.0,
            max=self.max + 0.0,
            abs_max=max(abs(self.min), abs(self.max)),
            zero_fraction=self.zeros / self.seen if self.seen else 0.0,
            nan_count=self.nans,
            inf_count=self.infs,
        )


def chunks(t: torch.Tensor, size: int = CHUNK_ELEMENTS) -> Iterable[tuple[int, torch.Tensor]]:
    """Flat chunks of ``t`` with their offsets; views where ``t`` is contiguous."""
    flat = t.reshape(-1)
    for start in range(0, flat.numel(), size):
        yield start, flat[start : start + size]


def running_stats(
    t: torch.Tensor, seed: int = 0, sample_size: int = SAMPLE_SIZE, chunk: int = CHUNK_ELEMENTS
) -> RunningStats:
    """Accumulate ``t`` chunk by chunk into a :class:`RunningStats` with its sample."""
    rs = RunningStats(positions=sample_positions(t.numel(), sample_size, seed))
    if _fusable(t):
        chunk = max(chunk, t.numel())  # the kernel needs no float64 copies: one pass
    with torch.no_grad():
        for offset, part in chunks(t.detach(), chunk):
            rs.update(part, offset)
    return rs


def stream_stats(
    pieces: Iterable[tuple[int, torch.Tensor]], numel: int, seed: int = 0
) -> RunningStats:
    """Accumulate a tensor given as flat pieces with their offsets (see
    :meth:`initscope.io.checkpoints.Checkpoint.chunks`): memory is one piece at a time."""
    rs = RunningStats(positions=sample_positions(numel, SAMPLE_SIZE, seed))
    with torch.no_grad():
        for offset, piece in pieces:
            for sub_offset, part in chunks(dense(piece)):
                rs.update(part, offset + sub_offset)
    return rs


def file_stats(
    fd: int,
    offset: int,
    dtype: torch.dtype,
    numel: int,
    seed: int = 0,
    lines: fused.Lines | None = None,
) -> tuple[RunningStats, torch.Tensor | None]:
    """Statistics and sample of ``numel`` values of ``dtype`` stored at byte ``offset`` of the
    open file ``fd``, read in cache-sized chunks by the fused kernel (the caller checks
    ``fused.available()`` and the dtype), with ``lines`` copied out on the way."""
    rs = RunningStats(positions=sample_positions(numel, SAMPLE_SIZE, seed))
    scanned = fused.scan(dtype, numel, fd=fd, offset=offset, positions=rs.positions, lines=lines)
    rs.absorb(scanned, rs.positions)
    return rs, scanned.lines


def tensor_stats(t: torch.Tensor) -> TensorStats | None:
    """Statistics of ``t``; None for tensors without values (meta device)."""
    if t.device.type == "meta":
        return None
    return running_stats(dense(t), sample_size=0).result()


def dense(t: torch.Tensor) -> torch.Tensor:
    """The values of a quantized or sparse tensor as an ordinary strided tensor."""
    if t.is_quantized:
        return t.dequantize()
    if t.layout != torch.strided:
        return t.to_dense()
    return t
