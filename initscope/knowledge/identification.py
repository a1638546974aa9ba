"""Which init do a tensor's values actually follow?

Each candidate (the traced default, the named schemes for the tensor's fans, constants,
orthogonal matrices, and finally a normal or uniform with estimated numbers) is tested against
the values, and the first that the values do not contradict names the fit; if none fits the
tensor is ``unknown`` (trained weights), and if the tensor is too small to tell it is
``inconclusive``. Nothing is forced: a wrong confident name is worse than ``unknown``.

A candidate with fully specified numbers passes when all of these do, each at level
``ALPHA`` divided by the number of tests (Bonferroni):

- a Kolmogorov–Smirnov test of the bounded sample against the candidate's CDF (shape);
- a test of the full tensor's variance against the candidate's (scale), from the sample
  variance's exact first three cumulants, so that U(±1/√fan_in) and xavier_uniform are told
  apart even where their CDFs are close;
- a z-test of the full tensor's mean;
- for bounded families, the observed extremes: nothing outside the support, and for a
  uniform the largest value close to the bound, P(max < b − d) = (1 − d/(b − a))ⁿ;
- for normal and uniform candidates, the sample's kurtosis (tails).

Whether a tensor is at its default is one decision with one error budget, ``ALPHA``: the
default's tests and, for a matrix, the row test (two χ² tests) share it, each at ``ALPHA``
over their number, so values drawn from their default read "differs" with probability at
most ``ALPHA`` (``make bench-identify`` measures it on 100,000 fresh tensors).

The cost per tensor is O(sample) on top of the streaming statistics.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from initscope.knowledge.distributions import Distribution, Family
from initscope.knowledge.goodness import (
    chi2_sf,
    ks_test,
    ks_two_sample,
    kurtosis_test,
    variance_cumulants,
    variance_test,
)
from initscope.knowledge.recipes import probe_stats, replay
from initscope.knowledge.tracing import DefaultInit, fans
from initscope.stats import fused
from initscope.stats.fused import Lines
from initscope.stats.tensor import RunningStats, TensorStats

__all__ = [
    "ALPHA",
    "MIN_ELEMENTS",
    "TESTS",
    "Fit",
    "Identification",
    "Query",
    "Tests",
    "decision_tests",
    "identify",
    "identify_many",
    "structure_for",
]

# The error budget of one decision: a tensor drawn from its default is called "differs" with
# probability at most ALPHA, split evenly (Bonferroni) over the tests the decision runs.
ALPHA = 1e-3
# The tests of a fully specified candidate, as :class:`Tests` names them; a matrix's decision
# also runs the row test ("rows", two χ² tests).
TESTS = ("variance", "mean", "range", "ks", "kurtosis")
# Below this many values a shape test cannot separate the usual schemes (a 10-element bias).
MIN_ELEMENTS = 30
# Gains torch.nn.init.calculate_gain gives (torch/nn/init.py): relu √2, tanh 5/3, selu 3/4,
# leaky_relu(0.01) √(2/(1+0.01²)).
_GAINS: dict[str, float] = {
    "1": 1.0,
    "relu": math.sqrt(2.0),
    "tanh": 5.0 / 3.0,
    "selu": 0.75,
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
}


@dataclass(frozen=True)
class Fit:
    """What the values follow: a label such as ``xavier_uniform(gain=1)``, the family, the
    numbers estimated from the values, and the p-value of the winning candidate."""

    label: str
    family: Family | None
    params: Mapping[str, float] = field(default_factory=dict)
    p_value: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def __reduce__(self) -> tuple[Any, ...]:  # a mappingproxy does not pickle
        return (Fit, (self.label, self.family, dict(self.params), self.p_value))


@dataclass(frozen=True)
class Structure:
    """What the structured tests found on a matrix's sampled rows: their common gain when
    they are orthonormal up to one, else the p-value of row independence (None: too small
    to tell). Kept with a report, so that a later judgement against another expectation
    (``report --html --against rules``) reaches the same decision as ``check``."""

    orthogonal: Fit | None
    p_rows: float | None


@dataclass(frozen=True)
class Identification:
    fit: Fit
    matches_default: bool | None
    structure: Structure | None = None


# -- the tests ---------------------------------------------------------------------------------


def _z_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def _p_variance(d: Distribution, s: TensorStats) -> float | None:
    if s.std is None:
        return None
    return variance_test(s.std**2, s.numel, d)


def _p_mean(d: Distribution, s: TensorStats) -> float | None:
    if d.mean is None or d.std is None or s.mean is None or d.std == 0:
        return None
    return _z_p((s.mean - d.mean) / (d.std / math.sqrt(s.numel)))


def _p_range(d: Distribution, s: TensorStats, eps: float) -> float | None:
    """The extremes. ``eps`` is the relative resolution of the stored values: rounding to
    fp16/bf16 moves values by up to eps·|x|, and torch draws float32 uniforms on a grid of
    width·2⁻²⁴, so the largest value sits at least a grid step below the bound."""
    if d.low is None or d.high is None or s.min is None or s.max is None:
        return None
    width = d.high - d.low
    scale = max(abs(d.low), abs(d.high), width)
    slack = max(1e-6, 2 * eps) * scale
    if s.min < d.low - slack or s.max > d.high + slack:
        return 0.0
    if d.family is not Family.UNIFORM or width <= 0:
        return None
    grid = max(eps * scale, 2.0**-24 * width)
    gap = max(0.0, d.high - s.max - grid) + max(0.0, s.min - d.low - grid)
    # For n uniforms the two end gaps (as fractions of the width) sum to G with
    # P(G ≥ g) = n(1 − g)^(n−1) − (n − 1)(1 − g)^n (the spacings are exchangeable).
    n, q = s.numel, max(0.0, 1.0 - gap / width)
    return min(1.0, max(0.0, n * q ** (n - 1) - (n - 1) * q**n))


class _Sample:
    """One tensor's sample, prepared once for all the candidates it is tested against; the
    sort (for KS) and the kurtosis are computed on first use, since the moment tests reject
    most candidates without them, or beforehand for many samples at once
    (:func:`_prepare`)."""

    def __init__(self, values: torch.Tensor) -> None:
        if values.dtype != torch.float64 or values.dim() != 1 or values.requires_grad:
            values = values.detach().reshape(-1).to(torch.float64)
        self.values = values  # as a report's sample is already: nothing to convert
        self.size = values.numel()

    @functools.cached_property
    def sorted(self) -> torch.Tensor:  # float64, ascending
        if fused.available():
            return self._from_kernel()[0]
        return self.values.sort().values

    @functools.cached_property
    def b2(self) -> float | None:
        """The sample kurtosis m4 / m2², None for an empty or constant sample."""
        if not self.size:
            return None
        if fused.available():
            return self._from_kernel()[1]
        c = self.values - self.values.mean()
        c2 = c * c
        m2 = float(c2.mean())
        return float((c2 * c2).mean()) / (m2 * m2) if m2 > 0 else None

    def _from_kernel(self) -> tuple[torch.Tensor, float | None]:
        _prepare([self])
        return self.__dict__["sorted"], self.__dict__["b2"]


def _prepare(samples: list[_Sample]) -> None:
    """Sort many samples and take their kurtoses in one call of the kernel (a radix sort in
    C: a comparison sort of 4096 values costs about 250 µs, most of a tensor's
    identification); without the kernel, each is done on first use."""
    todo = [s for s in samples if "sorted" not in s.__dict__]
    if not todo or not fused.available():
        return
    ordered, kurtoses = fused.samples([s.values for s in todo])
    for s, o, b2 in zip(todo, ordered, kurtoses, strict=True):
        s.__dict__["sorted"] = o
        s.__dict__["b2"] = b2 if math.isfinite(b2) and s.size else None


def _p_kurtosis(d: Distribution, sample: _Sample) -> float | None:
    """The tails: a mixture (default plus a trained update) keeps the mean and variance of a
    candidate but not its kurtosis, and KS barely sees tails."""
    if sample.size < MIN_ELEMENTS or sample.b2 is None:
        return None
    return kurtosis_test(sample.b2, sample.size, d.family)


# Below this, a candidate is rejected at any error rate initscope uses (check splits 1e-3 over
# a run's decisions), so the remaining tests need not run: the combined p-value can only fall.
_CERTAIN = 1e-12


def _p_candidate(d: Distribution, s: TensorStats, sample: _Sample, eps: float) -> float:
    """The Bonferroni-combined p-value of the candidate's tests (a NaN p-value fails)."""
    ps = _p_values(d, s, sample, eps)
    return _combined(ps, len(ps)) if ps is not None else 0.0


