"""Values a chain of elementwise ops computed, recorded so they can be computed again.

Init code that is not torch's often builds a known distribution from a draw by arithmetic:
timm's ``trunc_normal_`` is ``uniform_ → erfinv_ → mul_ → add_ → clamp_``
(timm/layers/weight_init.py ``_trunc_normal_``), Mamba's time-step bias is
``x + log(-expm1(-x))`` with ``x = exp(U(log dt_min, log dt_max))``
(transformers/models/mamba/modeling_mamba.py ``init_mamba_weights``), and Mamba's ``A_log`` is
``log(arange(1, n + 1))`` expanded over the rows, with no draw at all. A :class:`Recipe` records
such a chain: root steps (a draw with its distribution, a constant, or values the code gives:
``arange``, ``linspace``, ``tensor``) and at most :data:`MAX_STEPS` steps from a fixed
allow-list of elementwise ops with number arguments, or ops on earlier steps of the same
recipe. Two replays make it useful:

- :func:`probe` runs a recipe with draws on :data:`PROBE_SIZE` fresh values per draw (float64,
  a fixed seed), elementwise: a sample of the distribution the chain produces, which values
  can be tested against (two-sample tests, :mod:`initscope.knowledge.identification`);
- :func:`replay` runs a recipe without draws at the tensor's real shape: the values
  themselves, for comparing a deterministic parameter exactly.

Safety: a recipe holds op names, numbers and shapes, nothing callable. Replay looks each op
name up in the fixed tables of this module (never ``getattr(torch, name)``), checks every
size against :data:`MAX_REPLAY` before it allocates, checks every strided read against the
bounds of what it reads, and gives None for anything it does not know.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from initscope.knowledge.distributions import Distribution, Family, format_number

__all__ = [
    "MAX_REPLAY",
    "MAX_STEPS",
    "MAX_VALUES",
    "POSITIONAL",
    "PROBE_SIZE",
    "ProbeStats",
    "Recipe",
    "Ref",
    "Step",
    "as_number",
    "closed_form",
    "constant_fold",
    "is_op_name",
    "parse_op",
    "probe",
    "probe_stats",
    "replay",
]

# A chain longer than this is not recorded (the tensor's default is then custom, as before):
# timm's trunc_normal_ is 5 steps, Mamba's dt bias 8.
MAX_STEPS = 32
# Fresh values per draw in a probe: the two-sample KS test against 4,096 sampled values then
# has an effective size of 3,855, within 6% of a one-sample test against the exact CDF.
PROBE_SIZE = 1 << 16
PROBE_SEED = 0
# The most elements a replay at the real shape may hold in any step: 8 MiB of float64 each.
# Deterministic parameters are position embeddings and state matrices (Mamba-2.8B's A_log is
# 5,120 x 16 = 81,920 values); larger ones are not replayed.
MAX_REPLAY = 1 << 20
# The most numbers torch.tensor(data) may give a recipe root.
MAX_VALUES = 4096


@dataclass(frozen=True)
class Ref:
    """An earlier step's values, by index in the recipe."""

    index: int


Arg = Ref | float | None


@dataclass(frozen=True)
class Step:
    """One step: an op name from this module's tables, its arguments (earlier steps and
    numbers, in the op's order), and for roots and shape ops the output ``shape`` and integer
    parameters ``ints``. ``token`` tells draws apart: two steps with the same token are the
    same draw (the tracer's event number, and the views it was read through)."""

    op: str
    args: tuple[Arg, ...] = ()
    shape: tuple[int, ...] = ()
    ints: tuple[int, ...] = ()
    token: tuple[Any, ...] | None = None

    def remapped(self, mapping: Sequence[int]) -> Step:
        args = tuple(Ref(mapping[a.index]) if isinstance(a, Ref) else a for a in self.args)
        return replace(self, args=args)


# -- the allow-list --------------------------------------------------------------------------

_DRAWS = ("uniform", "normal", "trunc_normal")
_DETERMINISTIC_ROOTS = ("arange", "linspace", "logspace", "eye", "values")
_ROOTS = (*_DRAWS, "full", *_DETERMINISTIC_ROOTS)

