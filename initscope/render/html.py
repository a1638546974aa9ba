"""``report --html``: the report as one self-contained HTML file, for a CI artifact.

Everything is in the file: the summary, the per-module table (the data of ``--format json``,
which is also embedded as JSON), and a panel per parameter drawn here as small inline SVG
(histogram bars, the expected density, labels) — no matplotlib, no network, no external
asset. A Content-Security-Policy meta tag forbids the page to load anything; one small inline
script filters the table and the panels. Every text from the report is escaped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from initscope.render.common import cut_text, default_parts, format_stat, type_name
from initscope.render.panels import Panel, make_panels
from initscope.render.report import report_to_dict
from initscope.stats.histogram import Histogram, one_thread
from initscope.stats.histogram import bars as block_bars
from initscope.stats.histogram import histogram as make_histogram

if TYPE_CHECKING:
    from initscope.measure.report import ParameterReport, Report
    from initscope.rules.language import RuleSet

__all__ = [
    "CSP",
    "render_html",
]

# Nothing may be fetched: no scripts, styles, fonts or images from anywhere; inline styles,
# the one inline script, and data: images only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'unsafe-inline'"

# Panel geometry in SVG user units (px at 100%): plot area and text rows.
_W, _H = 240, 156
_LEFT, _RIGHT, _TOP, _BASE = 6.0, 234.0, 34.0, 124.0
_RED = "#c62828"
_BAR = "#90a4ae"
_CURVE = "#1565c0"
# An expected curve far taller than the bars would flatten them: the y axis reaches at most
# this multiple of the tallest bar, and the curve is clipped at the top.
_CURVE_REACH = 3.0

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
margin:0 24px 40px;color:#212121;background:#fff}
h1{font-size:22px;margin:20px 0 4px}h2{font-size:17px;margin:28px 0 8px}
code,.mono{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
.meta{color:#546e7a;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{border:1px solid #cfd8dc;border-radius:6px;padding:6px 12px;min-width:90px}
.card b{display:block;font-size:20px}.card.bad{border-color:#c62828;color:#c62828}
.tools{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #eceff1;
z-index:1}
.tools input[type=search]{width:280px;padding:4px 6px}
table{border-collapse:collapse;font-size:12px;width:100%}
th,td{padding:3px 6px;border-bottom:1px solid #eceff1;text-align:left;vertical-align:top;
white-space:nowrap}
th{background:#f5f7f8}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.module td{background:#fafafa;font-weight:600;padding-top:8px}
tr.marked td{background:#ffebee}tr.marked td.mark{color:#c62828;font-weight:700}
td.ok{color:#2e7d32}td.hist{font-family:"DejaVu Sans Mono",monospace;white-space:pre;
letter-spacing:-1px}
.scroll{overflow-x:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px}
figure{margin:0;border:1px solid #cfd8dc;border-radius:4px;padding:4px}
figure.marked{border:2px solid #c62828}
figure svg{width:100%;height:auto;display:block}
figcaption{font-size:11px;color:#546e7a;overflow-wrap:anywhere}
a{color:inherit}.legend{font-size:12px;color:#546e7a}
.swatch{display:inline-block;width:14px;height:10px;vertical-align:middle;margin-right:4px}
"""

_SCRIPT = """
(function () {
  var q = document.getElementById("filter"), only = document.getElementById("only-marked");
  function apply() {
    var text = q.value.toLowerCase(), marked = only.checked;
    var items = document.querySelectorAll("[data-name]");
    for (var i = 0; i < items.length; i++) {
      var el = items[i], name = el.getAttribute("data-name").toLowerCase();
      el.hidden = (text && name.indexOf(text) < 0) || (marked && !el.classList.contains("marked"));
    }
  }
  q.addEventListener("input", apply);
  only.addEventListener("change", apply);
})();
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _f(x: float) -> str:
    """An SVG coordinate: one decimal is a tenth of a pixel."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _panel_svg(panel: Panel) -> str:
    """One panel as an inline SVG: title rows, bars in density units, the expected density
    (a polyline; point masses as dashed lines), the x range, and a mark when it differs."""
    out = _svg_titles(panel)
    h = panel.histogram
    if panel.span is None or h is None:
        why = _e(panel.density.note or "no values")
        out.append(f'<text x="{_W / 2}" y="80" font-size="11" text-anchor="middle">{why}</text>')
        out.append("</svg>")
        return "".join(out)
    ax = _axes(panel, h, panel.span)
    notes: list[str] = []
    if h.constant_value is not None:
        cx = ax.x(h.constant_value)
        out.append(
            f'<rect x="{_f(cx - 3)}" y="{_TOP}" width="6" height="{_BASE - _TOP}" fill="{_BAR}"/>'
        )
        notes.append(f"all values = {format_stat(h.constant_value)}")
    elif ax.sy > 0:
        out.append(_svg_bars(h, ax))
    out += _svg_density(panel, ax)
    if panel.density.note:
        notes.append(panel.density.note)
    for i, note in enumerate(notes):
        out.append(
            f'<text x="{_LEFT + 2}" y="{_TOP + 10 + 10 * i}" font-size="8.5" fill="#37474f">'
            f"{_e(cut_text(note, 50))}</text>"
        )
    out.append(_svg_x_axis(panel, ax))
    out.append("</svg>")
    return "".join(out)