def _combined(ps: Mapping[str, float], count: int) -> float:
    """Bonferroni: the smallest of the p-values times the number of tests sharing the level."""
    return min(1.0, min(ps.values()) * count) if ps else 0.0


def _p_values(
    d: Distribution, s: TensorStats, sample: _Sample, eps: float, *, every: bool = False
) -> dict[str, float] | None:
    """Each test's p-value for candidate ``d`` (a NaN one fails), None for values it cannot
    describe: a candidate that is not continuous, or values whose moments a float cannot hold
    (1e300 in float64: its fourth power overflows). The cheap moment tests run first; when
    they already reject beyond doubt, the KS test on the sample (a CDF over 4096 values) and
    the kurtosis are skipped, unless ``every``."""
    if not d.is_continuous:
        return None
    try:
        cheap = {
            "variance": _p_variance(d, s),
            "mean": _p_mean(d, s),
            "range": _p_range(d, s, eps),
        }
        ps = {k: p if math.isfinite(p) else 0.0 for k, p in cheap.items() if p is not None}
        if not every and ps and min(ps.values()) * len(TESTS) < _CERTAIN:
            return ps
        tail = {
            "ks": ks_test(sample.sorted, d, presorted=True).p_value if sample.size else None,
            "kurtosis": _p_kurtosis(d, sample),
        }
        ps |= {k: p if math.isfinite(p) else 0.0 for k, p in tail.items() if p is not None}
    except OverflowError:
        return None
    return ps


@dataclass(frozen=True)
class Tests:
    """The tests behind one "matches its default" decision: each one's p-value (``TESTS``
    names them; ``rows`` is the row test, itself two tests) and ``count``, how many tests
    share the decision's level: each rejects below ``level(name, alpha)``, so that values
    drawn from the default are called "differs" with probability at most ``alpha``."""

    p_values: Mapping[str, float]
    count: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "p_values", MappingProxyType(dict(self.p_values)))

    def level(self, name: str, alpha: float) -> float:
        return alpha * (2 if name == "rows" else 1) / self.count

    @property
    def p_value(self) -> float:
        """The decision's Bonferroni p-value: differs when it is at most alpha."""
        if not self.p_values:
            return 0.0
        share = {k: 2 if k == "rows" else 1 for k in self.p_values}
        return min(1.0, min(p * self.count / share[k] for k, p in self.p_values.items()))


@functools.lru_cache(maxsize=256)
def row_choice(shape: tuple[int, ...], count: int = 64) -> tuple[torch.Tensor, bool] | None:
    """Which lines of the matrix view the structured tests read: up to ``count`` random row
    indices (column indices, for tall matrices: then True), always the same for a shape.
    None below 8 × 8, where structure says nothing (a single row is trivially "orthogonal").
    Kept per shape (a checkpoint repeats few shapes); the indices are read only."""
    if len(shape) < 2:
        return None
    rows, cols = shape[0], math.prod(shape[1:])
    tall = rows > cols
    if tall:
        rows, cols = cols, rows
    if rows < 8 or cols < 8:
        return None
    g = torch.Generator().manual_seed(0)
    return torch.randperm(rows, generator=g)[:count], tall


@functools.lru_cache(maxsize=256)
def row_lines(shape: tuple[int, ...]) -> Lines | None:
    """:func:`row_choice` as flat lines, for a scan that copies them out as it reads (kept
    per shape, read only)."""
    choice = row_choice(shape)
    if choice is None:
        return None
    picked, tall = choice
    rows, cols = shape[0], math.prod(shape[1:])
    if tall:  # column j: x[j + i * cols] for each row i
        return Lines(picked, rows, cols)
    return Lines(picked * cols, cols, 1)


def _sample_rows(t: torch.Tensor) -> torch.Tensor | None:
    """The lines :func:`row_choice` picks, as float64; only those are copied."""
    choice = row_choice(tuple(t.shape))
    if choice is None:
        return None
    picked, tall = choice
    m = t.detach().reshape(t.shape[0], -1)
    return (m.T if tall else m)[picked].to(torch.float64)


