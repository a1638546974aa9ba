"""A :class:`~initscope.measure.report.Report` as a rich table, JSON, Markdown or CSV.

The JSON shape (``initscope.report/1``) is a public contract documented in docs/formats.md;
fields are only ever added to it."""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from initscope.measure.report import ParameterReport, Report
from initscope.environment import collector_paused
from initscope.render import jsontext
from initscope.render.common import (
    FORMATS,
    HIST_WIDTH,
    TABLE_WIDTH,
    Format,
    csv_cell,
    cut_text,
    default_parts,
    default_to_dict,
    escape_text,
    finite,
    format_stat,
    plural,
    shape_label,
    short_call,
    type_name,
)

__all__ = [
    "parameter_to_dict",
    "render_csv",
    "render_markdown",
    "render_report",
    "render_table",
    "report_to_dict",
]


def parameter_to_dict(p: ParameterReport) -> dict[str, Any]:
    s = p.stats
    return {
        "name": p.name,
        "module": p.module,
        "module_type": p.module_type,
        "param": p.param,
        "kind": "buffer" if p.is_buffer else "parameter",
        "shape": list(p.shape),
        "dtype": p.dtype,
        "numel": p.numel,
        "fan_in": p.fan_in,
        "fan_out": p.fan_out,
        "tied_to": list(p.tied_to) or None,
        "default": default_to_dict(p.default),
        "fit": None
        if p.fit is None
        else {
            "label": p.fit.label,
            "family": p.fit.family.value if p.fit.family is not None else None,
            "params": {k: finite(v) for k, v in p.fit.params.items()},
            "p_value": p.fit.p_value,
        },
        "matches_default": p.matches_default,
        "stats": None
        if s is None
        else {
            "mean": finite(s.mean),
            "std": finite(s.std),
            "min": finite(s.min),
            "max": finite(s.max),
            "abs_max": finite(s.abs_max),
            "zero_fraction": s.zero_fraction,
            "nan_count": s.nan_count,
            "inf_count": s.inf_count,
        },
    }


def report_to_dict(report: Report) -> dict[str, Any]:
    return {
        "schema": "initscope.report/1",
        "initscope_version": report.initscope_version,
        "torch_version": report.torch_version,
        "target": report.target,
        "parameters": [parameter_to_dict(p) for p in report.parameters],
        "summary": dataclasses.asdict(report.summary()),
    }


# -- renderers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Columns:
    """The table's column widths, for the rows it will print within ``width``."""

    name: int
    shape: int
    call: int
    default: int  # the call and its label, side by side or folded
    follows: int
    mark: int
    std: int
    hist: int  # 0: no histogram column
    aligned: bool  # labels line up in their own sub-column
    # Too narrow for a default-init column (default == 0): the call and its label go on a
    # line of their own under each row, cut to the width.
    narrow: bool = False

    def line(
        self, name: str, shape: str, default: str, follows: str, mark: str, std: str, spark: str
    ) -> str:
        cells = [f"{name:<{self.name}}", f"{shape:<{self.shape}}"]
        if not self.narrow:
            cells.append(f"{default:<{self.default}}")
        cells += [f"{follows:<{self.follows}}", f"{mark:^{self.mark}}", f"{std:>{self.std}}"]
        if self.hist:
            cells.append(f"{spark:<{self.hist}}")
        return "  ".join(cells).rstrip()


def _table_rows(report: Report) -> list[tuple[str, ...]]:
    """Per parameter: name, shape, default call, its label, follows, mark, std."""
    rows: list[tuple[str, ...]] = []
    for p in report.parameters:
        s = p.stats
        name = f"  {escape_text(p.param)}" + (" (buffer)" if p.is_buffer else "")
        call, label = default_parts(p.default)
        std = format_stat(s.std if s else None)
        if s is not None and (s.nan_count or s.inf_count):
            std += f" nan={s.nan_count} inf={s.inf_count}"
        rows.append((name, shape_label(p.shape), call, label, *_follows(p), std))
    return rows