def _svg_titles(panel: Panel) -> list[str]:
    """The SVG's opening tag and title rows (name and shape, what the values fit), with the
    red "≠ default" (or "≠ rule") badge when the values differ."""
    red = panel.marked
    out = [
        # Inline SVG in HTML needs no xmlns, so the page names no URL at all.
        f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="{_e(panel.name)}">',
        f'<text x="4" y="12" font-size="10" font-weight="600"'
        f"{f' fill={chr(34)}{_RED}{chr(34)}' if red else ''}>"
        f"{_e(cut_text(panel.title, 44))}</text>",
        f'<text x="4" y="25" font-size="10">{_e(cut_text(panel.fit, 46))}</text>',
    ]
    if red:
        out.append(
            f'<rect x="{_W - 62}" y="27" width="58" height="14" rx="2" fill="{_RED}"/>'
            f'<text x="{_W - 33}" y="37.5" font-size="9.5" fill="#fff" font-weight="700" '
            f'text-anchor="middle">{_e(panel.mark)}</text>'
        )
    return out


@dataclass(frozen=True)
class _Axes:
    """A panel's plot area in SVG units: the x range [lo, hi] at ``sx`` units per value,
    and ``sy`` units per unit of density (0: nothing to draw upwards)."""

    lo: float
    hi: float
    sx: float
    sy: float

    def x(self, v: float) -> float:
        """The SVG x of value ``v``."""
        return _LEFT + (v - self.lo) * self.sx

    def y(self, v: float) -> float:
        """The SVG y of density ``v``, clipped at the top of the plot area."""
        return max(_TOP, _BASE - v * self.sy)


def _axes(panel: Panel, h: Histogram, span: tuple[float, float]) -> _Axes:
    """The scales of a panel: x over its span; y up to the tallest bar, or to the expected
    curve's peak when that is taller but at most _CURVE_REACH times the tallest bar (so
    that a tall curve does not flatten the bars)."""
    lo, hi = span
    sx = (_RIGHT - _LEFT) / (hi - lo)
    dens = h.densities
    top_bar = max(dens, default=0.0)
    top_curve = max((y for _, y in panel.density.curve), default=0.0)
    top = max(top_bar, min(top_curve, _CURVE_REACH * top_bar) if top_bar else top_curve)
    sy = (_BASE - _TOP) / top if top > 0 else 0.0
    return _Axes(lo, hi, sx, sy)


def _svg_bars(h: Histogram, ax: _Axes) -> str:
    """The histogram's non-empty bars, in density units, as one path."""
    edges = h.edges
    path = "".join(
        f"M{_f(ax.x(edges[i]))} {_f(_BASE)}V{_f(ax.y(d))}H{_f(ax.x(edges[i + 1]))}V{_f(_BASE)}Z"
        for i, d in enumerate(h.densities)
        if d > 0
    )
    return f'<path d="{path}" fill="{_BAR}"/>'


def _svg_density(panel: Panel, ax: _Axes) -> list[str]:
    """The expected density: a polyline (when there is a y scale to draw it on), and each
    point mass as a dashed vertical line."""
    out: list[str] = []
    if panel.density.curve and ax.sy > 0:
        pts = " ".join(f"{_f(ax.x(a))},{_f(ax.y(b))}" for a, b in panel.density.curve)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{_CURVE}" stroke-width="1.4"/>')
    for spike in panel.density.spikes:
        sx_ = _f(ax.x(spike.at))
        out.append(
            f'<line x1="{sx_}" y1="{_TOP}" x2="{sx_}" y2="{_BASE}" stroke="{_CURVE}" '
            'stroke-width="1.4" stroke-dasharray="3 2"/>'
        )
    return out