def _p_rows(rows: torch.Tensor, numbers: fused.RowTest | None = None) -> float | None:
    """Independence across rows, on up to 64 random rows (O(64 · cols)): under any iid init
    their means and variances spread only as much as sampling allows (χ² tests). Trained
    weights (row offsets, rescaled rows, low rank plus noise) spread far more. ``numbers``:
    the kernel's, when the caller has them."""
    count = rows.shape[0]
    if numbers is None and fused.available():
        numbers = fused.row_test(rows)
    if numbers is not None:
        spread_means, spread_variances, s2, v0 = numbers[:4]
    else:
        spread_means, spread_variances, s2, v0 = _row_test(rows)
    if s2 == 0 or v0 <= 0:  # no spread, or no variance of the variances to test against
        return None
    p_mean, p_var = chi2_sf(spread_means, count - 1), chi2_sf(spread_variances, count - 1)
    return min(1.0, 2 * min(p_mean, p_var))


def _row_test(rows: torch.Tensor) -> tuple[float, float, float, float]:
    """What the kernel's fused_row_test computes, with torch: the χ² statistics of the rows'
    means and of their variances, and the s2 and v0 they are scaled by."""
    count, cols = rows.shape
    n = count * cols
    # Centred on the grand mean, squared in place, each reduction one pass: no temporaries
    # the size of the block.
    row_means = rows.mean(1)
    grand = float(row_means.mean())
    x2 = rows - grand
    x2.mul_(x2)  # products, not pow: torch's generic pow is several times slower
    row_squares = x2.sum(1)
    flat = x2.view(-1)
    fourth = float(torch.dot(flat, flat))
    # The per-row numbers as floats: a few dozen of them, where each torch op costs more
    # than the arithmetic. sum, not fsum: values near the float limit overflow to inf as
    # torch's sums do, and fsum raises on inf - inf.
    means = [m - grand for m in row_means.tolist()]  # each row's mean of the centred values
    squares = row_squares.tolist()
    s2 = sum(squares) / n
    mu4 = fourth / n
    mean_of_means = sum(means) / count
    spread_means = sum((m - mean_of_means) * (m - mean_of_means) for m in means)
    # Each row's sample variance (Bessel-corrected, as torch.var), from the centred values.
    variances = [(q - cols * m * m) / (cols - 1) for q, m in zip(squares, means, strict=True)]
    # Var of a row's sample variance: (μ4 − σ⁴(c − 3)/(c − 1)) / c
    v0 = (mu4 - s2 * s2 * (cols - 3) / (cols - 1)) / cols
    mean_of_variances = sum(variances) / count
    spread_variances = sum((v - mean_of_variances) * (v - mean_of_variances) for v in variances)
    return _ratio(spread_means, s2 / cols), _ratio(spread_variances, v0), s2, v0


def _ratio(a: float, b: float) -> float:
    """a / b as IEEE floats divide (as the kernel does): ±inf or NaN where b is 0."""
    if b != 0:
        return a / b
    return math.nan if a == 0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)


# -- candidates --------------------------------------------------------------------------------


def _named(shape: tuple[int, ...]) -> Iterator[tuple[str, Distribution]]:
    """The named schemes, with their numbers for a tensor of ``shape``."""
    f = fans(shape)
    if f is None:
        return
    fan_in, fan_out = f
    if fan_in == 0 or fan_out == 0:
        return
    # torch's layer default, kaiming_uniform(a=√5): bound = 1/√fan_in
    yield (
        "kaiming_uniform(a=sqrt(5))",
        Distribution.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in)),
    )
    for gname, g in _GAINS.items():
        std = g * math.sqrt(2.0 / (fan_in + fan_out))
        b = math.sqrt(3.0) * std
        yield f"xavier_uniform(gain={gname})", Distribution.uniform(-b, b)
        yield f"xavier_normal(gain={gname})", Distribution.normal(0.0, std)
    for nl, g in (("relu", _GAINS["relu"]), ("leaky_relu", _GAINS["leaky_relu"]), ("linear", 1.0)):
        for mode, fan in (("fan_in", fan_in), ("fan_out", fan_out)):
            std = g / math.sqrt(fan)
            b = math.sqrt(3.0) * std
            yield f"kaiming_uniform({nl}, {mode})", Distribution.uniform(-b, b)
            yield f"kaiming_normal({nl}, {mode})", Distribution.normal(0.0, std)
    yield "lecun_normal", Distribution.normal(0.0, 1.0 / math.sqrt(fan_in))


def _uniform_bounds(s: TensorStats) -> tuple[float, float]:
    """U(a, b) estimated from n values: the extremes fall short of the bounds by about
    (b − a)/(n + 1), so widen them by (max − min)/(n − 1)."""
    assert s.min is not None and s.max is not None
    pad = (s.max - s.min) / max(s.numel - 1, 1)
    return s.min - pad, s.max + pad


def _round_values(x: float) -> list[float]:
    """Round numbers near ``x`` to try before ``x`` itself: 1, 2 or 5 × 10^k (0.0198 → 0.02),
    then 2 significant digits (0.0071)."""
    if x <= 0 or not math.isfinite(x):
        return []
    k = math.floor(math.log10(x))
    # The nearest of 1, 2, 5 × 10^(k−1 … k+1) in ratio, the first of equals: one of these
    # four, as x lies in [10^k, 10^(k+1)) (or within rounding of an end, itself one of them),
    # and each step left out is farther than one kept by a factor of 2 or more.
    nearest, best = x, math.inf
    for step in (10.0**k, 2 * 10.0**k, 5 * 10.0**k, 10.0 ** (k + 1)):
        distance = abs(math.log(step / x))
        if distance < best:
            nearest, best = step, distance
    return [float(f"{nearest:.1g}"), float(f"{x:.2g}")]


