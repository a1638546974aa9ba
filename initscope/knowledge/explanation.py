"""Explain one layer type's default init: the call torch makes, the distribution with numbers,
and the formula in terms of the constructor arguments, so a user learns *why*.

The explanation comes from a real, traced construction (see :mod:`initscope.knowledge.tracing`),
never
from a table kept by hand; only the wording of the formulas lives here.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from initscope.errors import TargetError
from initscope.io.models import trace_model
from initscope.io.targets import ModelSpec, import_ref
from initscope.knowledge.distributions import Family
from initscope.knowledge.tracing import DefaultInit, fans, format_arg

__all__ = [
    "REPRESENTATIVE_ARGS",
    "Explanation",
    "ParamExplanation",
    "explain",
]

# Small values for required constructor arguments, by parameter name. Only one layer's
# arguments are in play at a time, so the values repeat across layers; what holds (and
# tests/test_explain.py checks for the common torch.nn layers) is that the integers filled in
# for one layer are pairwise distinct and differ from its kernel products, so that each
# number in a formula points back to one argument. Not distinct from the dimensions torch
# derives: an LSTM's weight_hh has hidden_size columns whichever value is chosen.
REPRESENTATIVE_ARGS: dict[str, Any] = {
    "in_features": 6,
    "out_features": 4,
    "in1_features": 6,
    "in2_features": 5,
    "in_channels": 6,
    "out_channels": 4,
    "kernel_size": 3,
    "num_embeddings": 10,
    "embedding_dim": 4,
    "normalized_shape": 4,
    "num_features": 4,
    "num_groups": 2,
    "num_channels": 6,
    "input_size": 6,
    # neither 3 nor 4, the gate counts of GRU and LSTM (weight_ih is [gates·hidden, input])
    "hidden_size": 5,
    "embed_dim": 8,
    "num_heads": 2,
    "d_model": 8,
    "nhead": 2,
    # one cutoff: with in_features=6, AdaptiveLogSoftmaxWithLoss's second tail cluster would
    # get 6 // 4**2 = 0 hidden units; [3] gives a head of 3 + 1 = 4 outputs, no dim equal to 6
    "n_classes": 10,
    "cutoffs": [3],
}


@dataclass(frozen=True)
class ParamExplanation:
    name: str
    shape: tuple[int, ...]
    fan_in: int | None
    fan_out: int | None
    default: DefaultInit
    formula: tuple[str, ...]
    torch_function: str | None


@dataclass(frozen=True)
class Explanation:
    """``arguments`` are all the constructor arguments used; ``filled`` names those that were
    not given and took a representative value (``representative`` is ``bool(filled)``)."""

    layer: str
    arguments: Mapping[str, Any]
    representative: bool
    parameters: tuple[ParamExplanation, ...]
    filled: tuple[str, ...] = ()


def _qualified(ref: str) -> str:
    obj: object = import_ref(ref)
    if not isinstance(obj, type):
        return ref
    name: str = obj.__name__
    # torch.nn.modules.linear.Linear is public as torch.nn.Linear.
    if obj.__module__.startswith("torch.nn.modules") and getattr(torch.nn, name, None) is obj:
        return f"torch.nn.{name}"
    return f"{obj.__module__}.{obj.__qualname__}"


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _opaque(params: Sequence[inspect.Parameter]) -> bool:
    """``(*args, **kwargs)``: a signature that says nothing about what is required."""
    return all(p.kind in _VARIADIC for p in params)


def _forwarded(init: Any) -> tuple[int, set[str]] | None:
    """For a pass-through ``__init__(self, *args, **kwargs)``: how many leading positional
    arguments, and which keywords, it supplies itself in its ``super().__init__(...)`` call
    (``LSTM``: ``super().__init__("LSTM", *args, **kwargs)`` supplies one). None when the
    source cannot be read or the call does not forward ``**kwargs``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__init__"
        ):
            continue
        target = node.func.value
        is_super = (
            isinstance(target, ast.Call)
            and isinstance(target.func, ast.Name)
            and target.func.id == "super"
        )
        if not any(k.arg is None for k in node.keywords):
            return None
        leading = 0
        for a in node.args:
            if isinstance(a, ast.Starred):
                break
            leading += 1
        if not is_super:  # Base.__init__(self, ...)
            leading = max(leading - 1, 0)
        return leading, {k.arg for k in node.keywords if k.arg is not None}
    return None