def _svg_x_axis(panel: Panel, ax: _Axes) -> str:
    """The baseline, the x range's two ends, and below them what is expected."""
    return (
        f'<line x1="{_LEFT}" y1="{_BASE}" x2="{_RIGHT}" y2="{_BASE}" stroke="#607d8b"/>'
        f'<text x="{_LEFT}" y="{_BASE + 11}" font-size="9">{_e(format_stat(ax.lo))}</text>'
        f'<text x="{_RIGHT}" y="{_BASE + 11}" font-size="9" text-anchor="end">'
        f"{_e(format_stat(ax.hi))}</text>"
        f'<text x="{_W / 2}" y="{_BASE + 26}" font-size="8.5" fill="#37474f" '
        f'text-anchor="middle">{_e(cut_text("expected " + panel.expected.label, 56))}</text>'
    )


def _mark(p: ParameterReport, panel: Panel) -> tuple[str, str]:
    """The "follows?" cell: ✓ / ✗ / ? / -, and its CSS class."""
    f = panel.expected.follows
    if f is True:
        return "✓", "mark ok"
    if f is False:
        return "✗", "mark"
    known = panel.expected.distribution is not None and p.fit is not None
    return ("?" if known else "-"), "mark"


def _row(i: int, p: ParameterReport, panel: Panel, against_rules: bool) -> str:
    s = p.stats
    call, label = default_parts(p.default)
    cls = ' class="marked"' if panel.marked else ""
    mark, mark_cls = _mark(p, panel)
    hist = (
        block_bars(make_histogram(p.sample, bins=10).counts)
        if p.sample is not None and p.sample.numel()
        else "-"
    )
    tied = f" <small>(tied: {_e(', '.join(p.tied_to))})</small>" if p.tied_to else ""
    kind = " <small>(buffer)</small>" if p.is_buffer else ""
    cells = [
        f'<td><a href="#panel-{i}"><code>{_e(p.param)}</code></a>{kind}{tied}</td>',
        f"<td><code>{_e(panel.shape_text)}</code></td>",
        f"<td>{_e(p.dtype)}</td>",
        f'<td class="num">{p.numel:,}</td>',
        f'<td class="num">{_e(format_stat(p.fan_in))}</td>',
        f'<td class="num">{_e(format_stat(p.fan_out))}</td>',
        f"<td><code>{_e(call)}</code> {_e(label)}</td>",
    ]
    if against_rules:
        cells.append(
            f"<td><code>{_e(panel.expected.label)}</code> <small>{_e(panel.expected.source)}"
            "</small></td>"
        )
    cells += [
        f"<td><code>{_e(panel.fit)}</code></td>",
        f'<td class="{mark_cls}">{mark}</td>',
        f'<td class="hist">{_e(hist)}</td>',
    ]
    for v in (
        (s.mean, s.std, s.min, s.max, s.abs_max, s.zero_fraction)
        if s
        else (None, None, None, None, None, None)
    ):
        cells.append(f'<td class="num">{_e(format_stat(v))}</td>')
    nonfinite = f"{s.nan_count}/{s.inf_count}" if s else "-"
    cells.append(f'<td class="num">{nonfinite}</td>')
    return f'<tr id="row-{i}" data-name="{_e(p.name)}"{cls}>{"".join(cells)}</tr>'


def _json_script(report: Report) -> str:
    text = json.dumps(report_to_dict(report), separators=(",", ":"))
    # Inside <script>, "</" could close the element: JSON allows the escape \u003c.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="initscope-report">{text}</script>'


def render_html(report: Report, rules: RuleSet | None = None) -> str:
    """The whole report as one self-contained HTML page (a string to write to a file).

    Against ``rules`` (optional), each parameter is compared with the distribution its rule
    resolves to, as ``check --rules`` does; otherwise with its traced default. Parameters whose
    values do not follow it are highlighted in the table and their panels framed in red."""
    with one_thread():  # many histograms of small samples (see histogram.one_thread)
        return _page(report, rules, make_panels(report, rules))


