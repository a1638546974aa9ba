"""One picture per parameter, as data: the histogram of its sampled values, the density of
what it is expected to follow over the same range, its fit label, and whether it is marked.

Both renderers draw from this: :mod:`initscope.render.plot` with matplotlib (PNG, SVG, PDF) and
:mod:`initscope.render.html` as inline SVG without matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from initscope.knowledge.expected import Expected, expectations
from initscope.measure.report import ParameterReport, Report, class_names, name_matches
from initscope.render.common import shape_label
from initscope.rules.language import RuleSet
from initscope.stats.histogram import (
    Density,
    Histogram,
    density,
    histogram,
    one_thread,
    padded,
    value_range,
)

__all__ = [
    "BINS",
    "Panel",
    "make_panels",
    "select",
]

# Bars per panel: fine enough to show a uniform's flat top or a normal's bell from a
# 4,096-value sample (about 170 values a bar), coarse enough that bars are not noise.
BINS = 24


@dataclass(frozen=True)
class Panel:
    """One parameter's picture. ``against`` is ``default`` or ``rules``."""

    name: str
    shape: tuple[int, ...]
    fit: str  # the fit label (what the values follow), or why there is none
    expected: Expected
    histogram: Histogram | None  # None: no values (a meta tensor)
    density: Density
    span: tuple[float, float] | None  # the x axis's range, shared by bars and density
    against: str = "default"

    @property
    def marked(self) -> bool:
        """The values do not follow the expectation."""
        return self.expected.differs

    @property
    def mark(self) -> str:
        return "≠ rule" if self.against == "rules" else "≠ default"

    @property
    def shape_text(self) -> str:
        return shape_label(self.shape)

    @property
    def title(self) -> str:
        return f"{self.name}  {self.shape_text}"


def _matches_type(p: ParameterReport, types: Sequence[str]) -> bool:
    """``--type`` on a report: the class's name or dotted path, or any base class when the
    class is importable here (as ``report --type`` matches subclasses)."""
    if not types:
        return True
    if p.module_type is None:
        return False
    from initscope.knowledge.expected import class_of

    cls = class_of(p.module_type)
    names = {p.module_type, p.module_type.rsplit(".", 1)[-1]}
    if cls is not None:
        names |= class_names(cls)
    return any(t in names for t in types)


def select(
    report: Report, names: Sequence[str] = (), types: Sequence[str] = ()
) -> tuple[ParameterReport, ...]:
    """The report's parameters whose name or module matches a glob in ``names`` and whose
    module class is one of ``types`` (either empty: no filter)."""
    return tuple(
        p
        for p in report.parameters
        if _matches_type(p, types) and name_matches(p.name, p.module, names)
    )


def _fit(p: ParameterReport) -> str:
    if p.fit is not None:
        return p.fit.label
    return "no values" if p.stats is None else "unknown"


def make_panels(
    report: Report,
    rules: RuleSet | None = None,
    *,
    names: Sequence[str] = (),
    types: Sequence[str] = (),
    bins: int = BINS,
) -> tuple[Panel, ...]:
    """A panel per selected parameter, in the report's order, against its traced default or,
    with ``rules``, against the distribution the rules resolve to for it."""
    chosen = select(report, names, types)
    expected = expectations(report, rules)
    out: list[Panel] = []
    with one_thread():
        for p in chosen:
            out.append(_panel(p, expected[p.name], bins, rules is not None))
    return tuple(out)


def _panel(p: ParameterReport, e: Expected, bins: int, against_rules: bool) -> Panel:
    # Bars over the values and the expected support; the axis a margin wider.
    bars = value_range(p.sample, e.distribution)
    span = padded(bars) if bars is not None else None
    note = "no values"
    if span is not None and not math.isfinite(span[1] - span[0]):
        # Values near ±float64 max (a -inf mask stored as finfo.min): no axis can hold them.
        bars = span = None
        note = "range too wide to draw"
    hist = histogram(p.sample, bins, bars) if p.sample is not None and bars else None
    dens = density(e.distribution, span) if span is not None else Density(note=note)
    return Panel(
        name=p.name,
        shape=p.shape,
        fit=_fit(p),
        expected=e,
        histogram=hist,
        density=dens,
        span=span,
        against="rules" if against_rules else "default",
    )
