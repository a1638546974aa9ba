"""Histograms of a parameter's sampled values and the density of the distribution expected
for them, in the same units, so one can be drawn over the other.

Pure torch and math (no numpy): the report's HTML panels and the terminal's one-line
histograms use this without matplotlib; :mod:`initscope.render.plot` draws the same data with it.

Density units: a bar's height is ``count / (n · bin width)``, so the bars' area is 1 and a
continuous expected pdf overlays them directly. A distribution with point masses (a
constant, the zeros of ``eye_``/``dirac_``/``sparse_``) has no finite density there: it is a
:class:`Spike` carrying its probability mass, drawn as a vertical line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from initscope.knowledge.distributions import Distribution, Family, format_number

__all__ = [
    "BLOCKS",
    "Density",
    "Histogram",
    "Spike",
    "density",
    "histogram",
    "one_thread",
    "padded",
    "sparkline",
    "value_range",
]

# Eighths of a character cell, lowest first (U+2581..U+2588).
BLOCKS = "▁▂▃▄▅▆▇█"
# An expected normal is drawn over mean ± this many std: 99.99% of its mass.
_NORMAL_REACH = 4.0
# Points on an expected pdf polyline: smooth at panel size, small in inline SVG.
_CURVE_POINTS = 80


@dataclass(frozen=True)
class Histogram:
    """Bars over ``[low, high]`` in ``len(counts)`` equal bins, from ``n`` finite values."""

    low: float
    high: float
    counts: tuple[int, ...]
    n: int
    # The value, when every value is the same one (a zeros bias, a norm's ones): a spike.
    constant_value: float | None = None

    @property
    def width(self) -> float:
        return (self.high - self.low) / len(self.counts) if self.counts else 0.0

    @property
    def edges(self) -> tuple[float, ...]:
        w = self.width
        return tuple(self.low + i * w for i in range(len(self.counts) + 1))

    @property
    def densities(self) -> tuple[float, ...]:
        """Each bar's height in density units (the bars' total area is 1)."""
        if not self.n or self.width <= 0:
            return tuple(0.0 for _ in self.counts)
        scale = self.n * self.width
        return tuple(c / scale for c in self.counts)


@dataclass(frozen=True)
class Spike:
    """A point mass: ``mass`` of the probability at exactly ``at``."""

    at: float
    mass: float


@dataclass(frozen=True)
class Density:
    """What to draw for an expected distribution: a pdf polyline (x, y in density units),
    point masses, and a note when the picture is an approximation or there is none."""

    curve: tuple[tuple[float, float], ...] = ()
    spikes: tuple[Spike, ...] = ()
    note: str | None = None

    @property
    def empty(self) -> bool:
        return not self.curve and not self.spikes


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for a run of small-tensor calls (histograms of 4,096 values), put
    back as it was afterwards. Measured on 2 cores: 500 panels in 0.5 s on one thread, 3.3 s
    on two while other processes use the cores (the pool's threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def finite_values(sample: torch.Tensor) -> torch.Tensor:
    flat = sample.reshape(-1).to(torch.float64)
    finite = torch.isfinite(flat)
    # Few torch calls per tensor: on 4,096 values each call's overhead is what costs.
    return flat if bool(finite.all()) else flat[finite]


def histogram(
    sample: torch.Tensor, bins: int = 24, span: tuple[float, float] | None = None
) -> Histogram:
    """Count the finite values of ``sample`` in ``bins`` equal bins over ``span`` (default:
    the values' own range). Values outside ``span`` are left out; the last bin is closed."""
    values = finite_values(sample)
    if values.numel() == 0:
        return Histogram(0.0, 0.0, (0,) * bins, 0)
    lo, hi = (float(v) for v in torch.aminmax(values))
    same = lo if lo == hi else None
    low, high = span if span is not None else (lo, hi)
    if high <= low:
        # Every value equal (or one value): one bar holds them all.
        inside = int((values == low).sum())
        counts = [0] * bins
        counts[bins // 2] = inside
        return Histogram(low, low, tuple(counts), inside, same)
    # histc leaves out values outside [low, high] and puts high itself in the last bin.
    tally = [int(c) for c in torch.histc(values, bins, low, high).tolist()]
    return Histogram(low, high, tuple(tally), sum(tally), same)


def _support(d: Distribution) -> tuple[float, float] | None:
    """Where the expected distribution puts (practically) all its mass."""
    f = d.family
    if f is Family.UNIFORM and d.low is not None and d.high is not None:
        return d.low, d.high
    if f is Family.TRUNC_NORMAL and d.low is not None and d.high is not None:
        return d.low, d.high
    if f in (Family.NORMAL, Family.ORTHOGONAL, Family.SPARSE) and d.std:
        mean = d.mean or 0.0
        std = d.scale if f is Family.SPARSE and d.scale else d.std
        return mean - _NORMAL_REACH * std, mean + _NORMAL_REACH * std
    if f is Family.CONSTANT and d.value is not None and math.isfinite(d.value):
        return d.value, d.value
    if f in (Family.EYE, Family.DIRAC):
        return 0.0, d.value if d.value is not None else 1.0
    return None


def value_range(
    sample: torch.Tensor | None, expected: Distribution | None
) -> tuple[float, float] | None:
    """The x range of a panel: the values' range joined with the expected distribution's, so
    values far from what was expected stay visible next to it (see :func:`padded` for the
    axis drawn around it)."""
    points: list[float] = []
    if sample is not None:
        values = finite_values(sample)
        if values.numel():
            points += [float(values.min()), float(values.max())]
    support = _support(expected) if expected is not None else None
    if support is not None:
        points += list(support)
    if not points:
        return None
    return min(points), max(points)


def padded(span: tuple[float, float]) -> tuple[float, float]:
    """An axis range around ``span`` with a margin; a single point gets an axis around it."""
    low, high = span
    if high <= low:
        pad = max(abs(low) * 0.5, 1.0)
        return low - pad, high + pad
    pad = high * 0.04 - low * 0.04  # (high - low) * 0.04 overflows near ±float64 max
    return low - pad, high + pad


def _normal_pdf(x: float, loc: float, scale: float) -> float:
    z = (x - loc) / scale
    return math.exp(-0.5 * z * z) / (scale * math.sqrt(2.0 * math.pi))


def _phi_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _grid(low: float, high: float, points: int = _CURVE_POINTS) -> list[float]:
    step = (high - low) / (points - 1)
    return [low + i * step for i in range(points)]


def density(d: Distribution | None, span: tuple[float, float]) -> Density:
    """The expected distribution ``d`` drawn over ``span``: its pdf for uniform, normal and
    truncated normal; point masses for constant, eye and dirac; orthogonal approximated by
    N(0, std) (each entry of a large random orthogonal matrix is nearly normal); sparse as a
    spike at 0 plus its normal part; nothing for a custom init."""
    if d is None:
        return Density(note="no expected distribution")
    f = d.family
    low, high = span
    if f is Family.UNIFORM and d.low is not None and d.high is not None:
        if d.high <= d.low:
            return Density(spikes=(Spike(d.low, 1.0),), note="a constant: a spike, not a pdf")
        h = 1.0 / (d.high - d.low)
        # A step: zero outside the support, drawn with vertical edges.
        pts = [(min(low, d.low), 0.0), (d.low, 0.0), (d.low, h), (d.high, h), (d.high, 0.0)]
        pts.append((max(high, d.high), 0.0))
        return Density(curve=tuple(pts))
    if f is Family.NORMAL and d.loc is not None and d.scale is not None:
        if d.scale <= 0:
            return Density(spikes=(Spike(d.loc, 1.0),), note="std 0: a spike, not a pdf")
        loc, scale = d.loc, d.scale
        return Density(curve=tuple((x, _normal_pdf(x, loc, scale)) for x in _grid(low, high)))
    if (
        f is Family.TRUNC_NORMAL
        and d.loc is not None
        and d.scale is not None
        and d.low is not None
        and d.high is not None
        and d.scale > 0
    ):
        loc, scale, a, b = d.loc, d.scale, d.low, d.high
        z = _phi_cdf((b - loc) / scale) - _phi_cdf((a - loc) / scale)
        if z <= 0:
            return Density(note="an empty truncation: no pdf")
        inner = [x for x in _grid(max(low, a), min(high, b)) if a <= x <= b]
        pts = [(min(low, a), 0.0), (a, 0.0)]
        pts += [(x, _normal_pdf(x, loc, scale) / z) for x in inner]
        pts += [(b, 0.0), (max(high, b), 0.0)]
        return Density(curve=tuple(pts))
    if f is Family.CONSTANT and d.value is not None:
        return Density(
            spikes=(Spike(d.value, 1.0),), note=f"constant {format_number(d.value)}: a spike"
        )
    if f in (Family.EYE, Family.DIRAC) and d.mean is not None:
        ones = d.mean  # the fraction of entries that are 1 (see Distribution.eye/dirac)
        value = d.value if d.value is not None else 1.0
        return Density(
            spikes=(Spike(0.0, 1.0 - ones), Spike(value, ones)),
            note=f"{f.value}: {ones:.3g} of entries are {format_number(value)}, the rest 0",
        )
    if f is Family.ORTHOGONAL and d.std:
        std = d.std
        return Density(
            curve=tuple((x, _normal_pdf(x, 0.0, std)) for x in _grid(low, high)),
            note=f"orthogonal, drawn as ≈ N(0, {format_number(std)})",
        )
    if f is Family.SPARSE and d.scale and d.sparsity is not None:
        keep, scale = 1.0 - d.sparsity, d.scale
        return Density(
            curve=tuple((x, keep * _normal_pdf(x, 0.0, scale)) for x in _grid(low, high)),
            spikes=(Spike(0.0, d.sparsity),),
            note=f"sparse: {d.sparsity:.3g} of each column 0",
        )
    return Density(note=f"{f.value}: no density to draw")


def sparkline(sample: torch.Tensor | None, width: int = 10) -> str:
    """A one-line histogram of ``width`` block characters over the values' own range, each
    bar's height relative to the tallest; an empty bin is a space. ``-`` when there are no
    values (a meta tensor)."""
    if sample is None:
        return "-"
    h = histogram(sample, bins=width)
    return bars(h.counts) if h.n else "-"


def bars(counts: Sequence[int]) -> str:
    """Block characters for ``counts``: the largest is a full block, any nonzero count at
    least the lowest one, zero a space."""
    top = max(counts, default=0)
    if top <= 0:
        return " " * len(counts)
    out = []
    for c in counts:
        level = math.ceil(c / top * len(BLOCKS)) if c > 0 else 0
        out.append(BLOCKS[level - 1] if level else " ")
    return "".join(out)