def _constructor_parameters(obj: Any) -> list[inspect.Parameter] | None:
    """The parameters a caller of ``obj`` must think about. A class whose own ``__init__`` is
    ``(*args, **kwargs)`` (nn.LSTM, nn.GRU, nn.RNN) is read through the first ``__init__`` in
    its MRO with a concrete signature (RNNBase's), less the arguments that the pass-through
    ``__init__``s in between supply themselves (``mode``)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if not _opaque(params) or not isinstance(obj, type):
        return params
    supplied_positional = 0
    supplied_keywords: set[str] = set()
    for klass in obj.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            own = list(inspect.signature(init).parameters.values())[1:]  # without self
        except (TypeError, ValueError):
            return params
        if not _opaque(own):
            positional = [p.name for p in own if p.kind in _POSITIONAL]
            skip = set(positional[:supplied_positional]) | supplied_keywords
            return [p for p in own if p.name not in skip]
        forwarded = _forwarded(init)
        if forwarded is None:
            return params
        supplied_positional += forwarded[0]
        supplied_keywords |= forwarded[1]
    return params


def _fill_required(ref: str, given: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``given`` plus representative values for the required arguments it lacks, and the
    names of those filled in."""
    params = _constructor_parameters(import_ref(ref))
    out = dict(given)
    if params is None:
        return out, ()
    filled: list[str] = []
    missing = []
    for p in params:
        name = p.name
        if name in out or p.kind in _VARIADIC:
            continue
        if p.default is inspect.Parameter.empty:
            if name in REPRESENTATIVE_ARGS:
                out[name] = REPRESENTATIVE_ARGS[name]
                filled.append(name)
            else:
                missing.append(name)
    if missing:
        raise TargetError(
            f"{ref} needs {', '.join(missing)}, which has no representative value",
            f"pass it: {' '.join(f'--arg {m}=...' for m in missing)}",
        )
    _divisible(out, filled)
    return out, tuple(filled)


# Arguments a given one must divide (torch checks each in the layer's constructor:
# _ConvNd "in_channels must be divisible by groups", GroupNorm "num_channels must be divisible
# by num_groups", MultiheadAttention "embed_dim must be divisible by num_heads").
_DIVIDES = {
    "groups": ("in_channels", "out_channels"),
    "num_groups": ("num_channels",),
    "num_heads": ("embed_dim",),
    "nhead": ("d_model",),
}


def _divisible(kwargs: dict[str, Any], filled: Sequence[str]) -> None:
    """Scale the filled-in values that a given ``groups`` (or ``num_heads``, ...) must divide
    by that number, so ``explain nn.Conv2d --arg groups=4`` builds; multiplying keeps the
    filled values pairwise distinct, as REPRESENTATIVE_ARGS chose them."""
    for divisor, dependents in _DIVIDES.items():
        d = kwargs.get(divisor)
        if divisor in filled or not isinstance(d, int) or isinstance(d, bool) or d <= 1:
            continue
        for name in dependents:
            value = kwargs.get(name)
            if name in filled and isinstance(value, int) and value % d:
                kwargs[name] = value * d


