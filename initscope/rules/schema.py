"""The rules-file format as one declarative JSON Schema, and a validator for the part of
JSON Schema it uses.

The same dictionary is published as ``configs/rules.schema.json`` (editors complete and check
rules files with it; ``initscope rules schema`` prints it) and is what :func:`validate`
checks a parsed rules file against, so the documentation and the checks cannot drift apart.
The validator implements only the keywords the schema uses (``SUPPORTED_KEYWORDS``); a test
keeps the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from initscope.io.yamlio import did_you_mean, shorten

__all__ = [
    "MATCH_KEYS",
    "MATCH_PROPERTIES",
    "RULES_SCHEMA",
    "SUPPORTED_KEYWORDS",
    "SchemaProblem",
    "validate",
]

MATCH_KEYS = ("type", "name", "param", "ndim")
_STR_OR_LIST = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    ]
}
_ARG_VALUE = {
    "description": "An argument of the init function: a number, a calculate_gain name for "
    "gain (relu, tanh, leaky_relu:0.2), a choice such as fan_out, or an arithmetic "
    "expression over numbers, vars, fan_in, fan_out and numel with sqrt() and log().",
    "type": ["number", "string"],
}

# The match keys, shared by rules files and expectations files.
MATCH_PROPERTIES: dict[str, Any] = {
    "type": {
        **_STR_OR_LIST,
        "description": "Module class name (Conv2d) or dotted path (torch.nn.Conv2d); "
        "subclasses match.",
    },
    "name": {
        "type": "string",
        "description": 'Glob on the module path ("encoder.*"), or "re:<regex>" for a regular '
        "expression.",
    },
    "param": {
        "type": "string",
        "description": 'Glob on the parameter\'s own name ("weight", "bias", "*_proj_weight"); '
        'default "*".',
    },
    "ndim": {
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "minItems": 2,
                "maxItems": 2,
            },
        ],
        "description": "Number of dims, or [min, max] inclusive.",
    },
}

RULES_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://initscope.dev/schema/rules.schema.json",
    "title": "initscope rules",
    "description": "Re-initialization rules for `initscope apply`: the first rule that "
    "matches a parameter decides its init.",
    "type": "object",
    "additionalProperties": False,
    "required": ["rules"],
    "properties": {
        "description": {"type": "string", "description": "Free text, ignored."},
        "seed": {
            "type": "integer",
            "minimum": 0,
            # torch.manual_seed takes at most 64 bits; 2**63 - 1 keeps it a signed int64.
            "maximum": 9223372036854775807,
            "description": "Seed of every parameter's generator; --seed overrides it.",
        },
        "vars": {
            "type": "object",
            "description": "Names usable in numeric expressions, e.g. n_layer: 12.",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": {"type": "number"},
        },
        "unmatched": {
            "enum": ["keep", "error", "default"],
            "description": "What happens to a parameter no rule matches: keep its values, "
            "fail, or re-run its default init. --unmatched overrides it.",
        },
        "rules": {
            "type": "array",
            "minItems": 1,
            "description": "Tried in order; the first rule that matches a parameter wins.",
            "items": {
                "type": "object",
                "required": ["init"],
                "properties": {
                    **MATCH_PROPERTIES,
                    "init": {
                        "type": "string",
                        "description": "A torch.nn.init function (trailing _ optional): "
                        "uniform, normal, trunc_normal, constant, ones, zeros, eye, dirac, "
                        "xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal, "
                        "orthogonal, sparse; or default (the module's own init) or keep.",
                    },
                },
                "additionalProperties": _ARG_VALUE,
            },
        },
    },
}

SUPPORTED_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "title",
        "description",
        "type",
        "properties",
        "additionalProperties",
        "required",
        "enum",
        "items",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "minLength",
        "anyOf",
        "propertyNames",
        "pattern",
    }
)

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class SchemaProblem:
    """Where in the document a value breaks the schema, and what was expected."""

    path: Path
    message: str


_TYPES: Mapping[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _type_ok(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[name])


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    kind = {dict: "a mapping", list: "a list", str: "a string", int: "an integer"}.get(
        type(value), f"a {type(value).__name__}"
    )
    if isinstance(value, str | int | float):
        return f"{kind} ({shorten(value)})"
    return kind


def _expected(schema: Mapping[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_expected(s) for s in schema["anyOf"])
    t = schema.get("type")
    names = [t] if isinstance(t, str) else list(t or [])
    words = {
        "object": "a mapping",
        "array": "a list",
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
    }
    text = " or ".join(words.get(n, n) for n in names)
    if "items" in schema and "array" in names:
        text += f" of {_expected(schema['items']).removeprefix('a ').removeprefix('an ')}s"
    return text or "something else"


def validate(value: Any, schema: Mapping[str, Any] = RULES_SCHEMA) -> list[SchemaProblem]:
    """Every place ``value`` breaks ``schema``, in document order."""
    return list(_validate(value, schema, ()))


def _validate(value: Any, schema: Mapping[str, Any], path: Path) -> Iterator[SchemaProblem]:
    if "anyOf" in schema:
        options = schema["anyOf"]
        if any(not validate(value, s) for s in options):
            return
        # Report the branch of the right type, if one is: its complaint is the useful one.
        for s in options:
            if "type" in s and _type_ok(value, s["type"]):
                yield from _validate(value, s, path)
                return
        yield SchemaProblem(path, f"expected {_expected(schema)}, got {_describe(value)}")
        return
    if "enum" in schema and value not in schema["enum"]:
        choices = [str(c) for c in schema["enum"]]
        hint = did_you_mean(str(value), choices) if isinstance(value, str) else ""
        yield SchemaProblem(
            path, f"expected one of {', '.join(choices)}, got {_describe(value)}{hint}"
        )
        return
    t = schema.get("type")
    if t is not None:
        names = [t] if isinstance(t, str) else list(t)
        if not any(_type_ok(value, n) for n in names):
            yield SchemaProblem(path, f"expected {_expected(schema)}, got {_describe(value)}")
            return
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        yield SchemaProblem(path, "expected a non-empty string")
    if isinstance(value, int | float) and not isinstance(value, bool):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        kind = "an integer" if schema.get("type") == "integer" else "a number"
        if lo is not None and value < lo:
            yield SchemaProblem(path, f"expected {kind} ≥ {lo}, got {shorten(value)}")
        elif hi is not None and value > hi:
            yield SchemaProblem(path, f"expected {kind} ≤ {hi}, got {shorten(value)}")
    if isinstance(value, list):
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
            size = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            plural = "" if size == "1" or size == "at least 1" else "s"
            yield SchemaProblem(path, f"expected a list of {size} item{plural}, got {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                yield from _validate(item, schema["items"], (*path, i))
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                yield SchemaProblem(path, f"missing required key {key!r}")
        names_schema = schema.get("propertyNames")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = (*path, str(key))
            if names_schema is not None and not re.fullmatch(names_schema["pattern"], str(key)):
                yield SchemaProblem(sub, f"{shorten(key)} is not a valid name (letters, digits, _)")
            if key in props:
                yield from _validate(item, props[key], sub)
            elif extra is False:
                yield SchemaProblem(
                    sub,
                    f"unknown key {shorten(key)}{did_you_mean(str(key), props)}; "
                    f"expected one of {', '.join(props)}",
                )
            elif isinstance(extra, Mapping):
                yield from _validate(item, extra, sub)