_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "neg": torch.neg,
    "abs": torch.abs,
    "exp": torch.exp,
    "exp2": torch.exp2,
    "expm1": torch.expm1,
    "log": torch.log,
    "log2": torch.log2,
    "log10": torch.log10,
    "log1p": torch.log1p,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "reciprocal": torch.reciprocal,
    "square": torch.square,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "tanh": torch.tanh,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "atan": torch.atan,
    "asinh": torch.asinh,
    "sigmoid": torch.sigmoid,
    "erf": torch.erf,
    "erfc": torch.erfc,
    "erfinv": torch.erfinv,
    "sign": torch.sign,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "trunc": torch.trunc,
    "round": torch.round,
    "relu": torch.relu,
}


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], torch.Tensor]:
    return lambda a, b: torch.as_tensor(fn(a, b), dtype=torch.float64)


_BINARY: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "add": _binary(lambda a, b: a + b),
    "sub": _binary(lambda a, b: a - b),
    "mul": _binary(lambda a, b: a * b),
    "div": _binary(lambda a, b: a / b),
    "pow": _binary(lambda a, b: a**b),
    "maximum": lambda a, b: torch.maximum(_tensor(a), _tensor(b)),
    "minimum": lambda a, b: torch.minimum(_tensor(a), _tensor(b)),
}
# Ops that move values rather than compute them: positions matter only for replays at the
# real shape; for a probe (iid values) the three below them are the identity.
POSITIONAL = ("repeat", "tile", "flip", "cumsum", "cumprod", "outer", "cat", "stack")
# The most tensors one cat/stack joins in a recipe.
_MAX_JOINED = 64
_RELAYOUT = ("reshape", "broadcast", "gather")
_OPS = frozenset((*_ROOTS, *_UNARY, *_BINARY, "clamp", *POSITIONAL, *_RELAYOUT))
# Ops whose result keeps its own shape in a recipe (positions, or a layout, matter).
_MOVING = frozenset((*POSITIONAL, *_RELAYOUT))


_F64 = torch.float64


def _cpu(x: Any) -> torch.Tensor:
    """Numbers as a float64 CPU tensor, also while a model is built under
    ``torch.device("meta")`` (which would otherwise place it on meta)."""
    return torch.tensor(x, dtype=_F64, device="cpu")


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else _cpu(x)


# Names torch gives an op in __torch_function__, to the op of this module (in-place ``_``
# variants are stripped first). ``reverse``: the tensor is the right operand (2 - x).
_ALIASES = {
    "__neg__": "neg", "negative": "neg", "__abs__": "abs", "absolute": "abs",
    "__add__": "add", "__radd__": "add", "__iadd__": "add",
    "__sub__": "sub", "subtract": "sub", "__isub__": "sub",
    "__mul__": "mul", "__rmul__": "mul", "multiply": "mul", "__imul__": "mul",
    "__truediv__": "div", "true_divide": "div", "divide": "div", "__itruediv__": "div",
    "__pow__": "pow", "__ipow__": "pow", "float_power": "pow",
    "clip": "clamp", "clamp_min": "clamp", "clamp_max": "clamp",
    "concat": "cat", "concatenate": "cat",
}  # fmt: skip
_REVERSED = {"__rsub__": "sub", "rsub": "sub", "__rtruediv__": "div", "__rpow__": "pow"}
_PARSED = frozenset((*_UNARY, *_BINARY, "clamp", *POSITIONAL, "ger"))