def explain(
    layer: str,
    args: Mapping[str, Any] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
) -> Explanation:
    """Construct ``layer`` (a class reference such as ``nn.Conv2d``) and explain each
    parameter's default init. Without ``args``, small representative ones are used."""
    kwargs, filled = _fill_required(layer, dict(args or {}))
    spec = ModelSpec(layer, (), kwargs, None, tuple(input_shape) if input_shape else None)
    traced = trace_model(spec, seed=seed)
    ints = {k: v for k, v in kwargs.items() if isinstance(v, int) and not isinstance(v, bool)}
    module_fans: dict[str, dict[str, int]] = {}
    params = list(traced.model.named_parameters())
    for name, t in params:
        f = fans(tuple(t.shape))
        if f is not None:
            owner, _, leaf = name.rpartition(".")
            module_fans.setdefault(owner, {})[f"fan_in({leaf})"] = f[0]
    out = []
    for name, t in params:
        default = traced.defaults[name]
        shape = tuple(t.shape)
        f = fans(shape)
        owner = name.rpartition(".")[0]
        candidates = {**ints, **module_fans.get(owner, {})}
        # ConvTranspose lays its weight out as (in, out/groups, *kernel), not (out, in/groups, ...)
        transposed = getattr(traced.model.get_submodule(owner), "transposed", False) is True
        out.append(
            ParamExplanation(
                name=name,
                shape=shape,
                fan_in=f[0] if f else None,
                fan_out=f[1] if f else None,
                default=default,
                formula=tuple(_formula(default, shape, ints, candidates, kwargs, transposed)),
                torch_function=_pointer(default),
            )
        )
    return Explanation(_qualified(layer), kwargs, bool(filled), tuple(out), filled)


def _pointer(d: DefaultInit) -> str | None:
    name = d.call.name
    if hasattr(torch.nn.init, name):
        return f"torch.nn.init.{name} (torch/nn/init.py)"
    if hasattr(torch.Tensor, name):
        return f"torch.Tensor.{name}"
    if hasattr(torch, name):
        return f"torch.{name}"
    return None


_IN = re.compile(r"(in|input)(_|\d|$)")
_OUT = re.compile(r"(out|output)(_|\d|$)")


def _dim_names(
    value: int, dim: int, ints: Mapping[str, int], kwargs: Mapping[str, Any], transposed: bool
) -> list[str]:
    """The constructor arguments a weight's ``size(dim)`` equals, the structural one first.

    torch lays weights out as (out, in/groups, *kernel), and ConvTranspose as (in, out/groups,
    *kernel): size(0) is an "out" argument (transposed: "in") and never divided by groups,
    size(1) is an "in" argument (transposed: "out"), divided by groups.
    """
    names = [k for k, v in ints.items() if v == value and k != "groups"]
    groups = kwargs.get("groups")
    if isinstance(groups, int) and not isinstance(groups, bool) and groups > 1:
        names += [f"{k}/groups" for k, v in ints.items() if k != "groups" and v == value * groups]
    side = _IN if (dim == 1) != transposed else _OUT

    def rank(name: str) -> tuple[bool, bool]:
        per_group = name.endswith("/groups")
        return per_group != (dim == 1), side.match(name) is None

    return sorted(names, key=rank)


def _fan_lines(
    shape: tuple[int, ...], ints: Mapping[str, int], kwargs: Mapping[str, Any], transposed: bool
) -> list[str]:
    f = fans(shape)
    if f is None:
        return []
    receptive = math.prod(shape[2:])
    lines = []
    for label, dim in (("fan_in", 1), ("fan_out", 0)):
        size = shape[dim]
        named = _dim_names(size, dim, ints, kwargs, transposed)
        why = f" ({' or '.join(named)})" if named else ""
        if len(shape) > 2:
            kernel = "·".join(str(s) for s in shape[2:])
            lines.append(
                f"{label} = size({dim}) × receptive field = {size}{why} × {kernel} = "
                f"{size * receptive}"
            )
        else:
            lines.append(f"{label} = size({dim}) = {size}{why}")
    return lines


