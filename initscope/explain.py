"""Explain one layer type's default init: the call torch makes, the distribution with numbers,
and the formula in terms of the constructor arguments, so a user learns *why*.

The explanation comes from a real, traced construction (see :mod:`initscope.tracing`), never
from a table kept by hand; only the wording of the formulas lives here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from initscope.errors import TargetError
from initscope.models import trace_model
from initscope.targets import ModelSpec, import_ref
from initscope.tracing import DefaultInit, fans

__all__ = ["REPRESENTATIVE_ARGS", "Explanation", "ParamExplanation", "explain"]

# Small values for required constructor arguments, chosen pairwise distinct so that each
# number in a formula points back to one argument.
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
    "num_channels": 4,
    "input_size": 6,
    "hidden_size": 4,
    "embed_dim": 8,
    "num_heads": 2,
    "d_model": 8,
    "nhead": 2,
    "n_classes": 10,
    "cutoffs": [4, 8],
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
    layer: str
    arguments: Mapping[str, Any]
    representative: bool
    parameters: tuple[ParamExplanation, ...]


def _qualified(ref: str) -> str:
    obj: object = import_ref(ref)
    if not isinstance(obj, type):
        return ref
    name: str = obj.__name__
    # torch.nn.modules.linear.Linear is public as torch.nn.Linear.
    if obj.__module__.startswith("torch.nn.modules") and getattr(torch.nn, name, None) is obj:
        return f"torch.nn.{name}"
    return f"{obj.__module__}.{obj.__qualname__}"


def _fill_required(ref: str, given: Mapping[str, Any]) -> dict[str, Any]:
    obj = import_ref(ref)
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return dict(given)
    out = dict(given)
    missing = []
    for name, p in sig.parameters.items():
        if name in out or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            if name in REPRESENTATIVE_ARGS:
                out[name] = REPRESENTATIVE_ARGS[name]
            else:
                missing.append(name)
    if missing:
        raise TargetError(
            f"{ref} needs {', '.join(missing)}, which has no representative value",
            f"pass it: {' '.join(f'--arg {m}=...' for m in missing)}",
        )
    return out


def explain(
    layer: str,
    args: Mapping[str, Any] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
) -> Explanation:
    """Construct ``layer`` (a class reference such as ``nn.Conv2d``) and explain each
    parameter's default init. Without ``args``, small representative ones are used."""
    given = dict(args or {})
    kwargs = _fill_required(layer, given)
    representative = kwargs != given
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
        out.append(
            ParamExplanation(
                name=name,
                shape=shape,
                fan_in=f[0] if f else None,
                fan_out=f[1] if f else None,
                default=default,
                formula=tuple(_formula(default, shape, ints, candidates, kwargs)),
                torch_function=_pointer(default),
            )
        )
    return Explanation(_qualified(layer), kwargs, representative, tuple(out))


def _pointer(d: DefaultInit) -> str | None:
    name = d.call.name
    if hasattr(torch.nn.init, name):
        return f"torch.nn.init.{name} (torch/nn/init.py)"
    if hasattr(torch.Tensor, name):
        return f"torch.Tensor.{name}"
    if hasattr(torch, name):
        return f"torch.{name}"
    return None


def _dim_names(value: int, ints: Mapping[str, int], kwargs: Mapping[str, Any]) -> list[str]:
    names = [k for k, v in ints.items() if v == value and k != "groups"]
    groups = kwargs.get("groups")
    if isinstance(groups, int) and groups > 1:
        names += [f"{k}/groups" for k, v in ints.items() if k != "groups" and v == value * groups]
    return names


def _fan_lines(
    shape: tuple[int, ...], ints: Mapping[str, int], kwargs: Mapping[str, Any]
) -> list[str]:
    f = fans(shape)
    if f is None:
        return []
    receptive = math.prod(shape[2:])
    lines = []
    for label, dim in (("fan_in", 1), ("fan_out", 0)):
        size = shape[dim]
        named = _dim_names(size, ints, kwargs)
        why = f" ({' = '.join(named)})" if named else ""
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
            lines.append(f"gain = √(2/(1+a²)) = {gain:.4g}  (leaky_relu, a={_arg(neg)})")
        else:
            lines.append(f"gain = calculate_gain({nl!r}) = {gain:.4g}")
        if name == "kaiming_uniform_":
            bound = gain * math.sqrt(3 / fan)
            lines.append(f"bound = gain·√(3/{mode}) = {gain:.4g}·√(3/{fan}) = {bound:.4g}")
            if nl == "leaky_relu" and isinstance(neg, float) and math.isclose(neg, math.sqrt(5)):
                lines.append(f"with a = √5 this is bound = 1/√{mode}: torch's default for layers")
        else:
            lines.append(f"std = gain/√{mode} = {gain:.4g}/√{fan} = {gain / math.sqrt(fan):.4g}")
        lines += _fan_lines(shape, ints, kwargs)
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
        lines += _fan_lines(shape, ints, kwargs)
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
    if dist.mean is not None and dist.std is not None and dist.family.value != "constant":
        lines.append(f"mean {dist.mean:.4g}, std {dist.std:.4g}")
    return lines


def _arg(v: Any) -> str:
    if isinstance(v, float) and math.isclose(v, math.sqrt(5)):
        return "√5"
    return str(v)
