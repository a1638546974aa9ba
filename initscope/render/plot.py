"""``initscope plot``: a grid of small panels, one per parameter, each the histogram of its
values with the density of what it should follow drawn over it.

matplotlib is optional (``pip install 'initscope[plot]'``; it needs numpy, which initscope
otherwise never does): it is imported only here, only when a figure is made, and always
through ``Figure`` and the Agg canvas, never pyplot's global state, so this runs headless
and in threads. The HTML report does not use this module (see :mod:`initscope.render.html`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from initscope.errors import InitScopeError
from initscope.knowledge.distributions import format_number
from initscope.render.common import cut_text, escape_text
from initscope.render.panels import BINS, Panel, make_panels

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from initscope.io.targets import TargetOptions
    from initscope.measure.report import Report
    from initscope.rules.language import RuleSet

__all__ = [
    "COLUMNS",
    "DPI",
    "MAX_PANELS",
    "PANEL_SIZE",
    "ImageFormat",
    "MissingDependency",
    "Page",
    "figure",
    "figure_size",
    "image_format",
    "page_paths",
    "plot",
    "require_matplotlib",
    "save_pages",
    "title_for",
]

# One panel, in inches: room for a two-line title in 7 pt and a readable histogram.
PANEL_SIZE = (3.0, 2.4)
# The figure's own title line above the grid, in inches.
HEADER = 0.6
COLUMNS = 6
DPI = 100
# Panels per file: 48 is 6 × 8 panels, an 1800 × 1970 px PNG at 100 dpi; more go to further
# files (out-1.png, out-2.png, ...).
MAX_PANELS = 48
_RED = "#c62828"
_BARS = "#90a4ae"
_CURVE = "#1565c0"


class ImageFormat(str, Enum):
    """The image types ``plot -o`` writes, chosen by the output's extension."""

    PNG = "png"
    SVG = "svg"
    PDF = "pdf"


class MissingDependency(InitScopeError):
    """An optional package a feature needs is not installed."""


def image_format(path: Path) -> ImageFormat:
    """The format ``path``'s extension names; an error naming the supported ones."""
    ext = path.suffix.lower().lstrip(".")
    try:
        return ImageFormat(ext)
    except ValueError:
        names = ", ".join(f".{f.value}" for f in ImageFormat)
        raise InitScopeError(
            f"cannot write {path}: {'.' + ext if ext else 'no extension'} is not an image "
            f"format initscope plot writes",
            f"name the output with one of {names}",
        ) from None


def require_matplotlib() -> None:
    """Fail early, before any model is built, when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "initscope plot needs matplotlib, which is not installed",
            "pip install 'initscope[plot]'",
        ) from None


def figure_size(count: int, columns: int = COLUMNS) -> tuple[float, float]:
    """The figure's size in inches for ``count`` panels in at most ``columns`` columns."""
    cols = max(1, min(columns, count))
    rows = max(1, math.ceil(count / cols))
    return cols * PANEL_SIZE[0], rows * PANEL_SIZE[1] + HEADER


# The y-axis shows the expected curve whole only while the data's histogram keeps at least
# 1/CURVE_HEADROOM of the height: trained weights spread far wider than their init, and under
# a curve 50x taller their histogram was a few pixels high.
CURVE_HEADROOM = 3.0


def _top(panel: Panel) -> float:
    """The y-axis top in density units: the taller of the histogram and the expected curve,
    the curve cut at CURVE_HEADROOM times the histogram's peak."""
    h = panel.histogram
    bars = max(h.densities, default=0.0) if h is not None and h.constant_value is None else 0.0
    curve = max((y for _, y in panel.density.curve), default=0.0)
    if bars <= 0 or not math.isfinite(bars):
        return curve * 1.05 if curve > 0 and math.isfinite(curve) else 1.0
    return 1.05 * max(bars, min(curve, CURVE_HEADROOM * bars))


