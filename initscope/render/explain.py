"""An :class:`~initscope.knowledge.explanation.Explanation` as text, Markdown or JSON
(``initscope.explain/1``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from initscope.knowledge.explanation import Explanation
from initscope.render import jsontext
from initscope.render.common import FORMATS, TABLE_WIDTH, Format, default_to_dict, shape_label

__all__ = [
    "explanation_to_dict",
    "render_explanation",
]

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


def render_explanation(e: Explanation, fmt: Format | str, width: int = TABLE_WIDTH) -> str:
    fmt = Format(fmt).require("explain", FORMATS["explain"])
    if fmt is Format.JSON:
        return jsontext.dumps(explanation_to_dict(e)) + "\n"
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
        lines.append(f"  gives    {p.default.label()}")
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
    if fmt is Format.MARKDOWN:
        return "```\n" + text + "```\n"
    return text