def _estimated(s: TensorStats) -> Iterator[tuple[str, Distribution]]:
    """Normal and uniform with numbers from the values: first round ones (std 0.02), then
    the raw estimates."""
    assert s.mean is not None and s.std is not None and s.min is not None and s.max is not None
    mean = s.mean if abs(s.mean) > 3 * s.std / math.sqrt(s.numel) else 0.0
    for std in dict.fromkeys((*_round_values(s.std), s.std)):
        yield _normal_label(mean, std), Distribution.normal(mean, std)
    lo, hi = _uniform_bounds(s)
    if abs(lo + hi) < 0.02 * (hi - lo):  # symmetric within 1%
        b = max(-lo, hi)
        lo, hi = -b, b
    yield _uniform_label(lo, hi), Distribution.uniform(lo, hi)
    # torch's trunc_normal_ defaults cut at a = −2, b = 2 (in units of std when std = 1); a
    # normal cut at ±2σ has std 0.8796σ (1 + (αφ(α) − βφ(β))/Z − 0 for α = −β = 2).
    scale = s.std / 0.8796
    if s.mean is not None and abs(s.mean) < 3 * s.std / math.sqrt(s.numel):
        for sigma in dict.fromkeys((*_round_values(scale), scale)):
            tn = Distribution.trunc_normal(0.0, sigma, -2 * sigma, 2 * sigma)
            yield f"trunc_normal(std={sigma:.3g}, a=-2σ, b=2σ)", tn


def _normal_label(mean: float, std: float) -> str:
    if mean == 0:
        return f"normal(std={std:.3g})"
    return f"normal(mean={mean:.3g}, std={std:.3g})"


def _uniform_label(low: float, high: float) -> str:
    return f"uniform({low:.4g}, {high:.4g})"


def _default_label(d: DefaultInit) -> str:
    """The label of a traced default, spelled as the named candidates are."""
    name = d.call.name.rstrip("_")
    args = d.call.args
    dist = d.distribution
    if d.then:  # rescaled after the init call: the numbers, not the scheme's name
        if dist.family is Family.UNIFORM and dist.low is not None and dist.high is not None:
            return _uniform_label(dist.low, dist.high)
        if dist.family is Family.NORMAL and dist.loc is not None and dist.scale is not None:
            return _normal_label(dist.loc, dist.scale)
        return dist.label()
    if name in ("xavier_uniform", "xavier_normal"):
        raw_gain = args.get("gain", 1.0)
        gain = float(raw_gain) if isinstance(raw_gain, int | float) else 1.0
        known = [k for k, v in _GAINS.items() if math.isclose(v, gain, rel_tol=1e-6)]
        return f"{name}(gain={known[0] if known else f'{gain:.4g}'})"
    if name in ("kaiming_uniform", "kaiming_normal"):
        slope = float(args.get("a", 0) or 0)
        nl = str(args.get("nonlinearity", "leaky_relu"))
        if name == "kaiming_uniform" and math.isclose(slope, math.sqrt(5)):
            return "kaiming_uniform(a=sqrt(5))"
        if nl == "leaky_relu" and slope == 0:
            nl = "relu"  # torch's kaiming default: leaky_relu with slope 0 has relu's gain
        elif nl == "leaky_relu" and not math.isclose(slope, 0.01):
            nl = f"leaky_relu({slope:g})"
        return f"{name}({nl}, {args.get('mode', 'fan_in')})"
    if dist.family is Family.NORMAL and dist.scale is not None and dist.loc is not None:
        return _normal_label(dist.loc, dist.scale)
    if dist.family is Family.TRUNC_NORMAL and dist.scale is not None:
        return f"trunc_normal(std={dist.scale:.3g})"
    uniform = dist.family is Family.UNIFORM and dist.low is not None and dist.high is not None
    if uniform and (name == "uniform" or not name):
        assert dist.low is not None and dist.high is not None
        return _uniform_label(dist.low, dist.high)
    if name in ("uniform", "normal") or not name:
        return dist.label()
    return name


def _constant(value: float) -> Fit:
    if value == 0:
        return Fit("zeros", Family.CONSTANT, {"value": 0.0}, 1.0)
    if value == 1:
        return Fit("ones", Family.CONSTANT, {"value": 1.0}, 1.0)
    return Fit(f"constant({value:g})", Family.CONSTANT, {"value": value}, 1.0)


def _orthogonal(rows: torch.Tensor, first: tuple[float, float] | None = None) -> Fit | None:
    """Rows (or columns, for tall matrices) orthonormal up to a common gain; checked on up to
    64 random rows so the cost stays O(64² · cols). ``first``: the first row's squared norm
    and its product with the second, when the caller has them (the kernel's row test)."""
    # float32 orthogonality holds to ~1e-6 relative; random rows are off by ~1/√cols. Two rows
    # settle most tensors before the whole Gram matrix is formed.
    if first is None:
        r0, r1 = rows[0], rows[1]
        first = float(r0 @ r0), float(r0 @ r1)
    n0, dot01 = first
    if n0 <= 0 or abs(dot01) >= 1e-4 * n0:
        return None
    gram = rows @ rows.T
    gain2 = float(gram.diagonal().mean())
    if gain2 <= 0:
        return None
    off = gram - torch.diag(gram.diagonal())
    if (
        float(off.abs().max()) < 1e-4 * gain2
        and float((gram.diagonal() / gain2 - 1).abs().max()) < 1e-4
    ):
        gain = math.sqrt(gain2)
        label = (
            "orthogonal"
            if math.isclose(gain, 1.0, rel_tol=1e-3)
            else f"orthogonal(gain={gain:.3g})"
        )
        return Fit(label, Family.ORTHOGONAL, {"gain": gain}, None)
    return None


def _resolution(t: torch.Tensor | torch.dtype | None) -> float:
    dtype = t.dtype if isinstance(t, torch.Tensor) else t
    if dtype is not None and dtype.is_floating_point:
        return float(torch.finfo(dtype).eps)
    return float(torch.finfo(torch.float32).eps)


def structure_of(tensor: torch.Tensor) -> Structure | None:
    """The structured tests on up to 64 random rows of ``tensor``'s matrix view; None below
    8 × 8 or for fewer than MIN_ELEMENTS values."""
    if tensor.numel() < MIN_ELEMENTS:
        return None
    return structure_of_rows(_sample_rows(tensor))


def structure_of_rows(rows: torch.Tensor | None) -> Structure | None:
    """The structured tests on rows already picked by :func:`row_choice` (float64)."""
    if rows is None or rows.numel() < MIN_ELEMENTS:
        return None
    # the kernel gives the row test's numbers and the orthogonality test's first ones at once
    numbers = fused.row_test(rows) if fused.available() else None
    ortho = _orthogonal(rows, None if numbers is None else (numbers.norm0, numbers.dot01))
    return Structure(ortho, None if ortho is not None else _p_rows(rows, numbers))