def _draw(ax: Axes, panel: Panel) -> None:
    """One panel: bars in density units, the expected density over them, title and marks.
    Text that carries names is drawn with ``parse_math=False``: a ``$`` in a parameter or
    file name is not mathtext (it crashed the parser or turned a name into math italic)."""
    ax.tick_params(labelsize=6, length=2, pad=1)
    ax.set_yticks([])
    ax.set_title(
        f"{cut_text(escape_text(panel.title), 44)}\n{cut_text(panel.fit, 44)}",
        fontsize=7,
        color=_RED if panel.marked else "black",
        loc="left",
        parse_math=False,
    )
    ax.set_xlabel(
        cut_text(f"expected {panel.expected.label}", 58), fontsize=5.5, labelpad=1, parse_math=False
    )
    h = panel.histogram
    if panel.span is None or h is None:
        ax.text(
            0.5, 0.5, panel.density.note or "no values", ha="center", va="center",
            transform=ax.transAxes,
        )  # fmt: skip
        ax.set_xticks([])
        return
    ax.set_xlim(*panel.span)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(4))
    notes: list[str] = []
    if h.constant_value is not None:
        # Every value equal: no finite density, so a spike holding all the mass.
        ax.axvline(h.constant_value, color=_BARS, linewidth=4)
        notes.append(f"all values = {format_number(h.constant_value)}")
    else:
        ax.stairs(h.densities, h.edges, fill=True, color=_BARS)
    d = panel.density
    if d.curve:
        xs, ys = zip(*d.curve, strict=True)
        ax.plot(xs, ys, color=_CURVE, linewidth=1.2)
    for spike in d.spikes:
        ax.axvline(spike.at, color=_CURVE, linewidth=1.2, linestyle="--")
    if d.note:
        notes.append(d.note)
    top = _top(panel)
    curve_peak = max((y for _, y in d.curve), default=0.0)
    if curve_peak > top:
        notes.append(f"expected peaks at {format_number(curve_peak)}, off the top")
    if notes:
        ax.text(
            0.02, 0.97, "\n".join(notes), transform=ax.transAxes, fontsize=5.5, va="top",
            color="#37474f", parse_math=False,
        )  # fmt: skip
    ax.set_ylim(0, top)
    if panel.marked:
        for spine in ax.spines.values():
            spine.set_color(_RED)
            spine.set_linewidth(2)
        ax.text(
            0.98, 0.97, panel.mark, transform=ax.transAxes, ha="right", va="top", fontsize=7,
            color="white", fontweight="bold",
            bbox={"facecolor": _RED, "edgecolor": "none", "pad": 1.5},
        )  # fmt: skip


