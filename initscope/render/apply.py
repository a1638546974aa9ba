"""Rendering what ``initscope apply`` plans or did: a text table and account, or JSON.

JSON (``--format json``) is a public contract, schema ``initscope.apply/1``: the target,
rules file, seed, output (null on a dry run), one entry per parameter (see
:func:`plan_to_dict`), the rules that matched nothing, the parameters no rule
covered, and the warnings.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from initscope.naming import dtype_name
from initscope.render import jsontext
from initscope.render.common import FORMATS, Format, escape_text, finite
from initscope.rules.apply import ApplyResult
from initscope.rules.plan import Action, Plan, shape_tuple

__all__ = [
    "APPLY_SCHEMA",
    "apply_to_dict",
    "plan_to_dict",
    "render_apply",
    "summary_lines",
]

APPLY_SCHEMA = "initscope.apply/1"


def apply_to_dict(result: ApplyResult) -> dict[str, Any]:
    plan = result.plan
    counts = Counter(e.action.value for e in plan.entries)
    return {
        "schema": APPLY_SCHEMA,
        "target": result.target,
        "rules_file": result.rules_file,
        "dry_run": result.output is None,
        "output": None if result.output is None else str(result.output),
        **plan_to_dict(plan),
        "summary": {
            "parameters": len(plan.entries),
            "changed": len(plan.changed),
            **{a.value: counts.get(a.value, 0) for a in Action},
        },
        "warnings": plan.warnings(),
    }


def summary_lines(plan: Plan) -> list[str]:
    """What the run did with the parameters, and what the rules missed."""
    counts = Counter(e.action for e in plan.entries)
    parts = [f"{counts[Action.INIT]} by an init rule"]
    if counts[Action.DEFAULT]:
        parts.append(f"{counts[Action.DEFAULT]} to their default")
    if counts[Action.KEEP]:
        parts.append(f"{counts[Action.KEEP]} kept by a rule")
    if counts[Action.TIED]:
        parts.append(f"{counts[Action.TIED]} tied to another")
    n = len(plan.entries)
    lines = [f"{n} parameter{'s' if n != 1 else ''}: {', '.join(parts)}"]
    missed = plan.unmatched
    if missed:
        what = {
            "keep": "left as they were",
            "default": "re-initialized to their default",
            "error": "an error",
        }[plan.unmatched_policy.value]
        names = ", ".join(
            f"{escape_text(e.site.name)} {shape_tuple(e.site.shape)}" for e in missed[:10]
        )
        more = f", and {len(missed) - 10} more" if len(missed) > 10 else ""
        lines.append(
            f"{len(missed)} not covered by any rule (unmatched: {plan.unmatched_policy}, "
            f"{what}): {names}{more}"
        )
    else:
        lines.append("every parameter is covered by a rule")
    return lines


def _table(plan: Plan) -> list[str]:
    rows = []
    for e in plan.entries:
        rule = f"rules[{e.rule.index}] line {e.rule.line}" if e.rule is not None else "no rule"
        rows.append(
            (escape_text(e.site.name), shape_tuple(e.site.shape), rule, escape_text(e.describe()))
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_HEAD)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()

    header = line(_HEAD)
    return [header, "-" * len(header), *(line(r) for r in rows)]


_HEAD = ("parameter", "shape", "rule", "init")


def render_apply(result: ApplyResult, fmt: Format | str = Format.TABLE) -> str:
    """``table``: on a dry run every parameter's decision, then the account; ``json``: the
    ``initscope.apply/1`` document."""
    fmt = Format(fmt).require("apply", FORMATS["apply"])
    if fmt is Format.JSON:
        return jsontext.dumps(apply_to_dict(result), allow_nan=False) + "\n"
    plan = result.plan
    out: list[str] = []
    if result.output is None:
        where = escape_text(f"{result.target} with {result.rules_file}")
        out += [f"plan for {where} (seed {plan.seed})", ""]
        out += _table(plan)
        out.append("")
    out += summary_lines(plan)
    if result.output is not None:
        out.append(f"wrote {escape_text(str(result.output))} (seed {plan.seed})")
    else:
        out.append("dry run: nothing was written")
    return "\n".join(out) + "\n"


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data (the ``initscope.apply/1`` parameter list and summary)."""
    params = []
    for e in plan.entries:
        d = e.distribution
        params.append(
            {
                "name": e.site.name,
                "module": e.site.module,
                "param": e.site.param,
                "type": e.site.module_class.__name__ if e.site.module_class else None,
                "shape": list(e.site.shape),
                "dtype": dtype_name(e.site.dtype),
                "rule": None
                if e.rule is None
                else {"index": e.rule.index, "line": e.rule.line, "init": e.rule.init},
                "action": e.action.value,
                "init": e.init
                if e.action is Action.INIT
                else ("default" if e.action is Action.DEFAULT else None),
                "args": dict(e.args),
                "distribution": None
                if d is None
                else {
                    "family": d.family.value,
                    "low": finite(d.low),
                    "high": finite(d.high),
                    "mean": finite(d.mean),
                    "std": finite(d.std),
                    "value": finite(d.value),
                    "label": d.label(),
                },
                "default_via": e.default_via,
                "tied_to": e.site.tied_to,
                "description": e.describe(),
            }
        )
    return {
        "parameters": params,
        "unused_rules": [{"index": r.index, "line": r.line} for r in plan.unused],
        "unmatched": [e.site.name for e in plan.unmatched],
        "unmatched_policy": plan.unmatched_policy.value,
        "tie_conflicts": [
            {
                "name": c.name,
                "tied_to": c.tied_to,
                "rule": None if c.rule is None else c.rule.index,
                "winner": None if c.winner is None else c.winner.index,
            }
            for c in plan.conflicts
        ],
        "seed": plan.seed,
    }
