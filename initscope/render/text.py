"""Turn reports and explanations into text: a rich table, JSON, Markdown or CSV.

The JSON shape (``initscope.report/1``) is a public contract documented in the README; fields
are only ever added to it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from initscope.knowledge.explanation import Explanation
    from initscope.knowledge.tracing import DefaultInit
    from initscope.measure.report import ParameterReport, Report

__all__ = [
    "OutputFormat",
    "csv_cell",
    "cut_text",
    "default_parts",
    "escape_text",
    "explanation_to_dict",
    "format_stat",
    "render_explanation",
    "render_report",
    "report_to_dict",
    "shape_label",
    "short_call",
    "type_name",
]

TABLE_WIDTH = 100
# Bars of the table's one-line histogram (--hist).
HIST_WIDTH = 10
# Calls whose numbers the distribution label already shows in full.
_PLAIN_CALLS = {"uniform_", "normal_", "constant_", "zeros_", "ones_", "fill_", "zero_"}
# Calls longer than this are cut with an ellipsis in tables; JSON keeps them whole.
_MAX_CALL = 48


class OutputFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    CSV = "csv"


# -- names from files are data -----------------------------------------------------------------

# Characters that act on a terminal or on how text reads rather than showing: C0 controls,
# DEL, C1 controls (ESC [ and CSI start escape sequences that clear screens, set titles,
# write to the clipboard), and the Unicode bidirectional controls that reorder what a
# reader sees (the "Trojan Source" characters, CVE-2021-42574).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_text(text: str, keep: str = "") -> str:
    """``text`` with every control character shown as ``\\xNN`` (``\\uNNNN`` for the bidi
    controls), so a tensor name from a file cannot move the cursor, clear a terminal or
    forge a line; those in ``keep`` stay (``"\\n\\t"`` for a whole rendered output, whose
    lines they lay out)."""

    def shown(match: re.Match[str]) -> str:
        char = match.group()
        if char in keep:
            return char
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(shown, text)


def csv_cell(text: str) -> str:
    """A text cell a spreadsheet will not run: one that starts with ``= + - @`` (or a tab or
    CR) is a formula to Excel and LibreOffice, so it gets a leading ``'`` (OWASP, "CSV
    Injection"); control characters are escaped."""
    text = escape_text(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# -- data ------------------------------------------------------------------------------------


def _finite(x: float | None) -> float | None:
    if x is None or math.isnan(x) or math.isinf(x):
        return None
    return x


def default_to_dict(d: DefaultInit | None) -> dict[str, Any] | None:
    if d is None:
        return None
    dist = d.distribution
    # JSON has no inf/nan: a constant -inf (an attention mask buffer) is null here and
    # "const -inf" in the label.
    return {
        "init": d.call.name,
        "args": {k: _finite(v) if isinstance(v, float) else v for k, v in d.call.args.items()},
        "family": dist.family.value,
        "low": _finite(dist.low),
        "high": _finite(dist.high),
        "mean": _finite(dist.mean),
        "std": _finite(dist.std),
        "value": _finite(dist.value),
        "label": dist.label(),
        "source": d.call.source,
        "then": [c.signature() for c in d.then],
        "partial_writes": [c.signature() for c in d.partial],
        "via": list(d.via),
    }


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
            "params": {k: _finite(v) for k, v in p.fit.params.items()},
            "p_value": p.fit.p_value,
        },
        "matches_default": p.matches_default,
        "stats": None
        if s is None
        else {
            "mean": _finite(s.mean),
            "std": _finite(s.std),
            "min": _finite(s.min),
            "max": _finite(s.max),
            "abs_max": _finite(s.abs_max),
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


# -- text helpers ----------------------------------------------------------------------------


def format_stat(x: float | None) -> str:
    from initscope.knowledge.distributions import format_number

    return format_number(x, missing="-")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def shape_label(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def short_call(d: DefaultInit) -> str:
    """``kaiming_uniform_(a=√5)``: only the arguments that differ from torch's defaults."""
    from initscope.knowledge.tracing import InitCall

    call = d.call
    if call.name in _PLAIN_CALLS:
        text = call.name
    else:
        shown = {k: v for k, v in call.args.items() if not _is_default_arg(call.name, k, v)}
        text = InitCall(call.name, shown).signature() if shown else call.name
    # Repeated identical steps (a parametrization's power iteration) collapse into one.
    steps: list[list[Any]] = []
    for step in d.then:
        sig = step.signature()
        if steps and steps[-1][0] == sig:
            steps[-1][1] += 1
        else:
            steps.append([sig, 1])
    for sig, count in steps:
        text += f" → {sig}" + (f" ×{count}" if count > 1 else "")
    return cut_text(text, _MAX_CALL)


def _is_default_arg(func: str, key: str, value: Any) -> bool:
    import inspect

    import torch

    fn = getattr(torch.nn.init, func, None)
    if fn is None:
        return False
    try:
        param = inspect.signature(fn).parameters.get(key)
    except (TypeError, ValueError):
        return False
    return (
        param is not None
        and param.default is not inspect.Parameter.empty
        and param.default == value
    )


def type_name(module_type: str | None) -> str:
    return module_type.rsplit(".", 1)[-1] if module_type else ""


# -- renderers -------------------------------------------------------------------------------


def render_table(report: Report, width: int = TABLE_WIDTH, hist: bool = False) -> str:
    """Parameters grouped under a heading line per module. "default init" is the traced call
    and its distribution (folded onto a second line when the row would not fit); "follows"
    is what the values follow ("default" when that is the default); "= default?" marks
    whether they match it (✓, ✗, ? when too few values, - when no default is known). With
    ``hist``, a last column draws each parameter's sampled values as a one-line histogram."""
    rows: list[tuple[str, ...]] = []
    sparks: list[str] = []
    for p in report.parameters:
        s = p.stats
        name = f"  {escape_text(p.param)}" + (" (buffer)" if p.is_buffer else "")
        call, label = default_parts(p.default)
        std = format_stat(s.std if s else None)
        if s is not None and (s.nan_count or s.inf_count):
            std += f" nan={s.nan_count} inf={s.inf_count}"
        rows.append((name, shape_label(p.shape), call, label, *_follows(p), std))
        if hist:
            from initscope.stats.histogram import sparkline

            sparks.append(sparkline(p.sample, HIST_WIDTH))
    w_hist = max([len("histogram"), *(len(h) for h in sparks)]) if hist else 0
    w_name = max([len("parameter"), *(len(r[0]) for r in rows)])
    w_shape = max([len("shape"), *(len(r[1]) for r in rows)])
    w_follows = max([len("follows"), *(len(r[4]) for r in rows)])
    w_mark = len("= default?")
    w_std = max([9, *(len(r[6]) for r in rows)])
    fixed = w_name + w_shape + w_follows + w_mark + w_std + 10 + (w_hist + 2 if hist else 0)
    # The default-init column gets what the others leave of the width (at least 24).
    budget = max(width - fixed, 24)
    rows = [(r[0], r[1], cut_text(r[2], budget), cut_text(r[3], budget), *r[4:]) for r in rows]
    w_call = max([len("default init"), *(len(r[2]) for r in rows)])
    w_label = max([0, *(len(r[3]) for r in rows)])
    # Labels line up in their own sub-column when everything fits; otherwise each row puts
    # its label after the call if that fits, or on a second line.
    aligned = fixed + w_call + 1 + w_label <= width
    w_default = w_call + 1 + w_label if aligned else max(width - fixed, w_call, w_label)

    def line(
        name: str, shape: str, default: str, follows: str, mark: str, std: str, spark: str = ""
    ) -> str:
        text = (
            f"{name:<{w_name}}  {shape:<{w_shape}}  {default:<{w_default}}  "
            f"{follows:<{w_follows}}  {mark:^{w_mark}}  {std:>{w_std}}"
        )
        if hist:
            text += f"  {spark:<{w_hist}}"
        return text.rstrip()

    out = [f"{escape_text(report.target)}  (torch {report.torch_version})", ""]
    header = line("parameter", "shape", "default init", "follows", "= default?", "std", "histogram")
    out += [header, "-" * len(header)]
    current: str | None = None
    for i, (p, (name, shape, call, label, follows, mark, std)) in enumerate(
        zip(report.parameters, rows, strict=True)
    ):
        spark = sparks[i] if hist else ""
        if p.module != current:
            current = p.module
            head = escape_text(p.module) or "(root)"
            kind = type_name(p.module_type)
            if kind and len(head) + 2 + len(kind) <= width:
                out.append(f"{head}  {kind}")
            else:
                out += [head, f"  ({kind})"] if kind else [head]
        inline = f"{call:<{w_call}} {label}" if aligned else f"{call} {label}"
        if len(inline.rstrip()) <= w_default:
            out.append(line(name, shape, inline.rstrip(), follows, mark, std, spark))
        else:
            out.append(line(name, shape, call, follows, mark, std, spark))
            if label:
                out.append(line("", "", label, "", "", ""))
        if p.tied_to:
            out.append(f"{'':{w_name}}  tied: {escape_text(', '.join(p.tied_to))}")
    out += ["", _summary_line(report)]
    return "\n".join(out) + "\n"


def _follows(p: ParameterReport) -> tuple[str, str]:
    if p.fit is None:
        return "-", "-"
    if p.matches_default is True:
        return "default", "✓"
    if p.matches_default is False:
        return cut_text(p.fit.label, 28), "✗"
    known = p.default is not None and p.default.is_known
    return cut_text(p.fit.label, 28), "?" if known else "-"


def cut_text(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def default_parts(d: DefaultInit | None) -> tuple[str, str]:
    if d is None:
        return "-", ""
    call = short_call(d)
    label = d.distribution.label()
    if d.partial:
        label += " +partial"
    if label == "custom":
        label = ""
    return call, label


def _summary_line(report: Report) -> str:
    s = report.summary()
    text = f"{_plural(s.parameters, 'parameter')}, {_plural(s.numel, 'element')}"
    if s.buffers:
        text += f", {_plural(s.buffers, 'buffer')}"
    if not report.has_model:
        return text + "; no model given, so no default init (pass --model or --spec)"
    if s.parameters:
        text += f"; default init known for {s.with_default} of {s.parameters}"
        if s.custom_default:
            text += f" ({s.custom_default} custom or untraced)"
        decided = s.at_default + s.differ + s.inconclusive
        if decided:
            text += (
                f"\n{_plural(s.at_default, 'parameter')} at their default, {s.differ} differ, "
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
            d.distribution.label() if d else "-",
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
    report: Report, fmt: OutputFormat, width: int = TABLE_WIDTH, hist: bool = False
) -> str:
    """``hist`` (table only) adds a one-line histogram of each parameter's values."""
    if hist and fmt is not OutputFormat.TABLE:
        raise ValueError(f"hist is a column of the table format, not of {fmt.value}")
    if fmt is OutputFormat.JSON:
        return json.dumps(report_to_dict(report), indent=2) + "\n"
    if fmt is OutputFormat.MARKDOWN:
        return render_markdown(report)
    if fmt is OutputFormat.CSV:
        return render_csv(report)
    return render_table(report, width, hist)


# -- explain ---------------------------------------------------------------------------------


def explanation_to_dict(e: Explanation) -> dict[str, Any]:
    return {
        "schema": "initscope.explain/1",
        "layer": e.layer,
        "arguments": dict(e.arguments),
        "representative": e.representative,
        "filled": list(e.filled),
        "parameters": [
            {
                "name": p.name,
                "shape": list(p.shape),
                "fan_in": p.fan_in,
                "fan_out": p.fan_out,
                "call": p.default.call.signature(),
                "default": default_to_dict(p.default),
                "formula": list(p.formula),
                "source": p.default.call.source,
                "torch_function": p.torch_function,
            }
            for p in e.parameters
        ],
    }


def render_explanation(e: Explanation, fmt: OutputFormat, width: int = TABLE_WIDTH) -> str:
    if fmt is OutputFormat.JSON:
        return json.dumps(explanation_to_dict(e), indent=2) + "\n"
    if fmt not in (OutputFormat.TABLE, OutputFormat.MARKDOWN):
        raise ValueError(f"explain renders as table, markdown or json, not {fmt.value}")
    args = ", ".join(f"{k}={v!r}" for k, v in e.arguments.items())
    lines = [f"{e.layer}({args})"]
    if e.filled and set(e.filled) == set(e.arguments):
        lines.append("  (no --arg given: these are small representative arguments)")
    elif e.filled:
        items = ", ".join(f"{k}={e.arguments[k]!r}" for k in e.filled)
        verb = "is a representative value" if len(e.filled) == 1 else "are representative values"
        lines.append(f"  ({items} {verb}, not given)")
    if not e.parameters:
        lines.append("  no parameters")
    for p in e.parameters:
        lines.append("")
        lines.append(f"{p.name}  {shape_label(p.shape)}")
        lines.append(f"  init     {p.default.call.signature()}")
        for step in p.default.then:
            lines.append(f"  then     {step.signature()}")
        lines.append(f"  gives    {p.default.distribution.label()}")
        for i, f in enumerate(p.formula):
            lines.append(f"  {'formula' if i == 0 else '':8} {f}")
        for c in p.default.partial:
            lines.append(f"  partial  {c.signature()}  (part of the tensor, afterwards)")
        if p.default.via:
            lines.append(f"  via      {' → '.join(p.default.via)}")
        if p.default.call.source:
            lines.append(f"  source   {p.default.call.source}")
        if p.torch_function:
            lines.append(f"  see      {p.torch_function}")
    text = "\n".join(lines) + "\n"
    if fmt is OutputFormat.MARKDOWN:
        return "```\n" + text + "```\n"
    return text