def identify(
    rs: RunningStats,
    shape: tuple[int, ...],
    default: DefaultInit | None,
    tensor: torch.Tensor | None = None,
    alpha: float = ALPHA,
    *,
    structure: Structure | None = None,
    dtype: torch.dtype | None = None,
    exhaustive: bool = False,
) -> Identification:
    """Name what the values of one tensor follow, and whether that is its traced default.

    ``rs`` holds the full-tensor statistics and the bounded sample; ``tensor`` (optional) is
    used only for the structured checks (orthogonal, row independence) on matrices, whose
    result can be given instead as ``structure`` (and is returned for that use), with the
    stored ``dtype`` for the resolution of the range test. ``alpha`` is the false rejection
    rate of each decision; ``check`` lowers it to bound the rate over a whole run.
    ``exhaustive`` tests every candidate to the end instead of screening out by their
    variance those that cannot win: the same answer, slower (the reference for tests).
    """
    return identify_stats(
        rs.result(),
        rs.sample(),
        shape,
        default,
        tensor,
        alpha,
        structure=structure,
        dtype=dtype,
        exhaustive=exhaustive,
    )


def identify_stats(
    s: TensorStats,
    values: torch.Tensor,
    shape: tuple[int, ...],
    default: DefaultInit | None,
    tensor: torch.Tensor | None = None,
    alpha: float = ALPHA,
    *,
    structure: Structure | None = None,
    dtype: torch.dtype | None = None,
    exhaustive: bool = False,
) -> Identification:
    """:func:`identify` from finished statistics and the sample (``values``), as a report
    holds them."""
    return _identify(
        s,
        _Sample(values),
        shape,
        default,
        tensor,
        alpha,
        structure=structure,
        dtype=dtype,
        exhaustive=exhaustive,
    )


@dataclass(frozen=True)
class Query:
    """One tensor for :func:`identify_many`: its finished statistics, its sample, shape,
    traced default, the structured tests' result and the stored dtype, as :func:`identify`
    takes them."""

    stats: TensorStats
    sample: torch.Tensor
    shape: tuple[int, ...]
    default: DefaultInit | None = None
    structure: Structure | None = None
    dtype: torch.dtype | None = None


def structure_for(s: TensorStats, tensor: torch.Tensor) -> Structure | None:
    """The structured tests :func:`identify` runs on ``tensor`` (a matrix's sampled rows),
    to be given to it as ``structure`` when the tensor itself is not kept; None for values
    it decides from their statistics alone, or too small to test."""
    return structure_of(tensor) if _degenerate(s, None) is None else None


def identify_many(queries: Sequence[Query], alpha: float = ALPHA) -> list[Identification]:
    """:func:`identify` for many tensors of any sizes and dtypes, the same answers: their
    samples are sorted and their kurtoses taken in one call of the kernel (where a tensor
    alone takes one call each), then each is decided on its own."""
    samples = [_Sample(q.sample) for q in queries]
    # Values some test will read in order: not those decided by their statistics alone.
    _prepare(
        [x for q, x in zip(queries, samples, strict=True) if _degenerate(q.stats, None) is None]
    )
    return [
        _identify(q.stats, x, q.shape, q.default, None, alpha, structure=q.structure, dtype=q.dtype)
        for q, x in zip(queries, samples, strict=True)
    ]


def _identify(
    s: TensorStats,
    sample: _Sample,
    shape: tuple[int, ...],
    default: DefaultInit | None,
    tensor: torch.Tensor | None,
    alpha: float,
    *,
    structure: Structure | None,
    dtype: torch.dtype | None,
    exhaustive: bool = False,
) -> Identification:
    """:func:`identify_stats` with the sample prepared (:class:`_Sample`)."""
    values = sample.values
    known_default = default.distribution if default is not None and default.is_known else None
    stored = tensor.dtype if tensor is not None else dtype
    if known_default is not None and known_default.family is Family.DETERMINISTIC:
        # Values the code computed: what they look like is said, and whether they are the
        # values its recipe computes again (None when there is no recipe to replay).
        assert default is not None
        found = _identify(
            s,
            sample,
            shape,
            None,
            tensor,
            alpha,
            structure=structure,
            dtype=dtype,
            exhaustive=exhaustive,
        )
        return Identification(
            found.fit, _equals_replay(default, s, values, stored), found.structure
        )
    degenerate = _degenerate(s, known_default)
    if degenerate is not None:
        return degenerate
    eps = _resolution(stored)
    if structure is None and tensor is not None:
        structure = structure_of(tensor)
    exact = _by_pattern(s, values, shape, known_default, eps, alpha)
    if exact is not None:
        return Identification(exact.fit, exact.matches_default, structure)
    if structure is not None and structure.orthogonal is not None:
        return _as_orthogonal(structure, structure.orthogonal, known_default)
    rows = _p_rows_of(structure, default)
    matches_default: bool | None = None
    if known_default is not None and known_default.family is Family.DERIVED:
        assert default is not None
        p_probe = _p_probe(default, s, sample, stored)
        if p_probe is not None and p_probe > alpha:
            assert s.mean is not None and s.std is not None  # a probe p-value needs both
            fit = Fit(default.label(), Family.DERIVED, {"mean": s.mean, "std": s.std}, p_probe)
            return Identification(fit, True, structure)
        matches_default = None if p_probe is None else False
    elif known_default is not None and known_default.is_continuous:
        p = _decision(known_default, s, sample, eps, rows).p_value
        if p > alpha:
            assert default is not None
            return Identification(
                Fit(_default_label(default), known_default.family, _estimate(known_default, s), p),
                True,
                structure,
            )
        matches_default = False
    elif known_default is not None and known_default.family is not Family.DETERMINISTIC:
        matches_default = False  # a constant/structured default, and the values are neither
    if rows is not None and rows < alpha:
        # Rows that are not independent draws: no elementwise distribution describes them.
        return Identification(Fit("unknown", None), matches_default, structure)
    best = _best_candidate(shape, s, sample, eps, alpha, exhaustive=exhaustive)
    if best is None:
        return Identification(Fit("unknown", None), matches_default, structure)
    p, label, d = best
    return Identification(Fit(label, d.family, _estimate(d, s), p), matches_default, structure)


