"""Expectations files for ``initscope check --expect``: what each parameter's statistics must
be, with the same match keys as rules files, and the health checks' settings.

```yaml
checks:                       # every check that matches a parameter applies
  - type: Linear
    param: weight
    std: [0.005, 0.05]        # [min, max]; null for open
    mean: [-0.01, 0.01]
    abs_max: [null, 1.0]
    follows: normal(std=0.02) # an init as in rules files: xavier_uniform, default, zeros, ...
health: {abs_max: 100, identical: false}
```

Validated like rules files: one declarative schema, then each ``follows`` as an init with its
arguments, every problem reported with ``file:line:col``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from initscope.errors import SpecError
from initscope.io.yamlio import Located, load_yaml
from initscope.rules.language import (
    Collector,
    Rule,
    RulesError,
    gain_names,
    init_functions,
    parse_rule,
)
from initscope.rules.schema import MATCH_KEYS, MATCH_PROPERTIES, SchemaProblem, validate

__all__ = [
    "EXPECT_SCHEMA",
    "Check",
    "Expectations",
    "Health",
    "load_expectations",
    "parse_follows",
]

_RANGE = {
    "type": "array",
    "minItems": 2,
    "maxItems": 2,
    "items": {"type": ["number", "null"]},
    "description": "[min, max], inclusive; null for an open end.",
}
EXPECT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://initscope.dev/schema/expect.schema.json",
    "title": "initscope expectations",
    "description": "Expectations for `initscope check --expect`.",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "description": {"type": "string"},
        "vars": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": {"type": "number"},
        },
        "checks": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    **MATCH_PROPERTIES,
                    "std": _RANGE,
                    "mean": _RANGE,
                    "abs_max": _RANGE,
                    "follows": {
                        "type": ["string", "object"],
                        "description": "An init the values must follow: normal(std=0.02), "
                        "xavier_uniform, kaiming_uniform(a=sqrt(5)), zeros, constant(1.0), "
                        "orthogonal, default; or a mapping {init: normal, std: 0.02}.",
                    },
                },
            },
        },
        "health": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "nonfinite": {"type": "boolean", "description": "NaN/Inf count must be 0."},
                "zeros": {
                    "type": "boolean",
                    "description": "No weight of >= 2 dims may be all zeros.",
                },
                "abs_max": {
                    "type": ["number", "null", "boolean"],
                    "description": "Bound on every |value| (default 1e4); null or false: off.",
                },
                "uninitialized": {
                    "type": "boolean",
                    "description": "No values such as torch.empty leaves (1e29..1e38, or "
                    "many denormals).",
                },
                "identical": {
                    "type": "boolean",
                    "description": "No two untied parameters of >= 1000 elements equal.",
                },
            },
        },
    },
}

# Default bound on |value|: no init torch ships produces values near it (kaiming on a fan_in
# of 1 with gain sqrt(2) bounds at 2.45), while blown-up or garbage weights exceed it.
DEFAULT_ABS_MAX = 1e4


@dataclass(frozen=True)
class Health:
    """The always-on checks and their settings."""

    nonfinite: bool = True
    zeros: bool = True
    abs_max: float | None = DEFAULT_ABS_MAX
    uninitialized: bool = True
    identical: bool = True


@dataclass(frozen=True)
class Check:
    """One expectation: what it matches, and the bounds or init the values must meet."""

    match: Rule  # match keys only; its init is "keep"
    std: tuple[float | None, float | None] | None = None
    mean: tuple[float | None, float | None] | None = None
    abs_max: tuple[float | None, float | None] | None = None
    follows: Rule | None = None  # the init the values must follow, as a rule would apply it
    follows_text: str | None = None

    @property
    def label(self) -> str:
        return self.match.label


@dataclass(frozen=True)
class Expectations:
    """A checked expectations file."""

    checks: tuple[Check, ...] = ()
    health: Health = Health()
    vars: Mapping[str, float] = field(default_factory=dict)
    source: str = "<expect>"


# Matched against the stripped text: with \s* on both sides of the optional call, a name
# followed by many spaces and one stray character took time quadratic in the spaces.
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?", re.S)


def _split_args(inner: str) -> list[str]:
    """Split ``a=1, b=sqrt(2), c`` at the commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        current += ch
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts]


def _number(text: str) -> float | int | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_follows(text: str) -> dict[str, Any] | str:
    """``normal(std=0.02)`` → ``{"init": "normal", "std": 0.02}``; a message on failure.

    Positional arguments go where they fit: a string that is one of an argument's choices
    (``kaiming_uniform(relu, fan_in)``, as identification labels spell it) to that argument,
    a number to the next numeric argument (``constant(1.0)``, ``uniform(-0.1, 0.1)``).
    ``lecun_normal`` is ``kaiming_normal(nonlinearity=linear)``: N(0, 1/√fan_in).
    """
    m = _CALL.fullmatch(text.strip())
    if m is None:
        return f"cannot read {text!r} as an init; write e.g. normal(std=0.02) or xavier_uniform"
    name, inner = m.group(1), m.group(2)
    if name == "lecun_normal" and not inner:
        return {"init": "kaiming_normal", "nonlinearity": "linear", "mode": "fan_in"}
    out: dict[str, Any] = {"init": name}
    fn = init_functions().get(name if name.endswith("_") else f"{name}_")
    numeric = [a.name for a in fn.args.values() if a.kind != "choice"] if fn else []
    for part in _split_args(inner or ""):
        key, eq, value = part.partition("=")
        if eq:
            out[key.strip()] = _number(value.strip())
            continue
        value = key.strip()
        if fn is None:
            return f"{name}: positional argument {value!r}; write name=value"
        choice = next(
            (a.name for a in fn.args.values() if a.kind == "choice" and value in a.choices),
            None,
        )
        if choice is None and value in gain_names() and "gain" in fn.args:
            choice = "gain"
        if choice is not None:
            out[choice] = value
            continue
        slot = next((n for n in numeric if n not in out), None)
        if slot is None:
            return f"{name} takes no more positional arguments (at {value!r}); write name=value"
        out[slot] = _number(value)
    return out


