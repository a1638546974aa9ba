"""Distribution families that initializers draw from, with their numbers, moments and CDFs.

A :class:`Distribution` is what a traced init call *means*: ``kaiming_uniform_(a=√5)`` on a
5-input Linear is ``U(-0.4472, 0.4472)``. ``mean`` and ``std`` are always the moments of the
distribution itself (for a truncated normal, of the truncated distribution), so they can be put
next to a tensor's actual statistics without further arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

import torch

__all__ = [
    "Distribution",
    "Family",
    "format_number",
]

_SQRT2 = math.sqrt(2.0)
_SQRT12 = math.sqrt(12.0)  # the std of U(a, b) is (b - a) / sqrt(12)


class Family(str, Enum):
    """The shape of an initial distribution; the string value is the public name."""

    UNIFORM = "uniform"
    NORMAL = "normal"
    TRUNC_NORMAL = "trunc_normal"
    CONSTANT = "constant"
    ORTHOGONAL = "orthogonal"
    EYE = "eye"
    DIRAC = "dirac"
    SPARSE = "sparse"
    # Values computed without drawing (torch.arange, torch.tensor, log/exp of them): known
    # exactly to the model's code, no distribution to test a tensor against.
    DETERMINISTIC = "deterministic"
    # Values a chain of elementwise ops made from a draw, in no family above (Mamba's
    # time-step bias: the inverse softplus of a log-uniform): known by its recipe, and
    # tested against a probe of it (initscope.knowledge.recipes).
    DERIVED = "derived"
    CUSTOM = "custom"

    def __str__(self) -> str:
        return self.value


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _Phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / _SQRT2))


def _x_phi(x: float) -> float:
    """x·φ(x), 0 at ±inf (a one-sided truncation)."""
    return x * _phi(x) if math.isfinite(x) else 0.0


@dataclass(frozen=True)
class Distribution:
    """One initial distribution with its numbers.

    Only the fields a family uses are set; the rest stay ``None``:

    - uniform: ``low``, ``high``
    - normal: ``loc``, ``scale``
    - trunc_normal: ``loc``, ``scale`` (of the untruncated normal), ``low``, ``high`` (cut points)
    - constant: ``value``
    - orthogonal: ``gain``; eye and dirac: ``value`` (the diagonal's value)
    - sparse: ``scale`` and ``sparsity``
    - custom: nothing; the calls that produced it are kept by the caller.
    """

    family: Family
    mean: float | None = None
    std: float | None = None
    low: float | None = None
    high: float | None = None
    loc: float | None = None
    scale: float | None = None
    value: float | None = None
    gain: float | None = None
    sparsity: float | None = None

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def uniform(cls, low: float, high: float) -> Distribution:
        return cls(
            Family.UNIFORM, mean=(low + high) / 2, std=(high - low) / _SQRT12, low=low, high=high
        )

    @classmethod
    def normal(cls, mean: float, std: float) -> Distribution:
        return cls(Family.NORMAL, mean=mean, std=std, loc=mean, scale=std)

    @classmethod
    def trunc_normal(cls, loc: float, scale: float, low: float, high: float) -> Distribution:
        if scale <= 0 or high <= low:
            return cls(Family.TRUNC_NORMAL, loc=loc, scale=scale, low=low, high=high)
        # Moments of the truncated normal (Johnson, Kotz & Balakrishnan, ch. 10.1).
        alpha, beta = (low - loc) / scale, (high - loc) / scale
        z = _Phi(beta) - _Phi(alpha)
        if z <= 0:
            return cls(Family.TRUNC_NORMAL, loc=loc, scale=scale, low=low, high=high)
        d = (_phi(alpha) - _phi(beta)) / z
        var = scale**2 * (1 + (_x_phi(alpha) - _x_phi(beta)) / z - d * d)
        return cls(
            Family.TRUNC_NORMAL,
            mean=loc + scale * d,
            std=math.sqrt(max(var, 0.0)),
            low=low,
            high=high,
            loc=loc,
            scale=scale,
        )

    @classmethod
    def constant(cls, value: float) -> Distribution:
        return cls(Family.CONSTANT, mean=value, std=0.0, value=value)

    @classmethod
    def orthogonal(cls, gain: float, shape: tuple[int, ...]) -> Distribution:
        rows = shape[0]
        cols = math.prod(shape[1:])
        # torch.nn.init.orthogonal_ flattens to (rows, cols): the shorter side is orthonormal
        # (times gain), so the squares sum to min(rows, cols)·gain² over rows·cols entries.
        std = abs(gain) / math.sqrt(max(rows, cols)) if rows and cols else None
        return cls(Family.ORTHOGONAL, mean=None, std=std, gain=gain)

    @classmethod
    def eye(cls, shape: tuple[int, ...]) -> Distribution:
        n = math.prod(shape)
        ones = min(shape[0], shape[1])
        return cls(Family.EYE, mean=ones / n, std=_bernoulli_std(ones, n), value=1.0)

    @classmethod
    def dirac(cls, shape: tuple[int, ...], groups: int) -> Distribution:
        n = math.prod(shape)
        # torch.nn.init.dirac_: one 1 per (group, min(out/groups, in)) pair.
        ones = groups * min(shape[0] // max(groups, 1), shape[1])
        return cls(Family.DIRAC, mean=ones / n, std=_bernoulli_std(ones, n), value=1.0)

    @classmethod
    def sparse(cls, sparsity: float, std: float) -> Distribution:
        keep = 1.0 - sparsity
        return cls(Family.SPARSE, mean=0.0, std=std * math.sqrt(keep), scale=std, sparsity=sparsity)

    @classmethod
    def custom(cls) -> Distribution:
        return cls(Family.CUSTOM)

    @classmethod
    def deterministic(cls) -> Distribution:
        return cls(Family.DETERMINISTIC)

    @classmethod
    def derived(cls, mean: float | None = None, std: float | None = None) -> Distribution:
        """A chain's values; ``mean``/``std`` those of its probe, when it has one."""
        return cls(Family.DERIVED, mean=mean, std=std)

    # -- transforms (for in-place arithmetic after the init call) ------------------------
    def scaled(self, factor: float) -> Distribution | None:
        """The distribution of ``factor * X``, or None when the family cannot express it."""
        if self.family is Family.DETERMINISTIC:
            return self
        f = factor
        if self.family is Family.UNIFORM and self.low is not None and self.high is not None:
            lo, hi = sorted((self.low * f, self.high * f))
            return Distribution.uniform(lo, hi)
        if self.family is Family.NORMAL and self.loc is not None and self.scale is not None:
            return Distribution.normal(self.loc * f, abs(self.scale * f))
        if self.family is Family.CONSTANT and self.value is not None:
            return Distribution.constant(self.value * f)
        if (
            self.family is Family.TRUNC_NORMAL
            and f != 0
            and None not in (self.loc, self.scale, self.low, self.high)
        ):
            assert self.loc is not None and self.scale is not None
            assert self.low is not None and self.high is not None
            low, high = sorted((self.low * f, self.high * f))
            return Distribution.trunc_normal(self.loc * f, self.scale * abs(f), low, high)
        if self.family is Family.ORTHOGONAL and self.gain is not None and self.std is not None:
            return replace(self, gain=self.gain * f, std=self.std * abs(f))
        return None

    def shifted(self, offset: float) -> Distribution | None:
        """The distribution of ``X + offset``, or None when the family cannot express it."""
        if self.family is Family.DETERMINISTIC:
            return self
        if self.family is Family.UNIFORM and self.low is not None and self.high is not None:
            return Distribution.uniform(self.low + offset, self.high + offset)
        if self.family is Family.NORMAL and self.loc is not None and self.scale is not None:
            return Distribution.normal(self.loc + offset, self.scale)
        if self.family is Family.CONSTANT and self.value is not None:
            return Distribution.constant(self.value + offset)
        if self.family is Family.TRUNC_NORMAL and None not in (
            self.loc, self.scale, self.low, self.high
        ):  # fmt: skip
            assert self.loc is not None and self.scale is not None
            assert self.low is not None and self.high is not None
            return Distribution.trunc_normal(
                self.loc + offset, self.scale, self.low + offset, self.high + offset
            )
        return None

    # -- CDFs ----------------------------------------------------------------------------
    @property
    def is_continuous(self) -> bool:
        return self.family in (Family.UNIFORM, Family.NORMAL, Family.TRUNC_NORMAL) and (
            self.std is not None and self.std > 0
        )

    def cdf_form(self) -> tuple[Family, float, float, float, float] | None:
        """The numbers :meth:`cdf` computes with, (family, a, b, lo, hi), for a continuous
        family (None otherwise): a uniform's bounds (a, b); a normal's loc and scale (a, b);
        a truncated normal's, with its normal's CDF at the cut points (lo, hi)."""
        if self.family is Family.UNIFORM and self.low is not None and self.high is not None:
            return self.family, self.low, self.high, 0.0, 1.0
        if self.family is Family.NORMAL and self.loc is not None and self.scale:
            return self.family, self.loc, self.scale, 0.0, 1.0
        if (
            self.family is Family.TRUNC_NORMAL
            and self.loc is not None
            and self.scale
            and self.low is not None
            and self.high is not None
        ):
            lo = _Phi((self.low - self.loc) / self.scale)
            hi = _Phi((self.high - self.loc) / self.scale)
            return self.family, self.loc, self.scale, lo, hi
        return None

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        """The CDF at ``x`` (float64) for the continuous families."""
        form = self.cdf_form()
        if form is None:
            raise ValueError(f"no CDF for the {self.family} family")
        family, a, b, lo, hi = form
        x = x.to(torch.float64)
        if family is Family.UNIFORM:
            return ((x - a) / (b - a)).clamp(0.0, 1.0)
        raw = 0.5 * (1 + torch.erf((x - a) / (b * _SQRT2)))
        if family is Family.NORMAL:
            return raw
        return ((raw - lo) / (hi - lo)).clamp(0.0, 1.0)

    # -- text ----------------------------------------------------------------------------
    def label(self) -> str:
        """A compact mathematical label: ``U(-0.4472, 0.4472)``, ``N(0, 0.02)``, ``const 1``."""
        f = self.family
        if f is Family.UNIFORM and self.low is not None and self.high is not None:
            if math.isclose(self.low, -self.high, rel_tol=1e-9, abs_tol=1e-12):
                return f"U(±{format_number(self.high)})"
            return f"U({format_number(self.low)}, {format_number(self.high)})"
        if f is Family.NORMAL and self.loc is not None and self.scale is not None:
            return f"N({format_number(self.loc)}, {format_number(self.scale)})"
        if f is Family.TRUNC_NORMAL and self.loc is not None and self.scale is not None:
            loc, scale = format_number(self.loc), format_number(self.scale)
            return f"TN({loc}, {scale}; [{format_number(self.low)}, {format_number(self.high)}])"
        if f is Family.CONSTANT and self.value is not None:
            return f"const {format_number(self.value)}"
        if f is Family.ORTHOGONAL and self.gain is not None:
            return (
                "orthogonal" if self.gain == 1 else f"orthogonal(gain={format_number(self.gain)})"
            )
        if f is Family.SPARSE and self.scale is not None and self.sparsity is not None:
            return f"sparse({format_number(self.sparsity)}, N(0, {format_number(self.scale)}))"
        return f.value


def _bernoulli_std(ones: int, n: int) -> float:
    p = ones / n
    return math.sqrt(p * (1 - p))


def format_number(x: float | None, missing: str = "?") -> str:
    """4 significant digits; integers without a decimal point; inf and nan as such."""
    if x is None:
        return missing
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.4g}"
