"""Safe arithmetic for rule arguments: ``std: "0.02 / sqrt(2 * n_layer)"``.

The text is parsed with :mod:`ast` and only a whitelist of nodes is accepted: numbers,
names, ``+ - * / **``, unary ``-``/``+``, parentheses and the functions ``sqrt`` and
``log``. Nothing is ever passed to ``eval``; evaluation walks the checked tree.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "FUNCTIONS",
    "Expression",
    "ExpressionError",
    "parse_expression",
]

FUNCTIONS: Mapping[str, Callable[[float], float]] = {"sqrt": math.sqrt, "log": math.log}
_BINARY: Mapping[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
# Longer texts are not arithmetic a person writes in a rules file; the cap also bounds the
# parser's recursion on hostile input.
_MAX_LENGTH = 500


class ExpressionError(ValueError):
    """An expression that cannot be parsed or evaluated; ``column`` is 1-based when known."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


@dataclass(frozen=True)
class Expression:
    """A checked arithmetic expression and the names it uses."""

    text: str
    names: frozenset[str]
    _tree: ast.expr

    def evaluate(self, env: Mapping[str, float]) -> float:
        """The value with ``env`` supplying every name; an unknown name, a division by zero,
        a math domain error or an overflow raise :class:`ExpressionError`."""
        try:
            value = _eval(self._tree, env)
        except ZeroDivisionError:
            raise ExpressionError(f"{self.text!r} divides by zero") from None
        except TypeError:
            # sqrt/log of a complex number ((-8) ** 0.5 is complex in Python).
            raise ExpressionError(f"{self.text!r} is not a real number") from None
        except OverflowError:
            raise ExpressionError(f"{self.text!r} overflows") from None
        except ValueError as exc:
            if isinstance(exc, ExpressionError):
                raise
            raise ExpressionError(
                f"{self.text!r} is outside the domain of sqrt/log (a negative or zero argument)"
            ) from None
        if isinstance(value, complex) or not math.isfinite(value):
            raise ExpressionError(f"{self.text!r} is not a finite real number ({value})")
        return float(value)

    def __str__(self) -> str:
        return self.text


def _eval(node: ast.expr, env: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)  # _check admits only numbers
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise ExpressionError(f"unknown name {node.id!r}", node.col_offset + 1)
        return float(env[node.id])
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, env), _eval(node.right, env)
        # float ** raises OverflowError itself; a negative base to a fractional power gives
        # a complex number, rejected by evaluate().
        return _BINARY[type(node.op)](left, right)
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return FUNCTIONS[node.func.id](_eval(node.args[0], env))


def _check(node: ast.AST, names: set[str]) -> None:
    col = getattr(node, "col_offset", None)
    at = None if col is None else col + 1
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            raise ExpressionError(
                f"a quoted string ({node.value!r}) is not allowed in an expression; "
                "write numbers without quotes",
                at,
            )
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ExpressionError(f"{node.value!r} is not a number", at)
        return
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise ExpressionError(f"{node.id} is a function; call it: {node.id}(x)", at)
        names.add(node.id)
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check(node.operand, names)
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, names)
        _check(node.right, names)
        return
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        func = node.func.id
        if func not in FUNCTIONS:
            raise ExpressionError(
                f"unknown function {ast.unparse(node.func)!r}; only sqrt and log are allowed", at
            )
        if len(node.args) != 1 or node.keywords:
            raise ExpressionError(f"{func}() takes exactly one argument", at)
        _check(node.args[0], names)
        return
    if isinstance(node, ast.BinOp):
        op = type(node.op).__name__
        raise ExpressionError(f"operator {op} is not allowed; use + - * / **", at)
    raise ExpressionError(
        f"{ast.unparse(node)!r} is not allowed: only numbers, names, + - * / ** and sqrt()/log()",
        at,
    )


def parse_expression(text: str) -> Expression:
    """Parse and check ``text``; raise :class:`ExpressionError` naming what is not allowed."""
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"expression longer than {_MAX_LENGTH} characters")
    source = text.strip()
    if not source:
        raise ExpressionError("empty expression")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        why = f": {exc.msg}" if exc.msg and exc.msg != "invalid syntax" else ""
        raise ExpressionError(f"invalid expression {text!r}{why}", exc.offset) from None
    except (ValueError, RecursionError, MemoryError):
        raise ExpressionError(f"invalid expression {text!r}") from None
    names: set[str] = set()
    try:
        _check(tree.body, names)
    except RecursionError:
        raise ExpressionError(f"expression {text!r} is nested too deeply") from None
    return Expression(text, frozenset(names), tree.body)
