"""Goodness of fit against a :class:`Distribution`: the shape, the variance and the tails.

- The one-sample Kolmogorov–Smirnov test. PyTorch's own ``test/nn/test_init.py`` checks its
  initializers with ``scipy.stats.kstest``; this is the same test without the scipy
  dependency. The p-value uses the asymptotic Kolmogorov distribution with Stephens' (1970)
  finite-n correction, accurate to a few percent for n ≥ 35, which is ample for deciding at
  the usual levels.
- The sample variance, and the sample kurtosis of normal and uniform draws, against their
  finite-n distributions: these tests run at levels of 1e-4 and below (a decision's budget
  split over its tests, and over a run's decisions by ``check``), where the large-n normal
  approximations rejected values drawn from the candidate several times too often.
- The two-sample Kolmogorov–Smirnov test, against a probe of a derived default.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from initscope.knowledge.distributions import Distribution, Family
from initscope.stats import fused

__all__ = [
    "KSResult",
    "chi2_sf",
    "gamma_tail",
    "kolmogorov_sf",
    "ks_test",
    "ks_two_sample",
    "kurtosis_test",
    "variance_cumulants",
    "variance_test",
]


@dataclass(frozen=True)
class KSResult:
    statistic: float
    p_value: float
    n: int


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution: 2 Σ_{k≥1} (-1)^(k-1) exp(-2 k² x²)."""
    if x <= 0:
        return 1.0
    if x < 0.2:  # the alternating series converges slowly here, and the value is 1 to 1e-20
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-16:
            break
    return max(0.0, min(1.0, 2.0 * total))