def _columns(
    rows: list[tuple[str, ...]], sparks: list[str], width: int, hist: bool
) -> tuple[_Columns, list[tuple[str, ...]]]:
    """The widths, and the rows with the default-init column cut to what the others leave
    of ``width`` (at least 24)."""
    w_hist = max([len("histogram"), *(len(h) for h in sparks)]) if hist else 0
    w_name = max([len("parameter"), *(len(r[0]) for r in rows)])
    w_shape = max([len("shape"), *(len(r[1]) for r in rows)])
    w_follows = max([len("follows"), *(len(r[4]) for r in rows)])
    w_mark = len("= default?")
    w_std = max([9, *(len(r[6]) for r in rows)])
    fixed = w_name + w_shape + w_follows + w_mark + w_std + 10 + (w_hist + 2 if hist else 0)
    longest = max([len("default init"), *(len(r[2]) for r in rows)])
    if width - fixed < min(longest, 24):  # no room for the column: a line of its own
        rows = [(*r[:2], cut_text(f"{r[2]} {r[3]}".strip(), width - 4), "", *r[4:]) for r in rows]
        widths = (w_name, w_shape, 0, 0, w_follows, w_mark, w_std, w_hist)
        return _Columns(*widths, aligned=False, narrow=True), rows
    budget = width - fixed
    rows = [(r[0], r[1], cut_text(r[2], budget), cut_text(r[3], budget), *r[4:]) for r in rows]
    w_call = max([len("default init"), *(len(r[2]) for r in rows)])
    w_label = max([0, *(len(r[3]) for r in rows)])
    # Labels line up in their own sub-column when everything fits; otherwise each row puts
    # its label after the call if that fits, or on a second line.
    aligned = fixed + w_call + 1 + w_label <= width
    w_default = w_call + 1 + w_label if aligned else max(width - fixed, w_call, w_label)
    widths = (w_name, w_shape, w_call, w_default, w_follows, w_mark, w_std, w_hist)
    return _Columns(*widths, aligned=aligned), rows


def _module_heading(p: ParameterReport, width: int) -> list[str]:
    """The line (or two) that opens a module's group: its path and its class."""
    head = cut_text(escape_text(p.module) or "(root)", width)
    kind = type_name(p.module_type)
    if kind and len(head) + 2 + len(kind) <= width:
        return [f"{head}  {kind}"]
    return [head, cut_text(f"  ({kind})", width)] if kind else [head]


def render_table(report: Report, width: int = TABLE_WIDTH, hist: bool = False) -> str:
    """Parameters grouped under a heading line per module. "default init" is the traced call
    and its distribution (folded onto a second line when the row would not fit); "follows"
    is what the values follow ("default" when that is the default); "= default?" marks
    whether they match it (✓, ✗, ? when too few values, - when no default is known). With
    ``hist``, a last column draws each parameter's sampled values as a one-line histogram."""
    sparks: list[str] = []
    if hist:
        from initscope.stats.histogram import sparkline

        sparks = [sparkline(p.sample, HIST_WIDTH) for p in report.parameters]
    cols, rows = _columns(_table_rows(report), sparks, width, hist)
    out = [cut_text(f"{escape_text(report.target)}  (torch {report.torch_version})", width), ""]
    header = cols.line(
        "parameter", "shape", "default init", "follows", "= default?", "std", "histogram"
    )
    out += [header, "-" * len(header)]
    current: str | None = None
    for i, (p, (name, shape, call, label, follows, mark, std)) in enumerate(
        zip(report.parameters, rows, strict=True)
    ):
        spark = sparks[i] if hist else ""
        if p.module != current:
            current = p.module
            out += _module_heading(p, width)
        inline = f"{call:<{cols.call}} {label}" if cols.aligned else f"{call} {label}"
        if cols.narrow:
            out.append(cols.line(name, shape, "", follows, mark, std, spark))
            out.append(f"    {call}".rstrip())
        elif len(inline.rstrip()) <= cols.default:
            out.append(cols.line(name, shape, inline.rstrip(), follows, mark, std, spark))
        else:
            out.append(cols.line(name, shape, call, follows, mark, std, spark))
            if label:
                out.append(cols.line("", "", label, "", "", "", ""))
        if p.tied_to:
            tied = f"{'':{cols.name}}  tied: {escape_text(', '.join(p.tied_to))}"
            out.append(cut_text(tied, width))
    out += ["", *_wrapped(_summary_line(report), width)]
    return "\n".join(out) + "\n"


def _wrapped(text: str, width: int) -> list[str]:
    """``text``'s lines, each wrapped at spaces to ``width``."""
    import textwrap

    return [part for line in text.splitlines() for part in textwrap.wrap(line, width) or [""]]


def _follows(p: ParameterReport) -> tuple[str, str]:
    if p.fit is None:
        return "-", "-"
    if p.matches_default is True:
        return "default", "✓"
    if p.matches_default is False:
        return cut_text(p.fit.label, 28), "✗"
    known = p.default is not None and p.default.is_known
    return cut_text(p.fit.label, 28), "?" if known else "-"


