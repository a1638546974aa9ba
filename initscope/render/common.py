"""What every renderer shares: the output formats, escaping of text that comes from files,
and the short forms of numbers, shapes, calls and type names that tables print."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from initscope.knowledge.tracing import DefaultInit

__all__ = [
    "FORMATS",
    "HIST_WIDTH",
    "TABLE_WIDTH",
    "Format",
    "csv_cell",
    "cut_text",
    "default_parts",
    "default_to_dict",
    "escape_text",
    "finite",
    "format_stat",
    "plural",
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


class Format(str, Enum):
    """Every output format of every command (each command accepts those it can write; see
    :meth:`require`). ``text`` is ``check``'s name for its table: the two are one format."""

    TABLE = "table"
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"
    CSV = "csv"
    JUNIT = "junit"
    GITHUB = "github"

    @property
    def plain(self) -> Format:
        """TEXT as TABLE: the human-readable form."""
        return Format.TABLE if self is Format.TEXT else self

    def require(self, command: str, allowed: Iterable[Format]) -> Format:
        """This format (TEXT read as TABLE) if ``command`` can write it, else a usage error
        that lists what it can write."""
        from initscope.errors import InitScopeError

        allowed = tuple(allowed)
        if self.plain in allowed:
            return self.plain
        names = ", ".join(f.value for f in allowed[:-1]) + f" or {allowed[-1].value}"
        raise InitScopeError(f"{command} has no {self.value} format", f"use --format {names}")


# What each command writes (check calls its table "text": the two are one format).
FORMATS: dict[str, tuple[Format, ...]] = {
    "report": (Format.TABLE, Format.JSON, Format.MARKDOWN, Format.CSV),
    "explain": (Format.TABLE, Format.MARKDOWN, Format.JSON),
    "apply": (Format.TABLE, Format.JSON),
    "rules validate": (Format.TABLE, Format.JSON),
    "check": (Format.TABLE, Format.JSON, Format.JUNIT, Format.GITHUB),
    "diff": (Format.TABLE, Format.JSON),
}

# The name the format enum had when report was its only user; kept for scripts that import it.
OutputFormat = Format


# -- names from files are data -----------------------------------------------------------------

# Characters that act on a terminal or on how text reads rather than showing: C0 controls,
# DEL, C1 controls (ESC [ and CSI start escape sequences that clear screens, set titles,
# write to the clipboard), and the Unicode bidirectional controls that reorder what a
# reader sees (the "Trojan Source" characters, CVE-2021-42574).
_CONTROL_RANGES = (
    (0x00, 0x1F),
    (0x7F, 0x9F),
    (0x061C, 0x061C),
    (0x200E, 0x200F),
    (0x202A, 0x202E),
    (0x2066, 0x2069),
)
_CONTROL_CHARS = "".join(chr(c) for lo, hi in _CONTROL_RANGES for c in range(lo, hi + 1))
_CONTROL = re.compile(f"[{re.escape(_CONTROL_CHARS)}]")


@functools.lru_cache(maxsize=8)
def _control_but(keep: str) -> re.Pattern[str]:
    """The control characters but those in ``keep``: the newlines of a whole rendered output
    then never reach the replacement callback (one Python call per line of a JSON report)."""
    if not keep:
        return _CONTROL
    return re.compile(f"[{re.escape(''.join(c for c in _CONTROL_CHARS if c not in keep))}]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_text(text: str, keep: str = "") -> str:
    """``text`` with every control character shown as ``\\xNN`` (``\\uNNNN`` for the bidi
    controls), so a tensor name from a file cannot move the cursor, clear a terminal or
    forge a line; those in ``keep`` stay (``"\\n\\t"`` for a whole rendered output, whose
    lines they lay out)."""
    return _control_but(keep).sub(_shown, text)


def csv_cell(text: str) -> str:
    """A text cell a spreadsheet will not run: one that starts with ``= + - @`` (or a tab or
    CR) is a formula to Excel and LibreOffice, so it gets a leading ``'`` (OWASP, "CSV
    Injection"); control characters are escaped."""
    text = escape_text(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# -- data ------------------------------------------------------------------------------------


def finite(x: float | None) -> float | None:
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
        "args": {k: finite(v) if isinstance(v, float) else v for k, v in d.call.args.items()},
        "family": dist.family.value,
        "low": finite(dist.low),
        "high": finite(dist.high),
        "mean": finite(dist.mean),
        "std": finite(dist.std),
        "value": finite(dist.value),
        "label": d.label(),
        "source": d.call.source,
        "then": [c.signature() for c in d.then],
        "partial_writes": [c.signature() for c in d.partial],
        "via": list(d.via),
        # derived and deterministic defaults: the formula their values follow
        "expression": d.recipe.expression() if d.recipe is not None else None,
    }


# -- text helpers ----------------------------------------------------------------------------


def format_stat(x: float | None) -> str:
    from initscope.knowledge.distributions import format_number

    return format_number(x, missing="-")


def plural(n: int, word: str) -> str:
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


def cut_text(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def default_parts(d: DefaultInit | None) -> tuple[str, str]:
    if d is None:
        return "-", ""
    call = short_call(d)
    label = d.label()
    if d.partial:
        label += " +partial"
    if label == "custom":
        label = ""
    return call, label
