"""Where the constants of the kurtosis test of a uniform candidate come from.

The sample kurtosis b2 = m4/m2² of n uniform draws has no closed-form distribution. This
script simulates it (INITSCOPE_CALIBRATE_REPS samples at each n from 30 to 4096, default 10^6:
65 s on one core here), fits its mean, variance, skewness and excess kurtosis in powers of 1/n
(weighted least squares, standard errors from 20 batches), and prints the fit, as
``initscope.knowledge.goodness._UNIFORM_B2`` holds it (fitted to 1 to 3 million samples per n;
a run of this script agrees within sampling error). Then it prints how often
``kurtosis_test`` (Johnson's S_U with those four moments) rejects the simulated samples at
levels from 1e-2 to 2e-5, per tail: a calibrated test reads 1.00× at each.

    PYTHONPATH=. .venv/bin/python benchmarks/calibrate_kurtosis.py
"""

from __future__ import annotations

import math
import os

import torch

from initscope.knowledge.distributions import Family
from initscope.knowledge.goodness import kurtosis_test

REPS = int(os.environ.get("INITSCOPE_CALIBRATE_REPS", "1000000"))
SIZES = (30, 50, 100, 200, 300, 500, 1000, 2000, 4096)
BATCHES = 20
# The delta method's variance of b2 for U's standardized moments μ4 = 9/5, μ6 = 27/7, μ8 = 9:
# (μ8 − μ4²) − 4μ4(μ6 − μ4) + 4μ4²(μ4 − 1) = 1152/875, times 1/n.
VARIANCE_LEADING = 1152 / 875


def kurtoses(n: int, reps: int, g: torch.Generator) -> torch.Tensor:
    out = []
    chunk = max(1, 2_000_000 // n)
    for start in range(0, reps, chunk):
        x = torch.rand(min(chunk, reps - start), n, generator=g, dtype=torch.float64)
        c = x - x.mean(1, keepdim=True)
        c2 = c * c
        out.append((c2 * c2).mean(1) / c2.mean(1) ** 2)
    return torch.cat(out)


def scaled_moments(v: torch.Tensor, n: int) -> torch.Tensor:
    """n·(mean − 1.8), n·variance, √n·skewness, n·excess kurtosis."""
    mu = v.mean()
    c = v - mu
    var = (c * c).mean()
    skew = (c**3).mean() / var**1.5
    excess = (c**4).mean() / var**2 - 3
    return torch.stack([n * (mu - 1.8), n * var, math.sqrt(n) * skew, n * excess])


def fit(y: torch.Tensor, se: torch.Tensor, columns: list[torch.Tensor]) -> list[float]:
    x = torch.stack(columns, 1) / se[:, None]
    return torch.linalg.lstsq(x, (y / se)[:, None]).solution[:, 0].tolist()


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(2024)
    samples: dict[int, torch.Tensor] = {}
    rows, errors = [], []
    for n in SIZES:
        v = kurtoses(n, REPS, g)
        samples[n] = v
        rows.append(scaled_moments(v, n))
        parts = torch.stack([scaled_moments(p, n) for p in v.chunk(BATCHES)])
        errors.append(parts.std(0) / math.sqrt(BATCHES))
        print(f"n={n:5d}: n(mean - 1.8), n var, √n skew, n excess = {rows[-1].tolist()}")
    y, se = torch.stack(rows), torch.stack(errors)
    inv = 1 / torch.tensor(SIZES, dtype=torch.float64)
    one = torch.ones_like(inv)
    mean = fit(y[:, 0], se[:, 0], [one, inv])
    var = fit(
        y[:, 1] - VARIANCE_LEADING, se[:, 1], [VARIANCE_LEADING * inv, VARIANCE_LEADING * inv**2]
    )
    skew = fit(y[:, 2], se[:, 2], [one, inv, inv**2])
    excess = fit(y[:, 3], se[:, 3], [one, inv, inv**2])
    print("\n_UNIFORM_B2 = (")
    print(f"    (1.8, {mean[0]:.4g}, {mean[1]:.4g}),  # mean: 1.8 + a/n + b/n²")
    print(f"    (1152 / 875, {var[0]:.4g}, {var[1]:.4g}),  # n · variance: c (1 + d/n + e/n²)")
    print(f"    ({skew[0]:.4g}, {skew[1]:.4g}, {skew[2]:.4g}),  # √n · skewness")
    print(f"    ({excess[0]:.4g}, {excess[1]:.4g}, {excess[2]:.4g}),  # n · excess kurtosis")
    print(")")

    print("\nkurtosis_test on these samples: measured ÷ nominal rate, lower and upper tail")
    levels = (1e-2, 1e-3, 1e-4, 2e-5)
    print("      n " + "".join(f"{a:>22g}" for a in levels))
    for n, v in samples.items():
        p = torch.tensor([kurtosis_test(b, n, Family.UNIFORM) for b in v.tolist()])
        upper = v > v.mean()  # the rejected values lie far from the centre, either side
        cells = []
        for a in levels:
            rejected = p < a
            lo = float((rejected & ~upper).double().mean()) / (a / 2)
            hi = float((rejected & upper).double().mean()) / (a / 2)
            cells.append(f"{lo:.2f}× / {hi:.2f}×")
        print(f"  {n:5d} " + "".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