def _p_probe(
    default: DefaultInit, s: TensorStats, sample: _Sample, dtype: torch.dtype | None
) -> float | None:
    """The Bonferroni-combined p-value of the values against a probe of a derived default
    (PROBE_SIZE draws replayed through its recipe): the two-sample KS test on the sample
    (shape), and z-tests of the whole tensor's mean and variance whose spread counts both
    the tensor's and the probe's (scale). None when the recipe gives no probe."""
    reference = probe_stats(default.recipe) if default.recipe is not None else None
    if reference is None or s.mean is None or s.std is None or not sample.size:
        return None
    probe = reference.sorted
    if dtype is not None and dtype.is_floating_point and dtype != torch.float64:
        probe = probe.to(dtype).to(torch.float64)  # the stored values' rounding, order kept
    p_shape = ks_two_sample(sample.sorted, probe).p_value
    n, m = s.numel, probe.numel()
    var = reference.std**2
    p_mean = _z_p((s.mean - reference.mean) / math.sqrt(var / n + var / m)) if var > 0 else 1.0
    spread = math.sqrt(max(reference.m4 - var * var, 1e-300) * (1 / n + 1 / m))
    p_var = _z_p((s.std**2 - var) / spread)
    ps = [p if math.isfinite(p) else 0.0 for p in (p_shape, p_mean, p_var)]
    return min(1.0, 3 * min(ps))


# How far a stored value may sit from its replay, in units of the stored dtype's eps times
# its size plus the largest value's: the model computed in float32 (or lower) step by step
# where the replay computes in float64 and rounds once, and errors carry the size of what
# was computed with (float32 linspace(-1, 1, 20000) is off by up to 6e-8 near 0).
_REPLAY_ULPS = 16.0


def _equals_replay(
    default: DefaultInit, s: TensorStats, values: torch.Tensor, dtype: torch.dtype | None
) -> bool | None:
    """Whether a deterministic tensor holds the values its recipe computes: place by place
    when the sample is the whole tensor (up to SAMPLE_SIZE values), otherwise every sampled
    value among the replayed ones and the whole tensor's mean, std and extremes equal to
    theirs (a permutation of the right values goes unseen there). None without a replay."""
    expected = replay(default.recipe) if default.recipe is not None else None
    if expected is None or expected.numel() != s.numel or s.mean is None or s.std is None:
        return None
    flat = expected.reshape(-1)
    if dtype is not None and dtype.is_floating_point:
        flat = flat.to(dtype).to(torch.float64)
    eps = _resolution(dtype)
    size = float(flat.abs().max()) if flat.numel() else 0.0
    if values.numel() == s.numel:
        got = values.reshape(-1).to(torch.float64)
        tol = _REPLAY_ULPS * eps * (flat.abs() + size) + 1e-300
        return bool(((got - flat).abs() <= tol).all())
    whole = _REPLAY_ULPS * eps * max(size, 1e-300)
    e_mean, e_std = float(flat.mean()), float(flat.std()) if flat.numel() > 1 else 0.0
    if s.min is None or s.max is None:
        return False
    moments = (
        abs(s.mean - e_mean) <= whole
        and abs(s.std - e_std) <= whole
        and abs(s.min - float(flat.min())) <= whole
        and abs(s.max - float(flat.max())) <= whole
    )
    if not moments:
        return False
    ordered = flat.sort().values
    got = values.reshape(-1).to(torch.float64)
    at = torch.searchsorted(ordered, got).clamp(max=ordered.numel() - 1)
    below = (at - 1).clamp(min=0)
    nearest = torch.minimum((ordered[at] - got).abs(), (ordered[below] - got).abs())
    tol = _REPLAY_ULPS * eps * (got.abs() + size) + 1e-300
    return bool((nearest <= tol).all())


def _decision(
    d: Distribution,
    s: TensorStats,
    sample: _Sample,
    eps: float,
    rows: float | None,
    *,
    every: bool = False,
) -> Tests:
    """The tests of "the values follow the continuous default ``d``": the candidate's, and
    the row test's p-value ``rows`` where it applies (None elsewhere)."""
    ps = _p_values(d, s, sample, eps, every=every)
    if ps is None:
        return Tests({}, 1)
    count = len(ps)
    if rows is not None:
        ps["rows"] = rows
        count += 2
    return Tests(ps, count)


def decision_tests(
    rs: RunningStats,
    shape: tuple[int, ...],
    default: DefaultInit | None,
    tensor: torch.Tensor | None = None,
    *,
    structure: Structure | None = None,
    dtype: torch.dtype | None = None,
) -> Tests | None:
    """Every test behind :func:`identify`'s ``matches_default`` for values whose default is
    a continuous distribution (None for any other default, or too few or non-finite values),
    none of them skipped: to measure how often each one rejects values drawn from it."""
    s, values = rs.result(), rs.sample()
    known = default.distribution if default is not None and default.is_known else None
    if known is None or not known.is_continuous or _degenerate(s, known) is not None:
        return None
    if structure is None and tensor is not None:
        structure = structure_of(tensor)
    eps = _resolution(tensor if tensor is not None else dtype)
    rows = _p_rows_of(structure, default)
    return _decision(known, s, _Sample(values), eps, rows, every=True)


def _by_pattern(
    s: TensorStats,
    values: torch.Tensor,
    shape: tuple[int, ...],
    known_default: Distribution | None,
    eps: float,
    alpha: float,
) -> Identification | None:
    """A default whose values are a pattern, not draws, identified as that pattern when the
    values show it (None otherwise: the other tests then say what they follow):

    - eye_ / dirac_ write ones at fixed places and zeros elsewhere: zeros and ones only, as
      many ones as the default writes (its mean times the size);
    - sparse_ zeroes ceil(sparsity · rows) entries of every column and draws the rest from
      N(0, std) (torch/nn/init.py sparse_): exactly that many zeros, and nonzero values that
      pass the normal tests."""
    d = known_default
    if d is None or s.mean is None or s.std is None:
        return None
    zeros = round(s.zero_fraction * s.numel)
    if d.family in (Family.EYE, Family.DIRAC) and d.mean is not None:
        ones = round(d.mean * s.numel)
        if s.min == 0 and s.max == d.value and s.numel - zeros == ones:
            fit = Fit(d.family.value, d.family, {"ones": float(ones)}, None)
            return Identification(fit, True)
        return None
    if d.family is not Family.SPARSE or len(shape) != 2 or d.sparsity is None or d.scale is None:
        return None
    rows, cols = shape
    nonzero = s.numel - zeros
    if zeros != math.ceil(d.sparsity * rows) * cols or nonzero < MIN_ELEMENTS:
        return None
    # The nonzero values' moments, from the whole tensor's (zeros add nothing to the sums).
    mean = s.mean * s.numel / nonzero
    squares = s.std**2 * (s.numel - 1) + s.numel * s.mean**2
    std = math.sqrt(max(squares - nonzero * mean**2, 0.0) / (nonzero - 1))
    drawn = TensorStats(nonzero, mean, std, s.min, s.max, s.abs_max, 0.0, 0, 0)
    sample = _Sample(values[values != 0])
    p = _p_candidate(Distribution.normal(0.0, d.scale), drawn, sample, eps)
    if p <= alpha:
        return None
    fit = Fit(d.label(), Family.SPARSE, {"sparsity": zeros / s.numel, "std": std}, p)
    return Identification(fit, True)