def _recover(value: float, candidates: Mapping[str, int]) -> str | None:
    """Name ``value`` as 1/√X or 1/X for a constructor argument or fan X, if one fits."""
    if value <= 0:
        return None
    for name, x in candidates.items():
        if x > 0 and math.isclose(value, 1 / math.sqrt(x), rel_tol=1e-6):
            return f"1/√{name} = 1/√{x}"
    for name, x in candidates.items():
        if x > 0 and math.isclose(value, 1 / x, rel_tol=1e-6):
            return f"1/{name} = 1/{x}"
    return None


def _formula(
    d: DefaultInit,
    shape: tuple[int, ...],
    ints: Mapping[str, int],
    candidates: Mapping[str, int],
    kwargs: Mapping[str, Any],
    transposed: bool = False,
) -> list[str]:
    name = d.call.name
    a = d.call.args
    dist = d.distribution
    f = fans(shape)
    lines: list[str] = []
    if name in ("kaiming_uniform_", "kaiming_normal_") and f is not None:
        mode = str(a.get("mode", "fan_in"))
        nl = str(a.get("nonlinearity", "leaky_relu"))
        neg = a.get("a", 0)
        gain = float(torch.nn.init.calculate_gain(nl, neg))  # type: ignore[arg-type]
        fan = f[0] if mode == "fan_in" else f[1]
        if nl == "leaky_relu":
            lines.append(f"gain = √(2/(1+a²)) = {gain:.4g}  (leaky_relu, a={format_arg(neg)})")
        else:
            lines.append(f"gain = calculate_gain({nl!r}) = {gain:.4g}")
        if name == "kaiming_uniform_":
            bound = gain * math.sqrt(3 / fan)
            lines.append(f"bound = gain·√(3/{mode}) = {gain:.4g}·√(3/{fan}) = {bound:.4g}")
            if nl == "leaky_relu" and isinstance(neg, float) and math.isclose(neg, math.sqrt(5)):
                lines.append(f"with a = √5 this is bound = 1/√{mode}: torch's default for layers")
        else:
            lines.append(f"std = gain/√{mode} = {gain:.4g}/√{fan} = {gain / math.sqrt(fan):.4g}")
        lines += _fan_lines(shape, ints, kwargs, transposed)
    elif name in ("xavier_uniform_", "xavier_normal_") and f is not None:
        gain = float(a.get("gain", 1.0) or 1.0)
        std = gain * math.sqrt(2 / (f[0] + f[1]))
        if name == "xavier_uniform_":
            bound = math.sqrt(3) * std
            lines.append(
                f"bound = gain·√(6/(fan_in+fan_out)) = {gain:g}·√(6/{f[0] + f[1]}) = {bound:.4g}"
            )
        else:
            lines.append(
                f"std = gain·√(2/(fan_in+fan_out)) = {gain:g}·√(2/{f[0] + f[1]}) = {std:.4g}"
            )
        lines += _fan_lines(shape, ints, kwargs, transposed)
    elif name in ("uniform_",) and dist.high is not None and dist.low is not None:
        why = _recover(dist.high, candidates) if math.isclose(dist.low, -dist.high) else None
        lines.append(f"bound = {dist.high:.4g}" + (f" = {why}" if why else ""))
    elif name in ("normal_",) and dist.scale is not None:
        why = _recover(dist.scale, candidates)
        lines.append(f"std = {dist.scale:.4g}" + (f" = {why}" if why else ""))
    elif name in ("zeros_", "ones_", "constant_", "fill_", "zero_") and dist.value is not None:
        lines.append(f"every element = {dist.value:g}")
    elif name == "orthogonal_":
        lines.append("a (semi-)orthogonal matrix from a QR decomposition, times gain")
    elif name == "trunc_normal_":
        lines.append("normal(mean, std) restricted to [a, b] (inverse-CDF sampling)")
    if dist.mean is not None and dist.std is not None and dist.family is not Family.CONSTANT:
        lines.append(f"mean {dist.mean:.4g}, std {dist.std:.4g}")
    return lines
