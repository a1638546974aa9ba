"""The values of command-line options, parsed: shapes, sizes, rules variables, constructor
arguments. Kept free of torch so that a mistyped option fails fast, before torch is imported."""

from __future__ import annotations

import re
from pathlib import Path

from initscope.errors import InitScopeError

__all__ = ["constructor_kwargs", "parse_shape", "parse_size", "parse_vars"]


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``--input-shape``: ``1,3,64,64`` (or ``1x3x64x64``) as a shape."""
    if text is None:
        return None
    parts = re.split(r"[,x×]", text.strip())
    shape = tuple(int(p) for p in parts if p.strip().isdigit())
    if len(shape) != len(parts) or any(s <= 0 for s in shape):
        raise InitScopeError(
            f"--input-shape {text!r} is not a shape", "write positive integers: 1,3,64,64"
        )
    return shape


def constructor_kwargs(arg: list[str] | None, args_file: Path | None) -> dict[str, object]:
    """The constructor arguments of ``--args-file`` and ``--arg`` (which win)."""
    from initscope.io.targets import load_args_file, parse_args

    kwargs = load_args_file(args_file) if args_file else {}
    kwargs.update(parse_args(arg or ()))
    return kwargs


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10}
_UNITS |= {"m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """``2GiB`` → 2147483648; ``512MB``, ``1.5G``, ``4096`` (bytes) too."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise InitScopeError(
            f"--max-memory {text!r} is not a size", "write e.g. 2GiB, 512MB or 1.5G"
        )
    return max(1, int(float(match.group(1)) * _UNITS[unit]))


def parse_vars(pairs: list[str] | None) -> dict[str, float]:
    """``--var name=number`` pairs (they override a rules file's ``vars:``)."""
    out: dict[str, float] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip().isidentifier() or number is None:
            raise InitScopeError(
                f"--var {pair!r} is not name=number", "write it like --var n_layer=12"
            )
        out[name.strip()] = number
    return out