def _degenerate(s: TensorStats, known_default: Distribution | None) -> Identification | None:
    """The identification of values no distribution test applies to, or None: non-finite
    values (unknown), fewer than 2 values, or fewer than MIN_ELEMENTS that are not all
    equal (inconclusive), and all-equal values (a constant)."""
    if s.nan_count or s.inf_count or s.min is None or s.max is None:
        return Identification(Fit("unknown", None), None if known_default is None else False)
    if s.numel < 2:
        return Identification(Fit("inconclusive", None), None)
    if s.min == s.max:
        matches = None
        if known_default is not None and known_default.family is not Family.DETERMINISTIC:
            matches = (
                known_default.family is Family.CONSTANT
                and known_default.value is not None
                and math.isclose(known_default.value, s.min, rel_tol=1e-6, abs_tol=1e-12)
            )
        return Identification(_constant(s.min), matches)
    if s.numel < MIN_ELEMENTS:
        # Values that are not all equal certainly differ from a constant default.
        differs = known_default is not None and known_default.family is Family.CONSTANT
        return Identification(Fit("inconclusive", None), False if differs else None)
    return None


def _as_orthogonal(
    structure: Structure, ortho: Fit, known_default: Distribution | None
) -> Identification:
    """An orthogonal matrix: whether it is the default is whether that is orthogonal with the
    same gain."""
    matches = None
    if known_default is not None:
        matches = (
            known_default.family is Family.ORTHOGONAL
            and known_default.gain is not None
            and math.isclose(abs(known_default.gain), ortho.params["gain"], rel_tol=1e-3)
        )
    return Identification(ortho, matches, structure)


def _p_rows_of(structure: Structure | None, default: DefaultInit | None) -> float | None:
    """The row test's p-value where it applies: a default that leaves part of the tensor
    alone (a zeroed padding row) is exempt, as that row is structure."""
    if structure is None or (default is not None and default.partial):
        return None
    return structure.p_rows


def _best_candidate(
    shape: tuple[int, ...],
    s: TensorStats,
    sample: _Sample,
    eps: float,
    alpha: float,
    *,
    exhaustive: bool = False,
) -> tuple[float, str, Distribution] | None:
    """(p, label, distribution) of the candidate the values fit: of the named schemes for
    the tensor's fans, the one with the highest p above ``alpha``; failing those, the first
    estimated normal or uniform that passes. None when nothing fits.

    A candidate whose variance alone bounds its p-value at or below what it would have to
    beat (``alpha``, or the best p so far) is not tested further (:func:`_cannot_beat`); the
    answer is the same as testing every candidate, which ``exhaustive`` does (the reference
    the screened path is tested against)."""
    best: tuple[float, str, Distribution] | None = None
    screen = not exhaustive and s.std is not None and math.isfinite(s.std)
    variance = s.std**2 if s.std is not None else math.nan
    named = _named_screens(shape, s.numel)
    if screen and math.isfinite(variance):  # (a std over 1e154 squares to inf)
        # Those that cannot beat alpha at this variance go first, all at once: outside its
        # window (_screen_windows) a candidate's _cannot_beat is true at alpha, and so at any
        # threshold above it.
        windows = _screen_windows(shape, s.numel, alpha)
        named = tuple(c for c, (lo, hi) in zip(named, windows, strict=True) if lo <= variance <= hi)
    for label, d, gamma in named:
        threshold = alpha if best is None else max(alpha, best[0])
        if screen and gamma is not None and _cannot_beat(gamma, variance, threshold):
            continue
        p = _p_candidate(d, s, sample, eps)
        if p > alpha and (best is None or p > best[0]):
            best = (p, label, d)
    if best is None:
        for label, d in _estimated(s):
            gamma = _variance_gamma(d, s.numel) if screen else None
            if gamma is not None and _cannot_beat(gamma, variance, alpha):
                continue
            p = _p_candidate(d, s, sample, eps)
            if p > alpha:
                best = (p, label, d)
                break
    return best


@functools.lru_cache(maxsize=256)
def _named_screens(
    shape: tuple[int, ...], n: int
) -> tuple[tuple[str, Distribution, tuple[float, float, float] | None], ...]:
    """The named candidates for ``shape`` with their :func:`_variance_gamma` for ``n``
    values, kept: a checkpoint repeats few shapes (the experts of a MoE model are thousands
    of tensors of two shapes), and these depend on the shape and size alone."""
    return tuple((label, d, _variance_gamma(d, n)) for label, d in _named(shape))


@functools.lru_cache(maxsize=256)
def _screen_windows(
    shape: tuple[int, ...], n: int, alpha: float
) -> tuple[tuple[float, float], ...]:
    """For each of :func:`_named_screens`' candidates, the variances (lo, hi) outside which
    :func:`_cannot_beat` is true at ``alpha``: its bound is 2·len(TESTS)·exp(k(1 + ln r − r))
    with r = 1 + z/√k rising with the variance, greatest at r = 1, so the variances where the
    candidate might pass form one window, its ends where k(1 + ln r − r) = ln(alpha) − 1e-6 −
    ln(2·len(TESTS)). The ends are solved for (Newton) and widened by a millionth of their
    distance from κ2, far more than rounding moves them; (−inf, inf) where no gamma screens."""
    level = math.log(alpha) - 1e-6 - math.log(2.0 * _MOST_TESTS)
    out = []
    for _, _, gamma in _named_screens(shape, n):
        if gamma is None or not alpha > 0:
            out.append((-math.inf, math.inf))
            continue
        k2, sd, k = gamma
        ends = []
        for side in (-1.0, 1.0):
            r = _gamma_level(k, level, side)
            if r is None:
                ends.append(side * math.inf)
                continue
            z = (r - 1.0) * math.sqrt(k) * (1.0 + 1e-6)
            ends.append(k2 + z * sd)
        out.append((ends[0], ends[1]))
    return tuple(out)