def figure(
    panels: Sequence[Panel],
    *,
    columns: int = COLUMNS,
    dpi: int = DPI,
    title: str | None = None,
    first: int = 0,
) -> Figure:
    """A matplotlib Figure with one Axes per panel, each tagged ``gid=initscope-panel-<i>``
    (``i`` counting from ``first``), which SVG output keeps as the group's id."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = max(len(panels), 1)
    cols = max(1, min(columns, count))
    rows = math.ceil(count / cols)
    width, height = figure_size(count, columns)
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    # Fixed margins in inches (as fractions), so the image size is exactly figsize × dpi and
    # layout costs nothing per panel.
    fig.subplots_adjust(
        left=0.15 / width,
        right=1 - 0.15 / width,
        top=1 - HEADER / height,
        bottom=0.35 / height,
        wspace=0.12,
        hspace=0.6,
    )
    if title:
        fig.suptitle(
            cut_text(escape_text(title), int(width * 14)),
            fontsize=9,
            x=0.01,
            ha="left",
            y=1 - 0.08 / height,
            va="top",
            parse_math=False,
        )
    grid = fig.add_gridspec(rows, cols)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.set_gid(f"initscope-panel-{first + i}")
        _draw(ax, panel)
    if not panels:
        fig.text(0.5, 0.5, "no parameters selected", ha="center", va="center")
    return fig


def title_for(report: Report, panels: Sequence[Panel], against: str) -> str:
    """The figure title ``plot`` puts above the grid."""
    marked = sum(p.marked for p in panels)
    what = "its default" if against == "default" else f"the rules {against}"
    return (
        f"{report.target}: each parameter's values (bars) against {what} (line); "
        f"{marked} of {len(panels)} marked as not following it"
    )


def _report_of(
    report_or_model: Report | torch.nn.Module | str,
    names: Sequence[str],
    types: Sequence[str],
    how: TargetOptions | None,
    buffers: bool,
) -> Report:
    import torch

    from initscope.measure.report import Report, ReportOptions, build_report, report_model

    if isinstance(report_or_model, Report):
        return report_or_model
    options = ReportOptions(buffers=buffers, types=tuple(types), names=tuple(names))
    if isinstance(report_or_model, torch.nn.Module):
        from initscope.io.models import TracedModel

        # A model built outside the tracer: its defaults are unknown, so only the values.
        traced = TracedModel(report_or_model, {})
        return report_model(traced, target=type(report_or_model).__name__, options=options)
    from initscope.io.targets import TargetOptions

    return build_report(report_or_model, how or TargetOptions(), options)


def _rules(against: RuleSet | str | Path | None) -> RuleSet | None:
    from initscope.rules.language import RuleSet, load_rules

    if against is None or isinstance(against, RuleSet):
        return against
    if str(against) == "default":
        return None
    return load_rules(against)


def plot(
    report_or_model: Report | torch.nn.Module | str,
    *,
    names: Sequence[str] = (),
    types: Sequence[str] = (),
    against: RuleSet | str | Path | None = None,
    columns: int = COLUMNS,
    dpi: int = DPI,
    bins: int = BINS,
    how: TargetOptions | None = None,
    buffers: bool = False,
) -> Figure:
    """The panels of ``report_or_model`` as one matplotlib Figure.

    ``report_or_model``: a :class:`~initscope.measure.report.Report`, an ``nn.Module`` (values only:
    its defaults were not traced), or a TARGET as the CLI takes it (built with ``how``).
    ``names``/``types`` select parameters as ``--name``/``--type`` do. ``against``:
    ``None`` or ``"default"`` for the traced default, or rules (a RuleSet, a path or a preset
    name) for the distribution each rule resolves to. Save it with ``fig.savefig(path)``.
    """
    require_matplotlib()
    rules = _rules(against)
    report = _report_of(report_or_model, names, types, how, buffers)
    panels = make_panels(report, rules, names=names, types=types, bins=bins)
    label = "default" if rules is None else rules.source
    return figure(panels, columns=columns, dpi=dpi, title=title_for(report, panels, label))


@dataclass(frozen=True)
class Page:
    """One written file and the panels on it (0-based, end exclusive)."""

    path: Path
    first: int
    end: int


def page_paths(output: Path, count: int, max_panels: int = MAX_PANELS) -> list[Page]:
    """Where ``count`` panels go: ``output`` itself when they fit on one page, else
    ``<stem>-1<ext>``, ``<stem>-2<ext>``, ... with at most ``max_panels`` each."""
    if count <= max_panels:
        return [Page(output, 0, count)]
    pages = math.ceil(count / max_panels)
    return [
        Page(
            output.with_name(f"{output.stem}-{i + 1}{output.suffix}"),
            i * max_panels,
            min(count, (i + 1) * max_panels),
        )
        for i in range(pages)
    ]


def save_pages(
    panels: Sequence[Panel],
    output: Path,
    *,
    title: str,
    max_panels: int = MAX_PANELS,
    columns: int = COLUMNS,
    dpi: int = DPI,
) -> list[Page]:
    """Write the panels to ``output`` (paged when more than ``max_panels``), each file
    atomically; the format is the extension's."""
    from initscope.io.output import atomic_write

    fmt = image_format(output)
    pages = page_paths(output, len(panels), max_panels)
    for n, page in enumerate(pages, start=1):
        note = f" (page {n} of {len(pages)})" if len(pages) > 1 else ""
        fig = figure(
            panels[page.first : page.end],
            columns=columns,
            dpi=dpi,
            title=title + note,
            first=page.first,
        )
        from matplotlib import rc_context

        # SVG text as <text> elements, not glyph outlines: searchable, selectable, smaller.
        # rc_context restores the setting afterwards (no global state is left changed).
        with rc_context({"svg.fonttype": "none"}), atomic_write(page.path, "wb") as fh:
            fig.savefig(fh, format=fmt.value, dpi=dpi)
    return pages