def _summary_line(report: Report) -> str:
    s = report.summary()
    text = f"{plural(s.parameters, 'parameter')}, {plural(s.numel, 'element')}"
    if s.buffers:
        text += f", {plural(s.buffers, 'buffer')}"
    if not report.has_model:
        return text + "; no model given, so no default init (pass --model or --spec)"
    if s.parameters:
        text += f"; default init known for {s.with_default} of {s.parameters}"
        if s.custom_default:
            text += f" ({s.custom_default} custom or untraced)"
        decided = s.at_default + s.differ + s.inconclusive
        if decided:
            text += (
                f"\n{plural(s.at_default, 'parameter')} at their default, {s.differ} differ, "
                f"{s.inconclusive} inconclusive"
            )
    return text


def render_markdown(report: Report) -> str:
    lines = [
        f"# initscope report: `{escape_text(report.target)}`",
        "",
        f"torch {report.torch_version}, initscope {report.initscope_version}",
        "",
        "| parameter | type | shape | default init | distribution | follows | = default? "
        "| mean | std | min | max |",
        "|---|---|---|---|---|---|:-:|--:|--:|--:|--:|",
    ]
    for p in report.parameters:
        s = p.stats
        d = p.default
        tied = f" (tied: {escape_text(', '.join(p.tied_to))})" if p.tied_to else ""
        partial = (
            " + partial " + ", ".join(c.signature() for c in d.partial) if d and d.partial else ""
        )
        cells = [
            f"`{escape_text(p.name)}`{tied}",
            type_name(p.module_type),
            f"`{shape_label(p.shape)}`",
            f"`{short_call(d)}`{partial}" if d else "-",
            d.label() if d else "-",
            format_stat(s.mean if s else None),
            format_stat(s.std if s else None),
            format_stat(s.min if s else None),
            format_stat(s.max if s else None),
        ]
        cells[5:5] = [p.fit.label if p.fit else "-", _follows(p)[1]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", _summary_line(report), ""]
    return "\n".join(lines)


_STATS_COLUMNS = ["mean", "std", "min", "max", "abs_max", "zero_fraction", "nan_count", "inf_count"]
_CSV_COLUMNS = [
    "name",
    "module",
    "module_type",
    "param",
    "kind",
    "shape",
    "dtype",
    "numel",
    "fan_in",
    "fan_out",
    "tied_to",
    "default_init",
    "default_family",
    "default_low",
    "default_high",
    "default_mean",
    "default_std",
    "default_value",
    *_STATS_COLUMNS,
    "fit_label",
    "fit_family",
    "matches_default",
]


def render_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for p in report.parameters:
        row = parameter_to_dict(p)
        d = row["default"] or {}
        s = row["stats"] or {}
        writer.writerow(
            {
                "name": csv_cell(row["name"]),
                "module": csv_cell(row["module"]),
                "module_type": csv_cell(row["module_type"] or ""),
                "param": csv_cell(row["param"]),
                "kind": row["kind"],
                "shape": "x".join(str(x) for x in row["shape"]),
                "dtype": row["dtype"],
                "numel": row["numel"],
                "fan_in": row["fan_in"],
                "fan_out": row["fan_out"],
                "tied_to": csv_cell(";".join(row["tied_to"] or [])),
                "default_init": d.get("init"),
                "default_family": d.get("family"),
                "default_low": d.get("low"),
                "default_high": d.get("high"),
                "default_mean": d.get("mean"),
                "default_std": d.get("std"),
                "default_value": d.get("value"),
                **{k: s.get(k) for k in _STATS_COLUMNS},
                "fit_label": (row["fit"] or {}).get("label"),
                "fit_family": (row["fit"] or {}).get("family"),
                "matches_default": row["matches_default"],
            }
        )
    return buf.getvalue()


def render_report(
    report: Report, fmt: Format | str, width: int = TABLE_WIDTH, hist: bool = False
) -> str:
    """``hist`` (table only) adds a one-line histogram of each parameter's values."""
    fmt = Format(fmt).require("report", FORMATS["report"])
    if hist and fmt is not Format.TABLE:
        raise ValueError(f"hist is a column of the table format, not of {fmt.value}")
    with collector_paused():  # many dicts and strings, no cycles
        if fmt is Format.JSON:
            return jsontext.dumps(report_to_dict(report)) + "\n"
        if fmt is Format.MARKDOWN:
            return render_markdown(report)
        if fmt is Format.CSV:
            return render_csv(report)
        return render_table(report, width, hist)
