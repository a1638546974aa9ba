"""The safe arithmetic used in rules: what it computes, and what it refuses."""

from __future__ import annotations

import math

import pytest

from initscope.rules.expressions import ExpressionError, parse_expression


@pytest.mark.parametrize(
    ("text", "env", "value"),
    [
        ("0.02 / sqrt(2 * n_layer)", {"n_layer": 12}, 0.02 / math.sqrt(24)),
        ("1 / sqrt(fan_in)", {"fan_in": 64}, 0.125),
        ("2 ** -3", {}, 0.125),
        ("-(1 + 2) * 3", {}, -9.0),
        ("log(numel)", {"numel": math.e}, 1.0),
        ("+4", {}, 4.0),
        ("1e-6", {}, 1e-6),
    ],
)
def test_evaluates(text: str, env: dict[str, float], value: float) -> None:
    assert parse_expression(text).evaluate(env) == pytest.approx(value)


def test_names_are_reported() -> None:
    assert parse_expression("a * sqrt(fan_in) + b").names == {"a", "b", "fan_in"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("os.system", "is not allowed"),
        ("(lambda: 1)()", "is not allowed"),
        ("'a'", "a quoted string ('a') is not allowed"),
        ("1 < 2", "is not allowed"),
        ("7 // 2", "operator FloorDiv is not allowed"),
        ("sqrt", "sqrt is a function"),
        ("sqrt(1, 2)", "sqrt() takes exactly one argument"),
        ("1 +", "invalid expression"),
        ("", "empty expression"),
        ("True", "True is not a number"),
        ("x" * 600, "longer than 500"),
    ],
)
def test_refuses(text: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=None) as info:
        parse_expression(text)
    assert message in info.value.message


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("1 / (fan_in - fan_in)", {"fan_in": 3}, "divides by zero"),
        ("sqrt(-1)", {}, "outside the domain of sqrt/log"),
        ("log(0)", {}, "outside the domain of sqrt/log"),
        ("10.0 ** 400", {}, "overflows"),
        ("(-8) ** 0.5", {}, "not a finite real number"),
        ("y", {}, "unknown name 'y'"),
    ],
)
def test_evaluation_errors(text: str, env: dict[str, float], message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression(text).evaluate(env)
    assert message in info.value.message


def test_deep_nesting_evaluates_or_is_an_error() -> None:
    assert parse_expression("(" * 150 + "1" + ")" * 150).evaluate({}) == 1.0
    with pytest.raises(ExpressionError, match="invalid expression"):
        parse_expression("(" * 240 + "1" + ")" * 240)
    assert parse_expression("-" * 498 + "1").evaluate({}) == 1.0