def load_expectations(path: str | Path) -> Expectations:
    """Read and check an expectations file; raise a :class:`RulesError` listing every
    problem."""
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"{p} is a directory, not an expectations file", "give a .yaml file")
    doc = load_yaml(p)
    return parse_expectations(doc)


def parse_expectations(doc: Located) -> Expectations:
    problem = Collector(doc)
    summary = "in the expectations; nothing was checked"
    data = doc.data
    if data is None:
        problem((), "the expectations file is empty", "add a `checks:` list or `health:`")
        raise RulesError(problem.problems, summary)
    for sp in validate(data, EXPECT_SCHEMA):
        problem(sp.path, sp.message, _hint(sp))
    if not isinstance(data, dict):
        raise RulesError(problem.problems, summary)
    vars_: dict[str, float] = {}
    raw_vars = data.get("vars")
    for k, v in (raw_vars if isinstance(raw_vars, dict) else {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            try:
                vars_[str(k)] = float(v)
            except OverflowError:
                problem(("vars", str(k)), f"{k!r} is too large a number", "use a smaller one")
    checks: list[Check] = []
    raw_checks = data.get("checks")
    for i, raw in enumerate(raw_checks if isinstance(raw_checks, list) else []):
        if not isinstance(raw, dict):
            continue
        check = _parse_check(doc, i, raw, vars_, problem)
        if check is not None:
            checks.append(check)
    health = _parse_health(data.get("health"))
    raw_health = data.get("health")
    if isinstance(raw_health, dict):
        bound = raw_health.get("abs_max")
        if isinstance(bound, int | float) and not isinstance(bound, bool) and bound <= 0:
            problem(
                ("health", "abs_max"),
                f"expected a bound > 0, got {bound}",
                "write e.g. abs_max: 100, or null to turn the check off",
            )
    if problem.problems:
        raise RulesError(problem.problems, summary)
    return Expectations(tuple(checks), health, vars_, doc.file)


def _hint(sp: SchemaProblem) -> str | None:
    return "remove or rename it" if sp.message.startswith("unknown key") else None


def _range(
    doc: Located, path: tuple[str | int, ...], raw: Any, problem: Collector
) -> tuple[float | None, float | None] | None:
    if not (isinstance(raw, list) and len(raw) == 2):
        return None
    if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in raw):
        return None  # the schema has said what is wrong
    try:
        lo, hi = (None if v is None else float(v) for v in raw)
    except OverflowError:
        problem(path, "a bound is too large a number", "write a float-sized number")
        return None
    if lo is not None and hi is not None and lo > hi:
        problem(path, f"[{raw[0]}, {raw[1]}] is empty", "write [min, max]")
    return lo, hi


def _parse_check(
    doc: Located, i: int, raw: Mapping[str, Any], vars_: Mapping[str, float], problem: Collector
) -> Check | None:
    base = ("checks", i)
    before = len(problem.problems)
    matcher = {k: raw[k] for k in MATCH_KEYS if k in raw}
    match = parse_rule(doc, base, i, {**matcher, "init": "keep"}, vars_, problem)
    follows: Rule | None = None
    text: str | None = None
    raw_follows = raw.get("follows")
    if raw_follows is not None:
        fpath = (*base, "follows")
        parsed: dict[str, Any] | None = None
        if isinstance(raw_follows, str):
            text = raw_follows
            result = parse_follows(raw_follows)
            if isinstance(result, str):
                problem(fpath, result)
            else:
                parsed = result
        elif isinstance(raw_follows, dict):
            parsed = dict(raw_follows)
            text = ", ".join(f"{k}={v}" for k, v in parsed.items())
        if parsed is not None:
            if "init" not in parsed:
                problem(fpath, "missing required key 'init'", "write {init: normal, std: 0.02}")
            else:
                # A mapping's keys have their own locations; the parts of a string point
                # at the string (Located.where falls back to the nearest located node).
                follows = parse_rule(doc, fpath, i, parsed, vars_, problem)
                if follows is not None and follows.init == "keep":
                    problem(fpath, "follows: keep checks nothing", "name an init, or drop it")
    std = _range(doc, (*base, "std"), raw.get("std"), problem)
    mean = _range(doc, (*base, "mean"), raw.get("mean"), problem)
    abs_max = _range(doc, (*base, "abs_max"), raw.get("abs_max"), problem)
    if len(problem.problems) > before or match is None:
        return None
    return Check(match, std, mean, abs_max, follows, text)


def _parse_health(raw: Any) -> Health:
    if not isinstance(raw, dict):
        return Health()
    abs_max = raw.get("abs_max", DEFAULT_ABS_MAX)
    bound: float | None
    if abs_max is None or abs_max is False:
        bound = None
    elif isinstance(abs_max, int | float) and not isinstance(abs_max, bool):
        try:
            bound = float(abs_max)
        except OverflowError:
            bound = None
    else:
        bound = DEFAULT_ABS_MAX  # true, or a value the schema has already refused
    return Health(
        nonfinite=bool(raw.get("nonfinite", True)),
        zeros=bool(raw.get("zeros", True)),
        abs_max=bound,
        uninitialized=bool(raw.get("uninitialized", True)),
        identical=bool(raw.get("identical", True)),
    )