def ks_test(sample: torch.Tensor, dist: Distribution, *, presorted: bool = False) -> KSResult:
    """KS test of ``sample`` against the continuous ``dist``; ``presorted`` says the sample is
    already sorted float64 (identification tests one sample against many candidates)."""
    x = sample if presorted else sample.detach().reshape(-1).to(torch.float64).sort().values
    if x.dim() != 1 or x.requires_grad:
        x = x.detach().reshape(-1)
    n = x.numel()
    if n == 0:
        raise ValueError("empty sample")
    form = dist.cdf_form()
    # A degenerate CDF (no spread, or cut points the normal's CDF cannot tell apart) is left
    # to torch's full pass, which says NaN where it has no answer.
    if form is not None and dist.is_continuous and form[3] < form[4] and fused.available():
        # the same distance, the CDF taken only where the maximum can be (kernel.c, fused_ks)
        family, a, b, lo, hi = form
        d = fused.ks_distance(x, family.value, a, b, lo, hi)
        return KSResult(d, _stephens_p(d, n), n)
    cdf = dist.cdf(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d_plus = float((i / n - cdf).max())
    d_minus = float((cdf - (i - 1) / n).max())
    d = max(d_plus, d_minus)
    return KSResult(d, _stephens_p(d, n), n)


def _stephens_p(d: float, n: float) -> float:
    """The p-value of a KS distance ``d`` at (effective) size ``n``: the asymptotic
    Kolmogorov distribution with Stephens' (1970) finite-n correction (its series in C where
    the kernel is: the same value)."""
    sqrt_n = math.sqrt(n)
    x = (sqrt_n + 0.12 + 0.11 / sqrt_n) * d
    return fused.kolmogorov_sf(x) if fused.available() else kolmogorov_sf(x)


def ks_two_sample(a_sorted: torch.Tensor, b_sorted: torch.Tensor) -> KSResult:
    """Two-sample KS test of two sorted float64 samples: the largest gap between their
    empirical CDFs, with the asymptotic p-value at the effective size n·m/(n + m) (Stephens'
    correction as above).

    Between two neighbouring values of ``a`` its CDF is flat and ``b``'s rises, so the gap is
    largest at an end: at a value of ``a`` (both CDFs counted with ties, ``≤``) or just below
    one (``<``). Four binary searches of ``a``'s n values find it exactly, O(n log m), without
    walking ``b`` (the probe of a derived default holds 65,536 values)."""
    n, m = a_sorted.numel(), b_sorted.numel()
    if n == 0 or m == 0:
        raise ValueError("empty sample")

    def cdf(x: torch.Tensor, right: bool, size: int) -> torch.Tensor:
        return torch.searchsorted(x, a_sorted, right=right).to(torch.float64) / size

    at = (cdf(a_sorted, True, n) - cdf(b_sorted, True, m)).abs().max()
    below = (cdf(a_sorted, False, n) - cdf(b_sorted, False, m)).abs().max()
    d = float(torch.maximum(at, below))
    effective = n * m / (n + m)
    return KSResult(d, _stephens_p(d, effective), n)


# -- the variance test -----------------------------------------------------------------------


def variance_cumulants(d: Distribution) -> tuple[float, float, float] | None:
    """κ2, κ4, κ6 of the symmetric continuous families (odd cumulants are zero): a normal's
    are σ², 0, 0; U(a, b)'s are w²/12, −w⁴/120, w⁶/252 for width w (κ_r = B_r·w^r/r, with
    the Bernoulli numbers B_2 = 1/6, B_4 = −1/30, B_6 = 1/42)."""
    if d.family is Family.NORMAL and d.scale is not None:
        return d.scale**2, 0.0, 0.0
    if d.family is Family.UNIFORM and d.low is not None and d.high is not None:
        w = d.high - d.low
        return w**2 / 12.0, -(w**4) / 120.0, w**6 / 252.0
    return None


def variance_test(variance: float, n: int, d: Distribution) -> float | None:
    """Two-sided p-value of the unbiased sample variance of ``n`` draws from ``d`` (None for
    a family without closed-form cumulants, or n < 3).

    The variance's own first three cumulants are exact (Fisher's k-statistics, Kendall &
    Stuart, Advanced Theory of Statistics vol. 1, 12.15):
    κ(k2) = κ2, κ(k2, k2) = κ4/n + 2κ2²/(n − 1),
    κ(k2, k2, k2) = κ6/n² + 12κ4κ2/(n(n − 1)) + 8κ2³/(n − 1)² (κ3 = 0);
    a gamma (Pearson type III) with these three is the distribution. For a normal it is the
    exact one, (n − 1)s²/σ² ~ χ²(n − 1); a z-test (the two moments alone) rejected fresh
    normal tensors of 100 values 2.8× as often as its level, as the χ² is skewed."""
    cumulants = variance_cumulants(d)
    if cumulants is None or n < 3 or not math.isfinite(variance):
        return None
    k2, k4, k6 = cumulants
    var = k4 / n + 2.0 * k2 * k2 / (n - 1)
    third = k6 / n**2 + 12.0 * k4 * k2 / (n * (n - 1)) + 8.0 * k2**3 / (n - 1) ** 2
    if var <= 0:
        return None
    z = (variance - k2) / math.sqrt(var)
    skew = third / var**1.5
    if skew < 1e-12:
        return math.erfc(abs(z) / math.sqrt(2.0))
    shape = 4.0 / (skew * skew)  # the gamma's shape; its value at the statistic:
    t = shape + z * math.sqrt(shape)
    if t <= 0:
        return 0.0  # below the gamma's support: smaller than any draw could give
    return min(1.0, 2.0 * gamma_tail(shape, t))


# Where P(X ≤ t) is this far below 1/2, P(X ≥ t) ≈ 1 − P(X ≤ t) is certainly the larger tail,
# and the other way round: one regularized incomplete gamma of the two is enough.
_TAIL_MARGIN = 1e-6


def gamma_tail(shape: float, t: float) -> float:
    """min(P(X ≤ t), P(X ≥ t)) for a gamma X of ``shape`` and scale 1, each tail from its own
    regularized incomplete gamma (torch.special.gammainc and gammaincc, accurate where the
    other is near 1, or the kernel's port of them); only the smaller one is computed where
    it is plain which that is."""
    lower_of, upper_of = _incomplete_gammas()
    lower = lower_of(shape, t)
    if lower < 0.5 - _TAIL_MARGIN:
        return lower
    upper = upper_of(shape, t)
    return upper if lower > 0.5 + _TAIL_MARGIN else min(lower, upper)


def _torch_gammainc(a: float, x: float) -> float:
    pair = torch.tensor((a, x), dtype=torch.float64)
    return float(torch.special.gammainc(pair[0], pair[1]))


def _torch_gammaincc(a: float, x: float) -> float:
    pair = torch.tensor((a, x), dtype=torch.float64)
    return float(torch.special.gammaincc(pair[0], pair[1]))


def _incomplete_gammas() -> tuple[Callable[[float, float], float], Callable[[float, float], float]]:
    """P(a, x) and Q(a, x) for plain floats: the kernel's port of torch's functions (the
    same algorithm; a torch call costs ~6 µs, a tensor made and a dispatch, and the kernel's
    a fraction of one), or torch's where the kernel is not used."""
    if fused.available():
        return fused.gammainc, fused.gammaincc
    return _torch_gammainc, _torch_gammaincc


def chi2_sf(x: float, k: int) -> float:
    """P(χ²(k) > x) = Q(k/2, x/2)."""
    return _incomplete_gammas()[1](k / 2, x / 2)


# -- the kurtosis test -----------------------------------------------------------------------

# The first four moments of the sample kurtosis b2 = m4/m2² of n uniform draws (any bounds: b2
# does not depend on them) as mean, variance, skewness and excess kurtosis, fitted in powers of
# 1/n to simulations of 1 to 3 million samples at each n from 30 to 4096 (the method and the
# rejection rates it gives: benchmarks/calibrate_kurtosis.py). The variance's leading term is
# exact: the delta method's (μ8 − μ4²) − 4μ4(μ6 − μ4) + 4μ4²(μ4 − 1) = 1152/875 for U's
# standardized moments μ4 = 9/5, μ6 = 27/7, μ8 = 9.
_UNIFORM_B2 = (
    (1.8, 2.618, -2.96),  # mean: 1.8 + a/n + b/n²
    (1152 / 875, 14.29, 56.5),  # n · variance: c (1 + d/n + e/n²)
    (4.029, 71.8, -400.7),  # √n · skewness
    (30.2, 1805.0, -9772.0),  # n · excess kurtosis
)


def _b2_moments(family: Family, n: int) -> tuple[float, float, float, float] | None:
    """(mean, variance, skewness, excess kurtosis) of b2 for n draws of ``family``."""
    if family is Family.NORMAL:
        # Exact for normal draws (Pearson 1930; as collected by D'Agostino & Pearson 1973,
        # Biometrika 60, 613-622).
        mean = 3.0 * (n - 1) / (n + 1)
        var = 24.0 * n * (n - 2) * (n - 3) / ((n + 1) ** 2 * (n + 3) * (n + 5))
        skew = (
            6.0 * (n * n - 5 * n + 2) / ((n + 7) * (n + 9))
            * math.sqrt(6.0 * (n + 3) * (n + 5) / (n * (n - 2) * (n - 3)))
        )  # fmt: skip
        excess = (
            36.0 * (15 * n**6 - 36 * n**5 - 628 * n**4 + 982 * n**3 + 5777 * n**2 - 6402 * n + 900)
            / (n * (n - 3) * (n - 2) * (n + 7) * (n + 9) * (n + 11) * (n + 13))
        )  # fmt: skip
        return mean, var, skew, excess
    if family is Family.UNIFORM:
        (m0, m1, m2), (v0, v1, v2), (s0, s1, s2), (k0, k1, k2) = _UNIFORM_B2
        return (
            m0 + m1 / n + m2 / n**2,
            v0 * (1 + v1 / n + v2 / n**2) / n,
            (s0 + s1 / n + s2 / n**2) / math.sqrt(n),
            (k0 + k1 / n + k2 / n**2) / n,
        )
    return None


@functools.lru_cache(maxsize=4096)
def _johnson_su(family: Family, n: int) -> tuple[float, float, float, float] | None:
    """Johnson's S_U curve with b2's four moments for n draws of ``family``: (γ, δ, λ, ξ) with
    γ + δ·asinh((b2 − ξ)/λ) standard normal, or None when the moments lie outside S_U's
    region (beyond the lognormal line; no n from 30 up does). Johnson (1949), Biometrika 36,
    149-176; Bowman & Shenton (1975) take S_U for b2 of normal draws likewise."""
    moments = _b2_moments(family, n)
    if moments is None:
        return None
    mean, var, skew, excess = moments
    return _su_fit(mean, var, skew, excess)


def _su_fit(
    mean: float, var: float, skew: float, excess: float
) -> tuple[float, float, float, float] | None:
    """S_U by moments. With ω = exp(δ⁻²) and c = cosh(2Ω), Ω = γ/δ, the kurtosis is a ratio
    of quadratics in c, so c(ω) is a root of a quadratic for the wanted β2; β1 rises from 0
    at the symmetric curve's ω = √(√(2β2 − 2) − 1) as ω falls, and is matched by bisection."""
    beta1, beta2 = skew * skew, 3.0 + excess
    if beta2 <= 3.0:
        return None

    def c_of(w: float) -> float | None:  # cosh(2Ω) giving kurtosis beta2 at ω = w
        p = w * w * (w**4 + 2 * w**3 + 3 * w * w - 3)
        qa = 2 * p - 2 * beta2 * w * w
        qb = 4 * w * w * (w + 2) - 4 * beta2 * w
        qc = -p + 6 * w + 3 - 2 * beta2
        disc = qb * qb - 4 * qa * qc
        if qa <= 0 or disc < 0:
            return None
        c = (-qb + math.sqrt(disc)) / (2 * qa)
        return c if c >= 1.0 else None

    def beta1_of(w: float, c: float) -> float:
        inner = w * (w + 2) * (2 * c + 1) + 3
        return w * (w - 1) * (c - 1) * inner * inner / (4 * (w * c + 1) ** 3)

    hi = math.sqrt(math.sqrt(2 * beta2 - 2) - 1)  # β1 = 0 here
    lo = 1.0
    for _ in range(100):
        w = (lo + hi) / 2
        c = c_of(w)
        if c is None or beta1_of(w, c) > beta1:
            lo = w  # past the lognormal line, or too skewed: a larger ω
        else:
            hi = w
    w = hi
    c = c_of(w)
    if c is None or abs(beta1_of(w, c) - beta1) > 1e-6 * max(beta1, 1e-6):
        return None
    omega = -math.copysign(0.5 * math.acosh(c), skew)  # a positive skew: Ω < 0
    delta = 1.0 / math.sqrt(math.log(w))
    y_mean = -math.sqrt(w) * math.sinh(omega)
    y_var = 0.5 * (w - 1) * (w * c + 1)
    lam = math.sqrt(var / y_var)
    return omega * delta, delta, lam, mean - lam * y_mean


def kurtosis_test(b2: float, n: int, family: Family) -> float | None:
    """Two-sided p-value of the sample kurtosis ``b2`` of n draws from ``family`` (normal or
    uniform; None otherwise), from Johnson's S_U curve with b2's first four moments.

    The normal z of b2 with its large-n variance ignores b2's finite-n bias, spread and skew:
    it rejected fresh uniform tensors of 100 values 16× as often as its level, and Anscombe &
    Glynn's (1983) transformation for normal draws (three moments) 3× at 100 to 1000 values
    at level 2.5e-4, in b2's lower tail."""
    if n < 4 or not math.isfinite(b2):
        return None
    su = _johnson_su(family, n)
    if su is None:
        moments = _b2_moments(family, n)
        if moments is None:
            return None
        z = (b2 - moments[0]) / math.sqrt(moments[1])
    else:
        gamma, delta, lam, xi = su
        z = gamma + delta * math.asinh((b2 - xi) / lam)
    return math.erfc(abs(z) / math.sqrt(2.0))