def _gamma_level(k: float, level: float, side: float) -> float | None:
    """The r on ``side`` of 1 (−1: below, 1: above) where k(1 + ln r − r) = ``level`` < 0,
    by Newton's method on u = r − 1 (h(u) = log1p(u) − u, concave, 0 at u = 0; in u it keeps
    its precision where r is within 1e-5 of 1, as for k in the millions), or None when it
    does not settle (a window left open: only a weaker screen)."""
    target = level / k
    # Start where the quadratic approximation −u²/2 puts it (for u > −1).
    u = side * min(math.sqrt(-2.0 * target), 0.5 if side < 0 else 1e6)
    for _ in range(100):
        h = math.log1p(u) - u - target
        slope = 1.0 / (1.0 + u) - 1.0
        if slope == 0:
            return None
        nxt = u - h / slope
        if nxt <= -1.0:
            nxt = (u - 1.0) / 2  # halfway to the pole at r = 0
        if abs(nxt - u) <= 1e-13 * abs(u):
            u = nxt
            break
        u = nxt
    if abs(math.log1p(u) - u - target) > 1e-8 * abs(target):
        return None
    return 1.0 + u


def _variance_gamma(d: Distribution, n: int) -> tuple[float, float, float] | None:
    """(κ2, the sample variance's standard deviation, the gamma's shape k): the numbers
    :func:`variance_test` computes for candidate ``d`` and ``n`` values before it reads the
    variance, the same operations in the same order; None where it would take another
    branch (no cumulants, n < 3, no spread, or the normal approximation)."""
    if not d.is_continuous:
        return None
    try:
        cumulants = variance_cumulants(d)
        if cumulants is None or n < 3:
            return None
        k2, k4, k6 = cumulants
        var = k4 / n + 2.0 * k2 * k2 / (n - 1)
        third = k6 / n**2 + 12.0 * k4 * k2 / (n * (n - 1)) + 8.0 * k2**3 / (n - 1) ** 2
        if not var > 0:
            return None
        skew = third / var**1.5
        if not skew >= 1e-12:
            return None
        return k2, math.sqrt(var), 4.0 / (skew * skew)
    except (OverflowError, ZeroDivisionError):  # numbers a float cannot hold: not screened
        return None


# The largest number of tests a candidate's p-value is combined over (Bonferroni).
_MOST_TESTS = len(TESTS)


def _cannot_beat(gamma: tuple[float, float, float], variance: float, threshold: float) -> bool:
    """Whether a candidate's combined p-value is certainly at most ``threshold``, from the
    values' (finite) variance alone, in a few float operations (no gamma function, no
    sample); ``gamma`` is the candidate's :func:`_variance_gamma`.

    Why skipping such a candidate changes nothing: its combined p-value is
    min(1, min(ps) · len(ps)) over at most ``len(TESTS)`` tests, one of which is the variance
    test (:func:`_variance_gamma` is None wherever that test would not run), so
    p ≤ len(TESTS) · p_var; and p_var = 2 · min(P(X ≤ t), P(X ≥ t)) for the gamma X of shape k
    and scale 1 that :func:`variance_test` evaluates at t = k + z√k. The Chernoff bound of a
    gamma tail, P(X ≥ rk) ≤ (r·e^(1−r))^k for r ≥ 1 and P(X ≤ rk) ≤ (r·e^(1−r))^k for
    0 < r ≤ 1, gives p_var ≤ 2·exp(k(1 + ln r − r)) with r = t/k; at t ≤ 0 the test gives 0.
    When len(TESTS) times the bound is at most ``threshold`` (with a relative margin of 1e-6
    for rounding, where the bound is loose by orders of magnitude), the candidate cannot
    pass ``p > threshold``, which both loops of :func:`_best_candidate` require."""
    k2, sd, shape = gamma
    z = (variance - k2) / sd
    t = shape + z * math.sqrt(shape)
    if t <= 0:
        return threshold >= 0  # variance_test gives 0, and so does the combination
    r = t / shape
    if not (r > 0 and math.isfinite(r) and threshold > 0):
        return False  # an underflow or overflow: leave it to the full tests
    log_bound = math.log(2.0 * _MOST_TESTS) + shape * (1.0 + math.log(r) - r)
    return log_bound < math.log(threshold) - 1e-6


def _estimate(d: Distribution, s: TensorStats) -> dict[str, float]:
    """The numbers as measured on the values, in the candidate family's terms."""
    assert s.mean is not None and s.std is not None and s.min is not None and s.max is not None
    if d.family is Family.UNIFORM:
        lo, hi = _uniform_bounds(s)
        return {"low": lo, "high": hi}
    if d.family is Family.TRUNC_NORMAL and d.low is not None and d.high is not None:
        # What the label names: the untruncated normal's mean and std, and the cut points
        # (a truncation at ±2σ shrinks the spread to 0.88σ: 0.0176 observed for std=0.02).
        loc = d.loc if d.loc is not None else s.mean
        return {
            "mean": loc,
            "std": _trunc_scale(s.std, loc, d.low, d.high),
            "a": d.low,
            "b": d.high,
        }
    return {"mean": s.mean, "std": s.std}


def _trunc_scale(spread: float, loc: float, low: float, high: float) -> float:
    """The std of the normal that, cut to [low, high], has std ``spread`` (bisection: the
    truncated std grows monotonically with the normal's std)."""
    width = high - low
    if not spread > 0 or not math.isfinite(width) or width <= 0:
        return spread
    if spread >= width / math.sqrt(12):  # the truncated std never reaches a uniform's
        return math.inf
    lo, hi = spread, spread
    while (Distribution.trunc_normal(loc, hi, low, high).std or 0.0) < spread:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if (Distribution.trunc_normal(loc, mid, low, high).std or 0.0) < spread:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
