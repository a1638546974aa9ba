"""A :class:`~initscope.gate.diff.DiffResult` as a table (largest relative change first) or
JSON (``initscope.diff/1``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from initscope.gate.diff import DiffResult, Status
from initscope.render import jsontext
from initscope.render.common import FORMATS, Format, escape_text

__all__ = [
    "diff_to_dict",
    "render_diff",
]


def diff_to_dict(result: DiffResult) -> dict[str, object]:
    def num(x: float | None) -> float | None:
        return x if x is not None and math.isfinite(x) else None

    return {
        "schema": "initscope.diff/1",
        "a": result.a,
        "b": result.b,
        "parameters": [
            {
                "name": e.name,
                "status": e.status.value,
                "shape_a": list(e.shape_a) if e.shape_a is not None else None,
                "shape_b": list(e.shape_b) if e.shape_b is not None else None,
                "dtype_a": e.dtype_a,
                "dtype_b": e.dtype_b,
                "rel_l2": num(e.rel_l2),
                "max_abs_diff": num(e.max_abs_diff),
                "cosine": num(e.cosine),
                "std_a": num(e.std_a),
                "std_b": num(e.std_b),
            }
            for e in result.entries
        ],
        "summary": {s.value: result.count(s) for s in Status},
        "largest_changes": [e.name for e in result.largest_changes()[:10]],
    }


def _statuses(result: DiffResult) -> Mapping[str, int]:
    return {s.value: result.count(s) for s in Status if result.count(s)}


def render_diff(result: DiffResult, fmt: Format | str = Format.TABLE) -> str:
    """A table, largest relative change first, then the summary; or JSON."""

    fmt = Format(fmt).require("diff", FORMATS["diff"])
    if fmt is Format.JSON:
        return jsontext.dumps(diff_to_dict(result)) + "\n"
    from initscope.knowledge.distributions import format_number as f

    order = {Status.CHANGED: 0, Status.SHAPE_CHANGED: 1, Status.DTYPE_CHANGED: 1}
    rows = sorted(
        result.entries,
        key=lambda e: (order.get(e.status, 2), -(e.rel_l2 or 0.0) if e.rel_l2 is not None else 0),
    )
    head = ("parameter", "status", "rel L2", "max |Δ|", "cosine", "std A", "std B")
    cells = [
        (
            escape_text(e.name),
            e.status.value,
            f(e.rel_l2, "-"),
            f(e.max_abs_diff, "-"),
            f(e.cosine, "-"),
            f(e.std_a, "-"),
            f(e.std_b, "-"),
        )
        for e in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]

    def line(c: tuple[str, ...]) -> str:
        parts = [f"{c[0]:<{widths[0]}}", f"{c[1]:<{widths[1]}}"]
        parts += [f"{x:>{w}}" for x, w in zip(c[2:], widths[2:], strict=True)]
        return "  ".join(parts).rstrip()

    out = [escape_text(f"{result.a}  →  {result.b}"), "", line(head), "-" * len(line(head))]
    out += [line(c) for c in cells]
    n = len(result.entries)
    counts = ", ".join(f"{v} {k}" for k, v in _statuses(result).items())
    out += ["", f"{n} parameter{'s' if n != 1 else ''}: {counts}"]
    return "\n".join(out) + "\n"