def _page(report: Report, rules: RuleSet | None, panels: Sequence[Panel]) -> str:
    """The page, in order: head and title, summary cards, a note for a bare state dict,
    the filter tools and the panels, the table of parameters, the embedded JSON and the
    filter script."""
    parts = [*_head(report, rules), *_cards(report, rules, panels)]
    if not report.has_model:
        parts.append(
            '<p class="meta">No model was given, so no default init is known: only the '
            "values are shown (pass --model or --spec).</p>"
        )
    parts += _panel_grid(panels)
    parts += _table(report, rules, panels)
    parts += [
        _json_script(report),
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _head(report: Report, rules: RuleSet | None) -> list[str]:
    """The document's head (the Content-Security-Policy, which forbids any fetch, and an
    empty icon, so the browser asks for none), the title and the versions line."""
    what = "their traced default" if rules is None else f"the rules {rules.source}"
    title = f"initscope report: {report.target}"
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty data: icon, so the browser does not ask for /favicon.ico.
        '<link rel="icon" href="data:,">',
        f'<meta name="generator" content="initscope {_e(report.initscope_version)}">',
        f"<title>{_e(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>initscope report: <code>{_e(report.target)}</code></h1>",
        f'<p class="meta">torch {_e(report.torch_version)} · initscope '
        f"{_e(report.initscope_version)} · values compared with {_e(what)}</p>",
    ]


def _cards(report: Report, rules: RuleSet | None, panels: Sequence[Panel]) -> list[str]:
    """The summary cards: counts of parameters, elements (and buffers, if any), those at
    the expected init, those that differ (in red when there are any) and the inconclusive."""
    s = report.summary()
    marked = sum(panel.marked for panel in panels)
    follows = sum(p.expected.follows is True for p in panels)
    unsure = sum(p.expected.follows is None for p in panels)
    cards = [
        ("parameters", f"{s.parameters:,}", False),
        ("elements", f"{s.numel:,}", False),
        ("at the expected init" if rules else "at their default", f"{follows:,}", False),
        ("differ", f"{marked:,}", marked > 0),
        ("inconclusive", f"{unsure:,}", False),
    ]
    if s.buffers:
        cards.insert(2, ("buffers", f"{s.buffers:,}", False))
    return [
        '<div class="cards">',
        *(
            f'<div class="card{" bad" if bad else ""}"><b>{_e(value)}</b>{_e(label)}</div>'
            for label, value, bad in cards
        ),
        "</div>",
    ]


def _panel_grid(panels: Sequence[Panel]) -> list[str]:
    """The filter tools, the legend and a figure per panel, each linked to its table row
    (the anchors panel-i and row-i)."""
    parts = [
        '<div class="tools"><label>filter <input type="search" id="filter" '
        'placeholder="parameter name" aria-label="filter by name"></label> '
        '<label><input type="checkbox" id="only-marked"> only parameters that differ</label>'
        "</div>",
        "<h2>Distributions</h2>",
        f'<p class="legend"><span class="swatch" style="background:{_BAR}"></span>values '
        "(histogram of at most 4,096 sampled values, in density units) "
        f'<span class="swatch" style="background:{_CURVE}"></span>expected density '
        f'(dashed: a point mass) <span class="swatch" style="background:{_RED}"></span>'
        "does not follow it</p>",
        '<div class="grid">',
    ]
    for i, panel in enumerate(panels):
        cls = ' class="marked"' if panel.marked else ""
        parts.append(
            f'<figure id="panel-{i}" data-name="{_e(panel.name)}"{cls}>{_panel_svg(panel)}'
            f'<figcaption><a href="#row-{i}">{_e(panel.expected.source)}</a></figcaption>'
            "</figure>"
        )
    parts.append("</div>")
    return parts


def _table(report: Report, rules: RuleSet | None, panels: Sequence[Panel]) -> list[str]:
    """The table of parameters with a panel, grouped under a row per module, with the
    expected (rule) column against rules."""
    # Each shown parameter's panel, and its index (the anchors panel-i and row-i).
    shown = {panel.name: (i, panel) for i, panel in enumerate(panels)}
    parts = [
        "<h2>Parameters</h2>",
        '<div class="scroll"><table><thead><tr><th>parameter</th><th>shape</th><th>dtype</th>'
        "<th>numel</th><th>fan_in</th><th>fan_out</th><th>default init</th>",
    ]
    if rules is not None:
        parts.append("<th>expected (rule)</th>")
    parts.append(
        "<th>follows</th><th>=?</th><th>histogram</th><th>mean</th><th>std</th><th>min</th>"
        "<th>max</th><th>|max|</th><th>zeros</th><th>nan/inf</th></tr></thead><tbody>"
    )
    columns = 18 if rules is not None else 17
    current: str | None = None
    for p in report.parameters:
        if p.name not in shown:
            continue
        i, panel = shown[p.name]
        if p.module != current:
            current = p.module
            parts.append(
                f'<tr class="module"><td colspan="{columns}"><code>{_e(p.module or "(root)")}'
                f"</code> {_e(type_name(p.module_type))}</td></tr>"
            )
        parts.append(_row(i, p, panel, rules is not None))
    parts.append("</tbody></table></div>")
    return parts