def as_number(x: Any) -> float | None:
    """A plain int or float argument as a float; None for anything else (bools included)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def _ints(x: Any) -> tuple[int, ...] | None:
    """A size or dims argument: an int, or a list/tuple/torch.Size of ints."""
    if isinstance(x, int) and not isinstance(x, bool):
        return (x,)
    if isinstance(x, list | tuple) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in x
    ):
        return tuple(x)
    return None


def is_op_name(name: str) -> bool:
    """Whether :func:`parse_op` may take a call of this name (a cheap test for the tracer,
    which sees every torch call)."""
    base = name if name.startswith("__") else name.rstrip("_")
    return base in _REVERSED or _ALIASES.get(base, base) in _PARSED


def parse_op(
    name: str, args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[str, list[Any], tuple[int, ...]] | None:
    """``(op, operands, ints)`` for a call torch made: the op's name in this module, its
    operands in order (tensors as given, numbers as floats, None for an absent clamp bound)
    and its integer parameters; None for any op, keyword or argument outside the allow-list.
    ``name`` is the function's ``__name__``; for a method, ``args[0]`` is the tensor."""
    base = name if name.startswith("__") else name.rstrip("_")
    if base in _REVERSED:
        if len(args) != 2 or kwargs:
            return None
        return _REVERSED[base], [_operand(args[1]), args[0]], ()
    op = _ALIASES.get(base, base)
    if op in _UNARY:
        return (op, [args[0]], ()) if len(args) == 1 and not kwargs else None
    if op in _BINARY:
        if len(args) != 2 or kwargs:  # alpha=, rounding_mode=, out= change the op
            return None
        return op, [_operand(args[0]), _operand(args[1])], ()
    if op == "clamp":
        return _parse_clamp(base, args, kwargs)
    if op in ("repeat", "tile"):
        dims = _ints(args[1]) if len(args) == 2 else _ints(list(args[1:]))
        key = "dims" if op == "tile" else "repeats"
        if kwargs:
            dims = _ints(kwargs.get(key)) if set(kwargs) == {key} and len(args) == 1 else None
        return (op, [args[0]], dims) if dims else None
    if op == "flip":
        dims = _ints(args[1]) if len(args) == 2 else _ints(kwargs.get("dims"))
        return (op, [args[0]], dims) if dims is not None and len(args) + len(kwargs) == 2 else None
    if op in ("cumsum", "cumprod"):
        dim = args[1] if len(args) == 2 else kwargs.get("dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or len(args) + len(kwargs) != 2:
            return None
        return op, [args[0]], (dim,)
    if op in ("outer", "ger"):
        return ("outer", [args[0], args[1]], ()) if len(args) == 2 and not kwargs else None
    if op in ("cat", "stack"):
        return _parse_join(op, args, kwargs)
    return None


def _parse_join(
    op: str, args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[str, list[Any], tuple[int, ...]] | None:
    """``cat``/``stack`` of a list of tensors along an int ``dim``."""
    if not args or len(args) > 2 or set(kwargs) - {"dim"} or (len(args) == 2 and kwargs):
        return None
    parts = args[0]
    dim = args[1] if len(args) == 2 else kwargs.get("dim", 0)
    if not isinstance(parts, list | tuple) or not 0 < len(parts) <= _MAX_JOINED:
        return None
    if not all(isinstance(t, torch.Tensor) for t in parts) or _ints(dim) is None:
        return None
    return op, list(parts), (int(dim),)


def _operand(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x
    n = as_number(x)
    return n if n is not None else x


def _parse_clamp(
    base: str, args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[str, list[Any], tuple[int, ...]] | None:
    if base == "clamp_min" or base == "clamp_max":
        if len(args) != 2 or kwargs:
            return None
        bound = as_number(args[1])
        if bound is None:
            return None
        lo, hi = (bound, None) if base == "clamp_min" else (None, bound)
        return "clamp", [args[0], lo, hi], ()
    params = dict(zip(("min", "max"), args[1:], strict=False))
    if len(args) > 3 or set(kwargs) - {"min", "max"} or set(kwargs) & set(params):
        return None
    params.update(kwargs)
    bounds = [params.get("min"), params.get("max")]
    if any(b is not None and as_number(b) is None for b in bounds):
        return None  # tensor bounds: not a number the recipe can hold
    lo, hi = (as_number(b) for b in bounds)
    if lo is None and hi is None:
        return None
    return "clamp", [args[0], lo, hi], ()


# -- recipes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Steps in order; the last is the values. Frozen and hashable: equal recipes compute
    equal values (draws with equal tokens are one draw)."""

    steps: tuple[Step, ...]

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def root(cls, step: Step) -> Recipe:
        return cls((step,))

    @classmethod
    def of_distribution(
        cls, d: Distribution, shape: tuple[int, ...], token: tuple[Any, ...]
    ) -> Recipe | None:
        """The root for values with distribution ``d``: a draw for the continuous families,
        ``full`` for a constant; None for the others (structured, custom)."""
        if d.family is Family.CONSTANT and d.value is not None:
            return cls.root(Step("full", (d.value,), shape))
        if not d.is_continuous:
            return None
        if d.family is Family.UNIFORM:
            return cls.root(Step("uniform", (d.low, d.high), shape, token=token))
        if d.family is Family.NORMAL:
            return cls.root(Step("normal", (d.loc, d.scale), shape, token=token))
        return cls.root(Step("trunc_normal", (d.loc, d.scale, d.low, d.high), shape, token=token))

    @staticmethod
    def combine(
        recipes: Sequence[Recipe], op: str, operands: Sequence[Recipe | float | None],
        shape: tuple[int, ...], ints: tuple[int, ...] = (),
    ) -> Recipe | None:  # fmt: skip
        """A new step ``op`` over ``operands`` (recipes among ``recipes``, and numbers), the
        recipes merged so that the steps they share appear once. None beyond MAX_STEPS."""
        steps: list[Step] = []
        index: dict[Step, int] = {}
        outs: dict[int, int] = {}
        for r in recipes:
            mapping: list[int] = []
            for s in r.steps:
                moved = s.remapped(mapping)
                at = index.get(moved)
                if at is None:
                    at = len(steps)
                    steps.append(moved)
                    index[moved] = at
                mapping.append(at)
            outs[id(r)] = mapping[-1]
        args = tuple(Ref(outs[id(o)]) if isinstance(o, Recipe) else o for o in operands)
        keep_shape = shape if op in _MOVING else ()
        new = Step(op, args, keep_shape, ints)
        if new in index:  # the same op on the same values again: the same values
            return Recipe(tuple(steps[: index[new] + 1]))
        if len(steps) >= MAX_STEPS:
            return None
        return Recipe((*steps, new))

    def then(self, op: str, *args: float | None, shape: tuple[int, ...] = (),
             ints: tuple[int, ...] = ()) -> Recipe | None:  # fmt: skip
        """The values after one more step on them (and numbers)."""
        return Recipe.combine([self], op, [self, *args], shape, ints)

    # -- what it holds -----------------------------------------------------------------------
    @property
    def tokens(self) -> frozenset[tuple[Any, ...]]:
        return frozenset(s.token for s in self.steps if s.token is not None)

    @property
    def has_draw(self) -> bool:
        return any(s.op in _DRAWS for s in self.steps)

    @property
    def has_deterministic(self) -> bool:
        """Values the code gave (arange, tensor, ...), not only constants."""
        return any(s.op in _DETERMINISTIC_ROOTS for s in self.steps)

    @property
    def is_positional(self) -> bool:
        """Whether where a value sits matters (no draw: the values themselves are known)."""
        return not self.has_draw

    def retokened(self, layout: tuple[Any, ...]) -> Recipe:
        """The same values read through another view: draws become new draws that stay
        aligned with each other (but not with the draws read the original way)."""
        return Recipe(
            tuple(
                replace(s, token=(*s.token[:1], (*s.token[1], layout)))
                if s.token is not None
                else s
                for s in self.steps
            )
        )

    def normalized(self) -> Recipe:
        """The recipe as a resolved default holds it: draws numbered 0, 1, ... in order, and
        for a recipe with draws, no shapes and no relayout steps (a probe does not use them),
        so equal chains on tensors of different sizes are equal."""
        draws = self.has_draw
        numbers: dict[Any, int] = {}
        steps: list[Step] = []
        mapping: list[int] = []
        for s in self.steps:
            moved = s.remapped(mapping)
            if draws and s.op in _RELAYOUT:
                first = moved.args[0]
                assert isinstance(first, Ref)
                mapping.append(first.index)
                continue
            token = None
            if s.token is not None:
                token = (numbers.setdefault(s.token, len(numbers)),)
            steps.append(replace(moved, shape=() if draws else s.shape, token=token))
            mapping.append(len(steps) - 1)
        return Recipe(tuple(steps))

    # -- text --------------------------------------------------------------------------------
    def expression(self) -> str:
        """The values as a formula: ``x + log(-expm1(-x)), x = clamp(exp(U(-6.908,
        -2.303)), min=0.0001)``. A step used twice is named once (x, y, ...)."""
        uses = [0] * len(self.steps)
        for s in self.steps:
            for a in s.args:
                if isinstance(a, Ref):
                    uses[a.index] += 1
        names: dict[int, str] = {}
        letters = iter("xyzwvpqrstabcdefghijklmno")
        for i, n in enumerate(uses):
            if n > 1 and i != len(self.steps) - 1:
                names[i] = next(letters, f"t{i}")
        texts: list[tuple[str, int]] = []
        for s in self.steps:
            texts.append(_render(s, texts, names))
        out = texts[-1][0]
        defs = [f"{names[i]} = {texts[i][0]}" for i in sorted(names, reverse=True)]
        return ", ".join([out, *defs])


# Precedence for parentheses: atoms and calls bind tightest.
_PREC = {"add": 1, "sub": 1, "mul": 2, "div": 2, "neg": 3, "pow": 4}
_SYMBOL = {"add": " + ", "sub": " - ", "mul": "·", "div": "/", "pow": "^"}


def _render(step: Step, done: list[tuple[str, int]], names: dict[int, str]) -> tuple[str, int]:
    def arg(a: Arg, prec: int, right: bool = False) -> str:
        if isinstance(a, Ref):
            if a.index in names:
                return names[a.index]
            text, p = done[a.index]
            return f"({text})" if p < prec or (right and p == prec) else text
        if a is None:
            return "None"
        return f"({format_number(a)})" if a < 0 and prec > 0 else format_number(a)

    op, args = step.op, step.args
    if op in _ROOTS:
        return _render_root(step), 9
    if op == "neg":
        return "-" + arg(args[0], 4), 3
    if op in _SYMBOL:
        p = _PREC[op]
        return arg(args[0], p) + _SYMBOL[op] + arg(args[1], p, right=True), p
    if op == "clamp":
        bounds = [
            f"{k}={format_number(v)}"
            for k, v in zip(("min", "max"), args[1:], strict=False)
            if isinstance(v, float)
        ]
        return f"clamp({arg(args[0], 0)}, {', '.join(bounds)})", 9
    if op in _RELAYOUT:
        return f"{arg(args[0], 9)}[{','.join(map(str, step.shape))}]", 9
    extra = [str(list(step.ints))] if step.ints else []
    inner = ", ".join([arg(a, 0) for a in args] + extra)
    return f"{op}({inner})", 9


def _render_root(step: Step) -> str:
    a = [format_number(x) if isinstance(x, float) else "?" for x in step.args]
    if step.op == "uniform":
        return Distribution.uniform(*_floats(step.args)).label()
    if step.op == "normal":
        return Distribution.normal(*_floats(step.args)).label()
    if step.op == "trunc_normal":
        return Distribution.trunc_normal(*_floats(step.args)).label()
    if step.op == "full":
        return a[0]
    if step.op == "values":
        shown = ", ".join(a[:4]) + (", ..." if len(a) > 4 else "")
        return f"tensor([{shown}])"
    if step.op == "eye":
        return f"eye({', '.join(map(str, step.ints))})"
    return f"{step.op}({', '.join(a + [str(i) for i in step.ints])})"


def _floats(args: Iterable[Arg]) -> list[float]:
    return [float(a) if isinstance(a, float) else math.nan for a in args]


# -- closed forms ----------------------------------------------------------------------------

# Mass outside a clamp's bounds below which a clamp is a truncation (a normal clamped at 7σ):
# the atoms it makes at the bounds are smaller than any test here can see.
_NEGLIGIBLE = 1e-12


def closed_form(op: str, operands: Sequence[Any], d: Distribution) -> Distribution | None:
    """The distribution of ``op`` applied to values with distribution ``d`` (the one tensor
    operand; the others numbers), when a family here expresses it: affine maps of every
    family, ``erfinv`` of a uniform inside [-1, 1] (a truncated normal: timm's and torch's
    trunc_normal_ draw this way), and a clamp that leaves (practically) nothing outside."""
    tensor_at = [i for i, o in enumerate(operands) if not isinstance(o, float | None)]
    if len(tensor_at) != 1:
        return None
    at = tensor_at[0]
    other = next((o for i, o in enumerate(operands) if i != at and isinstance(o, float)), None)
    if op == "neg":
        return d.scaled(-1.0)
    if op == "add" and other is not None:
        return d.shifted(other)
    if op == "sub" and other is not None:
        if at == 0:
            return d.shifted(-other)
        negated = d.scaled(-1.0)
        return negated.shifted(other) if negated is not None else None
    if op == "mul" and other is not None:
        return d.scaled(other)
    if op == "div" and other is not None and at == 0:
        return d.scaled(1.0 / other) if other else None
    if op == "erfinv":
        return _erfinv(d)
    if op == "clamp" and at == 0:
        lo, hi = operands[1], operands[2]
        return _clamped(d, -math.inf if lo is None else lo, math.inf if hi is None else hi)
    return None


def _erfinv(d: Distribution) -> Distribution | None:
    """erfinv(U) for U ~ U(p, q) inside [-1, 1]: P(erfinv(U) ≤ x) = (erf(x) − p)/(q − p), the
    CDF of N(0, 1/√2) cut to [erfinv(p), erfinv(q)] (timm/layers/weight_init.py
    _trunc_normal_ draws a truncated normal this way)."""
    if d.family is not Family.UNIFORM or d.low is None or d.high is None:
        return None
    if not -1.0 <= d.low < d.high <= 1.0:
        return None
    scale = 1.0 / math.sqrt(2.0)
    low, high = (float(v) for v in torch.erfinv(_cpu([d.low, d.high])))
    if math.isinf(low) and math.isinf(high):
        return Distribution.normal(0.0, scale)
    return Distribution.trunc_normal(0.0, scale, low, high)


def _support(d: Distribution) -> tuple[float, float] | None:
    if d.family in (Family.UNIFORM, Family.TRUNC_NORMAL) and d.low is not None:
        assert d.high is not None
        return d.low, d.high
    if d.family is Family.NORMAL:
        return -math.inf, math.inf
    if d.family is Family.CONSTANT and d.value is not None:
        return d.value, d.value
    return None


def _clamped(d: Distribution, lo: float, hi: float) -> Distribution | None:
    support = _support(d)
    if support is None or not lo <= hi:
        return None
    low, high = support
    if high <= lo:
        return Distribution.constant(lo)
    if low >= hi:
        return Distribution.constant(hi)
    if low >= lo and high <= hi:
        return d
    if not d.is_continuous:
        return None
    cdf = d.cdf(_cpu([lo, hi]))
    outside = float(cdf[0]) + 1.0 - float(cdf[1])
    if outside > _NEGLIGIBLE:
        return None  # atoms at the bounds: no family here has them
    low, high = max(low, lo), min(high, hi)
    if d.family is Family.UNIFORM:
        return Distribution.uniform(low, high)
    assert d.loc is not None and d.scale is not None
    return Distribution.trunc_normal(d.loc, d.scale, low, high)


def constant_fold(op: str, operands: Sequence[Any], ints: tuple[int, ...]) -> float | None:
    """The value of ``op`` on constants (the tensor operands given as their values): a
    constant moved or repeated is itself, a function of constants a constant; None when the
    result is not one finite number."""
    if op in ("repeat", "tile", "flip", "cat", "stack", *_RELAYOUT):
        first = operands[0]
        same = all(o == first for o in operands)  # cat of equal constants is that constant
        return first if isinstance(first, float) and same else None
    if op in ("cumsum", "cumprod"):
        return None
    try:
        with torch.device("cpu"):  # also while a model is built on meta
            out = _elementwise(op, [_cpu(o) if isinstance(o, float) else o for o in operands])
    except (RuntimeError, TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None
    if out is None or out.numel() != 1:
        return None
    value = float(out)
    return value if math.isfinite(value) else None


# -- replay ----------------------------------------------------------------------------------


def _elementwise(op: str, inputs: Sequence[Any]) -> torch.Tensor | None:
    if op in _UNARY:
        return _UNARY[op](_tensor(inputs[0]))
    if op in _BINARY:
        return _BINARY[op](inputs[0], inputs[1])
    if op == "clamp":
        lo, hi = inputs[1], inputs[2]
        return torch.clamp(_tensor(inputs[0]), min=lo, max=hi)
    return None


def _numel(shape: Iterable[int]) -> int:
    return math.prod(int(s) for s in shape)


def _root(step: Step, probe_mode: bool, generator: torch.Generator) -> torch.Tensor | None:
    f64 = torch.float64
    args = _floats(step.args)
    if step.op in _DRAWS:
        if not probe_mode:
            return None
        out = torch.empty(PROBE_SIZE, dtype=f64)
        if step.op == "uniform":
            return out.uniform_(args[0], args[1], generator=generator)
        if step.op == "normal":
            return out.normal_(args[0], args[1], generator=generator)
        loc, scale, low, high = args
        return torch.nn.init.trunc_normal_(out, loc, scale, low, high, generator=generator)
    if step.op == "full":
        shape = (PROBE_SIZE,) if probe_mode else step.shape
        return torch.full(shape, args[0], dtype=f64) if _numel(shape) <= MAX_REPLAY else None
    if probe_mode or _numel(step.shape) > MAX_REPLAY:
        return None  # values the code gave are not a distribution to probe
    if step.op == "arange":
        start, end, stride = args
        if not stride or not math.isfinite((end - start) / stride):
            return None
        if math.ceil((end - start) / stride) > MAX_REPLAY:
            return None
        out = torch.arange(start, end, stride, dtype=f64)
    elif step.op in ("linspace", "logspace"):
        (steps,) = step.ints
        if steps > MAX_REPLAY:
            return None
        if step.op == "linspace":
            out = torch.linspace(args[0], args[1], steps, dtype=f64)
        else:
            out = torch.logspace(args[0], args[1], steps, base=args[2], dtype=f64)
    elif step.op == "eye":
        n, m = step.ints
        if n * m > MAX_REPLAY:
            return None
        out = torch.eye(n, m, dtype=f64)
    else:  # values
        out = torch.tensor(args, dtype=f64)
    return out.reshape(step.shape) if out.numel() == _numel(step.shape) else None


def _gather(x: torch.Tensor, step: Step) -> torch.Tensor | None:
    """The values of a view ``step.shape`` read from the storage that ``x`` (an event's
    tensor) was written into: x's strides and offset, then the view's, in ``step.ints``. Both
    layouts are checked to lie inside one bounded buffer before any strided access."""
    rank = x.dim()
    ints = step.ints
    if len(ints) != rank + 1 + len(step.shape) + 1:
        return None
    src_stride, src_offset = ints[:rank], ints[rank]
    dst_stride, dst_offset = ints[rank + 1 : -1], ints[-1]
    if len(dst_stride) != len(step.shape) or any(s < 0 for s in (*src_stride, *dst_stride)):
        return None
    if src_offset < 0 or dst_offset < 0 or _numel(step.shape) > MAX_REPLAY:
        return None

    def extent(shape: Sequence[int], stride: Sequence[int], offset: int) -> int:
        return offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))

    size = max(extent(x.shape, src_stride, src_offset), extent(step.shape, dst_stride, dst_offset))
    if size > MAX_REPLAY:
        return None
    buffer = torch.zeros(size, dtype=torch.float64)
    written = torch.zeros(size, dtype=torch.bool)
    buffer.as_strided(x.shape, src_stride, src_offset).copy_(x)
    written.as_strided(x.shape, src_stride, src_offset).fill_(True)
    if not bool(written.as_strided(step.shape, dst_stride, dst_offset).all()):
        return None  # the view reads places x did not write
    return buffer.as_strided(step.shape, dst_stride, dst_offset).clone()


def _positional(step: Step, inputs: Sequence[Any]) -> torch.Tensor | None:
    x = inputs[0]
    if not isinstance(x, torch.Tensor):
        return None
    op, ints = step.op, step.ints
    if op == "reshape":
        return x.reshape(step.shape) if x.numel() == _numel(step.shape) else None
    if op == "broadcast":
        if _numel(step.shape) > MAX_REPLAY:
            return None
        return torch.broadcast_to(x, step.shape).contiguous()
    if op == "gather":
        return _gather(x, step)
    if op in ("repeat", "tile"):
        if len(ints) < x.dim() and op == "repeat":
            return None
        if any(i < 0 for i in ints) or x.numel() * _numel(ints) > MAX_REPLAY:
            return None
        return x.repeat(ints) if op == "repeat" else x.tile(ints)
    if op == "flip":
        return x.flip(ints)
    if op == "cumsum":
        return x.cumsum(ints[0])
    if op == "cumprod":
        return x.cumprod(ints[0])
    if op in ("cat", "stack"):
        parts = [t for t in inputs if isinstance(t, torch.Tensor)]
        if len(parts) != len(inputs) or sum(t.numel() for t in parts) > MAX_REPLAY:
            return None
        return torch.cat(parts, ints[0]) if op == "cat" else torch.stack(parts, ints[0])
    y = inputs[1]
    if isinstance(y, torch.Tensor) and x.dim() == 1 and y.dim() == 1:
        return torch.outer(x, y) if x.numel() * y.numel() <= MAX_REPLAY else None
    return None


def _run(recipe: Recipe, probe_mode: bool) -> torch.Tensor | None:
    if len(recipe.steps) > MAX_STEPS or not recipe.steps:
        return None
    with torch.device("cpu"):  # also when asked while a model is built on meta
        return _run_steps(recipe, probe_mode)


def _run_steps(recipe: Recipe, probe_mode: bool) -> torch.Tensor | None:
    generator = torch.Generator().manual_seed(PROBE_SEED)
    last_use = {
        a.index: i for i, s in enumerate(recipe.steps) for a in s.args if isinstance(a, Ref)
    }
    values: dict[int, torch.Tensor] = {}
    out: torch.Tensor | None = None
    try:
        for i, step in enumerate(recipe.steps):
            if step.op not in _OPS:
                return None
            if any(isinstance(a, Ref) and a.index not in values for a in step.args):
                return None  # a reference forward, or to a step already dropped
            inputs = [values[a.index] if isinstance(a, Ref) else a for a in step.args]
            if step.op in _ROOTS:
                out = _root(step, probe_mode, generator)
            elif step.op in _RELAYOUT and probe_mode:
                out = inputs[0] if isinstance(inputs[0], torch.Tensor) else None
            elif step.op in _MOVING:
                out = None if probe_mode else _positional(step, inputs)
            else:
                tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
                if len(tensors) == 2:
                    shape = torch.broadcast_shapes(  # type: ignore[no-untyped-call]
                        tensors[0].shape, tensors[1].shape
                    )
                    if _numel(shape) > max(MAX_REPLAY, PROBE_SIZE):
                        return None
                out = _elementwise(step.op, inputs)
            if out is None:
                return None
            values[i] = out
            for j in [j for j in values if last_use.get(j, -1) <= i and j != i]:
                del values[j]
    except (RuntimeError, TypeError, ValueError, IndexError, OverflowError, ZeroDivisionError):
        return None
    return out


def replay(recipe: Recipe) -> torch.Tensor | None:
    """The values of a recipe without draws, at their real shape (float64); None when it has
    draws, or a step is unknown or too large."""
    if recipe.has_draw:
        return None
    return _run(recipe, probe_mode=False)


@dataclass(frozen=True)
class ProbeStats:
    """A probe's values, sorted, and their moments: the reference a two-sample test compares
    a tensor with. ``m4`` is the fourth central moment (the spread of a sample variance)."""

    sorted: torch.Tensor
    mean: float
    std: float
    m4: float


def probe(recipe: Recipe) -> torch.Tensor | None:
    """PROBE_SIZE values (float64) drawn the way the recipe draws them, or None when it has no
    draw or cannot be run (non-finite values included: the tests need finite ones)."""
    if not recipe.has_draw or recipe.has_deterministic:
        return None
    out = _run(recipe, probe_mode=True)
    if out is None or out.numel() != PROBE_SIZE or not bool(torch.isfinite(out).all()):
        return None
    return out


@functools.lru_cache(maxsize=64)  # 64 probes of 512 KiB: 32 MiB at most
def probe_stats(recipe: Recipe) -> ProbeStats | None:
    """The probe of a (normalized) recipe, sorted, with its moments; cached, since every
    layer of a model repeats the same chain."""
    values = probe(recipe)
    if values is None:
        return None
    mean = float(values.mean())
    centred = values - mean
    m2 = float((centred * centred).mean())
    m4 = float((centred**4).mean())
    return ProbeStats(values.sort().values, mean, math.sqrt(m2 * PROBE_SIZE / (PROBE_SIZE - 1)), m4)
