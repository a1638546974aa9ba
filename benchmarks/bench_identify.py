"""Benchmark: how accurately `identify` names the init a tensor's values follow.

Not a test: it prints a confusion matrix and four figures against the targets of issue 3
("Accuracy benchmark"). The corpus is generated with ``torch.nn.init`` (and torch's own layers
for the layer default) over every scheme identify knows, at shapes from 10 to 10^6 elements,
for INITSCOPE_BENCH_SEEDS seeds (default 10). Each tensor's own default is traced by running its
init inside :class:`InitTracer`, so ``matches_default`` is meaningful.

Figures:

1. correct label on tensors ≥ 1,000 elements (target ≥ 99%). A label is correct when it equals
   the expected label, or when the distribution it names is identical to the truth (same family,
   bound/std within 0.5%): for a square matrix xavier_*(gain=g) and kaiming_*(·) with the same
   std are the same distribution and no test can tell them apart; lecun_normal is
   kaiming_normal(linear, fan_in); timm's trunc_normal_(std=0.02) cuts at ±2 = ±100σ and is a
   normal. The pairs accepted that way are listed in the output.
2. wrong "matches default": tensors from another scheme whose std differs from the torch layer
   default's by ≥ 10%, identified against that default (target ≤ 1%).
3. tensors < 30 elements: `inconclusive` or correct (target 100%).
4. trained-like tensors ≥ 1,000 elements (default plus a structured perturbation, heavy
   tails, low rank + noise, bimodal, ...), identified against the torch default:
   `unknown` (target ≥ 95%).

Then the false alarms (``--false-alarms``: only them): INITSCOPE_BENCH_FALSE_ALARM fresh
tensors (default 100,000; 0 skips it), each an independent draw from a default that real
models use (torch's Linear/Conv kaiming_uniform(a=√5) weights and U(±1/√fan_in) biases,
normal(0, 0.02) and normal(0, 1), trunc_normal_(std=0.02), xavier_uniform/normal,
kaiming_normal(fan_out)), at sizes spread log-uniformly over 100..10^6 values. A tensor drawn
from its default reads "differs" with probability at most ALPHA; each test of the decision
rejects at its share of it. The rate of each test, and of "differs", is printed per size band
with a 95% interval (Wilson), at ALPHA and at 10·ALPHA (more events, a tighter interval); a
rate whose interval lies above 1.5× its level prints OVER BUDGET and the script exits with
status 1.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from initscope.knowledge.identification import (
    ALPHA,
    TESTS,
    Identification,
    decision_tests,
    identify,
)
from initscope.knowledge.tracing import DefaultInit, InitTracer, fans
from initscope.stats.tensor import running_stats

SEEDS = int(os.environ.get("INITSCOPE_BENCH_SEEDS", "10"))
FALSE_ALARM = int(os.environ.get("INITSCOPE_BENCH_FALSE_ALARM", "100000"))
TOL = 0.005  # "identical distribution": bound/std within 0.5%
STD_GAP = 0.10  # figure 2 scores schemes whose std differs from the default's by ≥ 10%
BIG = 1000
SMALL = 30

SHAPES: list[tuple[int, ...]] = [
    (10,),
    (4, 6),
    (5, 6),
    (16, 8),
    (300,),
    (1000,),
    (32, 32),
    (100, 30),
    (64, 32, 3, 3),
    (256, 256),
    (1000, 1000),
]
TRAINED_SHAPES: list[tuple[int, ...]] = [
    (32, 32),
    (100, 30),
    (64, 32, 3, 3),
    (256, 256),
    (1000, 1000),
]
BIAS_FAN_IN = 64  # 1-D tensors are Linear(64, n).bias: torch's default U(±1/8)

# xavier gains by the names identify uses; "leaky_relu" is calculate_gain's default slope 0.01
GAINS = {
    "1": 1.0,
    "relu": nn.init.calculate_gain("relu"),
    "tanh": nn.init.calculate_gain("tanh"),
    "selu": nn.init.calculate_gain("selu"),
    "leaky_relu": nn.init.calculate_gain("leaky_relu"),
}
# kaiming nonlinearities: torch's (nonlinearity, a); identify's leaky_relu has slope 0.01
KAIMING = {"relu": ("relu", 0.0), "leaky_relu": ("leaky_relu", 0.01), "linear": ("linear", 0.0)}


# -- nominal distributions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """uniform: (low, high); normal: (mean, std); constant: (value, 0); orthogonal: (gain, 0)."""

    family: str
    a: float
    b: float = 0.0

    @property
    def std(self) -> float | None:
        if self.family == "uniform":
            return (self.b - self.a) / math.sqrt(12)
        if self.family == "normal":
            return self.b
        if self.family == "constant":
            return 0.0
        return None


def same(p: Dist | None, t: Dist) -> bool:
    if p is None or p.family != t.family:
        return False
    if t.family == "constant":
        return math.isclose(p.a, t.a, rel_tol=1e-6, abs_tol=1e-12)
    if t.family == "orthogonal":
        return math.isclose(p.a, t.a, rel_tol=TOL)
    if t.family == "uniform":
        half = (t.b - t.a) / 2
        return abs(p.a - t.a) <= TOL * half and abs(p.b - t.b) <= TOL * half
    return abs(p.b - t.b) <= TOL * t.b and abs(p.a - t.a) <= TOL * t.b


def uniform_std(std: float) -> Dist:
    b = math.sqrt(3) * std
    return Dist("uniform", -b, b)


def named(shape: tuple[int, ...]) -> dict[str, Dist]:
    """The named schemes identify knows, computed here from torch's formulas."""
    f = fans(shape)
    if f is None:
        return {}
    fan_in, fan_out = f
    out = {
        "kaiming_uniform(a=sqrt(5))": Dist("uniform", -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
    }
    for g, gain in GAINS.items():
        std = gain * math.sqrt(2 / (fan_in + fan_out))
        out[f"xavier_uniform(gain={g})"] = uniform_std(std)
        out[f"xavier_normal(gain={g})"] = Dist("normal", 0.0, std)
    for nl, (tnl, a) in KAIMING.items():
        gain = nn.init.calculate_gain(tnl, a)  # type: ignore[arg-type]
        for mode, fan in (("fan_in", fan_in), ("fan_out", fan_out)):
            std = gain / math.sqrt(fan)
            out[f"kaiming_uniform({nl}, {mode})"] = uniform_std(std)
            out[f"kaiming_normal({nl}, {mode})"] = Dist("normal", 0.0, std)
    out["lecun_normal"] = Dist("normal", 0.0, 1 / math.sqrt(fan_in))
    return out


_NUM = r"([-+0-9.eE]+)"


def parse(label: str, shape: tuple[int, ...]) -> Dist | None:
    """The distribution a predicted label names, or None (unknown, bare names, ...)."""
    if label in ("zeros", "ones"):
        return Dist("constant", 0.0 if label == "zeros" else 1.0)
    if m := re.fullmatch(rf"constant\({_NUM}\)", label):
        return Dist("constant", float(m[1]))
    if label == "orthogonal":
        return Dist("orthogonal", 1.0)
    if m := re.fullmatch(rf"orthogonal\(gain={_NUM}\)", label):
        return Dist("orthogonal", float(m[1]))
    if label in (table := named(shape)):
        return table[label]
    if m := re.fullmatch(rf"(?:trunc_)?normal\(std={_NUM}\)", label):
        # trunc_normal labels: cut points not in the label; timm's ±2 is ±100σ at std 0.02
        return Dist("normal", 0.0, float(m[1]))
    if m := re.fullmatch(rf"normal\(mean={_NUM}, std={_NUM}\)", label):
        return Dist("normal", float(m[1]), float(m[2]))
    if m := re.fullmatch(rf"(?:uniform|U)\({_NUM}, {_NUM}\)", label):
        return Dist("uniform", float(m[1]), float(m[2]))
    if m := re.fullmatch(rf"U\(±{_NUM}\)", label):
        return Dist("uniform", -float(m[1]), float(m[1]))
    return None


# -- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scheme:
    name: str  # the expected label (1-D torch default: see expected())
    dims: int  # minimum number of dims
    init: Callable[..., object] | None  # init(tensor, generator=g); None: torch's layer
    dist: Callable[[tuple[int, ...]], Dist] | None = None  # None: named(shape)[name]

    def truth(self, shape: tuple[int, ...]) -> Dist:
        return named(shape)[self.name] if self.dist is None else self.dist(shape)


def _fan_in(shape: tuple[int, ...]) -> int:
    f = fans(shape)
    assert f is not None
    return f[0]


def fixed(d: Dist) -> Callable[[tuple[int, ...]], Dist]:
    return lambda shape: d


def constant_(value: float) -> Callable[..., object]:
    """zeros_/ones_/constant_ (they take no generator)."""

    def init(t: torch.Tensor, generator: torch.Generator) -> object:
        if value == 0:
            return nn.init.zeros_(t)
        if value == 1:
            return nn.init.ones_(t)
        return nn.init.constant_(t, value)

    return init


def lecun_normal_(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return nn.init.normal_(t, 0.0, 1 / math.sqrt(_fan_in(tuple(t.shape))), generator=generator)


def schemes() -> list[Scheme]:
    out = [Scheme("kaiming_uniform(a=sqrt(5))", 1, None, torch_default_dist)]
    for g, gain in GAINS.items():
        out.append(
            Scheme(f"xavier_uniform(gain={g})", 2, partial(nn.init.xavier_uniform_, gain=gain))
        )
        out.append(
            Scheme(f"xavier_normal(gain={g})", 2, partial(nn.init.xavier_normal_, gain=gain))
        )
    for nl, (tnl, a) in KAIMING.items():
        for mode in ("fan_in", "fan_out"):
            for kind, fn in (
                ("uniform", nn.init.kaiming_uniform_),
                ("normal", nn.init.kaiming_normal_),
            ):
                init = partial(fn, a=a, mode=mode, nonlinearity=tnl)  # type: ignore[arg-type]
                out.append(Scheme(f"kaiming_{kind}({nl}, {mode})", 2, init))
    out += [
        Scheme("lecun_normal", 2, lecun_normal_),
        Scheme(
            "normal(std=0.02)",
            1,
            partial(nn.init.normal_, std=0.02),
            fixed(Dist("normal", 0, 0.02)),
        ),
        # timm's trunc_normal_(std=.02) cuts at ±2 = ±100σ: a normal, to float precision
        Scheme(
            "trunc_normal(std=0.02)",
            1,
            partial(nn.init.trunc_normal_, std=0.02),
            fixed(Dist("normal", 0.0, 0.02)),
        ),
        Scheme("orthogonal", 2, nn.init.orthogonal_, fixed(Dist("orthogonal", 1.0))),
        Scheme(
            "orthogonal(gain=2)",
            2,
            partial(nn.init.orthogonal_, gain=2.0),
            fixed(Dist("orthogonal", 2.0)),
        ),
        Scheme("zeros", 1, constant_(0.0), fixed(Dist("constant", 0.0))),
        Scheme("ones", 1, constant_(1.0), fixed(Dist("constant", 1.0))),
        Scheme("constant(0.5)", 1, constant_(0.5), fixed(Dist("constant", 0.5))),
    ]
    return out


def torch_default_dist(shape: tuple[int, ...]) -> Dist:
    b = 1 / math.sqrt(BIAS_FAN_IN if len(shape) == 1 else _fan_in(shape))
    return Dist("uniform", -b, b)


def expected(s: Scheme, shape: tuple[int, ...]) -> str:
    if s.init is None and len(shape) == 1:
        return f"U(±{1 / math.sqrt(BIAS_FAN_IN):.4g})"  # a bias: what its traced default says
    return s.name


def torch_layer(shape: tuple[int, ...]) -> tuple[nn.Module, str]:
    if len(shape) == 1:
        return nn.Linear(BIAS_FAN_IN, shape[0]), "bias"
    if len(shape) == 2:
        return nn.Linear(shape[1], shape[0]), "weight"
    return nn.Conv2d(shape[1], shape[0], tuple(shape[2:])), "weight"  # type: ignore[arg-type]


def make(s: Scheme, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, DefaultInit | None]:
    """The tensor and the default traced while it was made."""
    with InitTracer() as tracer:
        if s.init is None:
            torch.manual_seed(seed)
            layer, attr = torch_layer(shape)
            t = getattr(layer, attr)
        else:
            t = torch.empty(shape)
            s.init(t, generator=torch.Generator().manual_seed(seed))
    default = tracer.resolve(t)
    tracer.close()
    return t.detach(), default


def run(t: torch.Tensor, default: DefaultInit | None, seed: int) -> Identification:
    return identify(running_stats(t, seed=seed), tuple(t.shape), default, t)


def trained_like(shape: tuple[int, ...], seed: int) -> dict[str, torch.Tensor]:
    """Tensors that trained weights look like, at the scale of the torch default."""
    g = torch.Generator().manual_seed(10_000 + seed)
    torch.manual_seed(10_000 + seed)
    layer, attr = torch_layer(shape)
    w0 = getattr(layer, attr).detach().clone()
    sigma = w0.std().item()
    rows, cols = shape[0], math.prod(shape[1:])

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g)

    def lowrank(rank: int) -> torch.Tensor:
        m = randn(rows, rank) @ randn(rank, cols) / math.sqrt(rank)
        return m.reshape(shape)

    out = {
        # default + rank-4 update with half the default's element std
        "default + low-rank update": w0 + 0.5 * sigma * lowrank(4),
        # default + per-output-row offsets (a rank-1 structured perturbation)
        "default + row offsets": w0
        + 0.5 * sigma * randn(rows, 1).expand(rows, cols).reshape(shape),
        # default + dense gaussian drift of half its std
        "default + gaussian drift": w0 + 0.5 * sigma * randn(*shape),
        # default with log-normal per-row scales (rows that grew or shrank)
        "default, rows rescaled": w0
        * torch.exp(0.5 * randn(rows, 1)).expand(rows, cols).reshape(shape),
        # default with 0.5% outliers at 20x (LLM outlier features)
        "default + 0.5% outliers": torch.where(torch.rand(shape, generator=g) < 0.005, 20 * w0, w0),
        "student-t(3)": torch.distributions.StudentT(3.0).sample(shape) * sigma / math.sqrt(3),
        "laplace": torch.distributions.Laplace(0.0, sigma / math.sqrt(2)).sample(shape),
        "low rank 8 + 10% noise": sigma * (lowrank(8) + 0.1 * randn(*shape)),
        "bimodal ±2σ": sigma * (torch.where(randn(*shape) > 0, 2.0, -2.0) + 0.5 * randn(*shape)),
    }
    return out


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Row:
    scheme: str
    shape: tuple[int, ...]
    numel: int
    seed: int
    expected: str
    got: str
    verdict: str  # "=" exact, "≡" identical distribution, "·" inconclusive, "✗" wrong
    matches_self: bool | None
    std_gap: float | None  # |std/std_default − 1| vs the torch default
    matches_torch: bool | None
    got_torch: str | None  # the label when identified against the torch default instead
    verdict_torch: str | None


def verdict(label: str, want: str, truth: Dist, shape: tuple[int, ...]) -> str:
    if label == want:
        return "="
    if label == "inconclusive":
        return "·"
    return "≡" if same(parse(label, shape), truth) else "✗"


def generic(label: str) -> str:
    """The label with its numbers blanked, to aggregate the matrix over shapes."""
    if label == "kaiming_uniform(a=sqrt(5))":
        return label
    return re.sub(r"(?<=[(=±, ])[-+]?[0-9][-+0-9.eE]*", "…", label)


def grouped(pairs: Counter[tuple[str, str]], counts: bool = True) -> None:
    """One line per first key: ``first -> second ×n, second ×n``."""
    lines: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (first, second), n in pairs.items():
        lines[first].append((second, n))
    for first, seconds in lines.items():
        ordered = sorted(seconds, key=lambda x: -x[1])
        cells = ", ".join(f"{second} ×{n}" if counts else second for second, n in ordered)
        print(f"       {first} -> {cells}")


def where(rows: list[Row], label: Callable[[Row], str]) -> Counter[tuple[str, str]]:
    """(expected, predicted @ shapes) for wrong rows, shapes with counts."""
    shapes: dict[tuple[str, str], Counter[tuple[int, ...]]] = defaultdict(Counter)
    for r in rows:
        shapes[(r.expected, label(r))][r.shape] += 1
    out: Counter[tuple[str, str]] = Counter()
    for (want, got), c in shapes.items():
        at = " ".join(
            f"{'x'.join(map(str, sh))}" + (f"×{n}" if n > 1 else "") for sh, n in c.items()
        )
        out[(want, f"{got} @ {at}")] = sum(c.values())
    return out


def size_bucket(n: int) -> str:
    return "<30" if n < SMALL else ("30-999" if n < BIG else "≥1000")


def pct(k: int, n: int) -> str:
    return f"{100 * k / n:.2f}% ({k}/{n})" if n else "n/a"


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    all_schemes = schemes()
    rows: list[Row] = []
    torch_defaults: dict[tuple[int, ...], DefaultInit | None] = {}
    for shape in SHAPES:
        torch_defaults[shape] = make(all_schemes[0], shape, 0)[1]
    for seed in range(SEEDS):
        for shape in SHAPES:
            d0 = torch_default_dist(shape)
            for s in all_schemes:
                if len(shape) < s.dims:
                    continue
                t, default = make(s, shape, 1000 * seed + 7)
                want, truth = expected(s, shape), s.truth(shape)
                found = run(t, default, seed)
                std = truth.std
                if std is None:  # orthogonal: its root mean square
                    std = truth.a / math.sqrt(max(shape[0], math.prod(shape[1:])))
                gap = abs(std / d0.std - 1) if d0.std else None
                against = None if s.init is None else run(t, torch_defaults[shape], seed)
                rows.append(
                    Row(
                        s.name,
                        shape,
                        t.numel(),
                        seed,
                        want,
                        found.fit.label,
                        verdict(found.fit.label, want, truth, shape),
                        found.matches_default,
                        gap,
                        against.matches_default if against else None,
                        against.fit.label if against else None,
                        verdict(against.fit.label, want, truth, shape) if against else None,
                    )
                )
    # figure 2 at its threshold: std exactly 10% off the torch default's uniform, and off a
    # traced normal_(std=0.02) default (transformers' initializer_range)
    normal_002 = next(s for s in all_schemes if s.name == "normal(std=0.02)")
    edge: list[tuple[str, int, bool | None]] = []
    for seed in range(SEEDS):
        g = torch.Generator().manual_seed(20_000 + seed)
        for shape in SHAPES:
            b = torch_default_dist(shape).b
            d002 = make(normal_002, shape, 0)[1]
            for f in (0.9, 1.1):
                t = torch.empty(shape).uniform_(-f * b, f * b, generator=g)
                edge.append(
                    (f"U(±{f}b)", t.numel(), run(t, torch_defaults[shape], seed).matches_default)
                )
                t = torch.empty(shape).normal_(0.0, f * 0.02, generator=g)
                edge.append(
                    (
                        f"N(0, {f * 0.02:.3g}) vs N(0, 0.02)",
                        t.numel(),
                        run(t, d002, seed).matches_default,
                    )
                )
    trained: list[tuple[str, tuple[int, ...], str, bool | None]] = []
    for seed in range(SEEDS):
        for shape in TRAINED_SHAPES:
            for kind, t in trained_like(shape, seed).items():
                found = run(t, torch_defaults[shape], seed)
                trained.append((kind, shape, found.fit.label, found.matches_default))
    elapsed = time.perf_counter() - start
    report(rows, edge, trained, elapsed)
    if FALSE_ALARM > 0 and not false_alarms(FALSE_ALARM):
        raise SystemExit(1)


def report(
    rows: list[Row],
    edge: list[tuple[str, int, bool | None]],
    trained: list[tuple[str, tuple[int, ...], str, bool | None]],
    elapsed: float,
) -> None:
    cmd = f"INITSCOPE_BENCH_SEEDS={SEEDS} .venv/bin/python benchmarks/bench_identify.py"
    print(f"$ {cmd}")
    print(
        f"torch {torch.__version__}, {SEEDS} seeds: {len(rows)} labelled tensors "
        f"({len({r.scheme for r in rows})} schemes x {len(SHAPES)} shapes, 10 to 10^6 elements), "
        f"{len(trained)} trained-like; {elapsed:.0f} s"
    )

    # -- confusion matrix, sparse: per true label, the predicted labels (numbers blanked) ----
    print("\nConfusion matrix, all sizes: true label | predicted label (numbers blanked) ×count")
    print("  = the expected label  ≡ the identical distribution  · inconclusive  ✗ wrong")
    by_truth: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for r in rows:
        by_truth[r.scheme][(r.verdict, generic(r.got))] += 1
    width = max(len(k) for k in by_truth)
    for scheme, counts in by_truth.items():
        ordered = sorted(counts.items(), key=lambda x: ("=≡·✗".index(x[0][0]), -x[1]))
        cells = "  ".join(f"{v}{lab} ×{n}" for (v, lab), n in ordered)
        print(f"  {scheme:{width}s} | {cells}")

    # -- figure 1 ---------------------------------------------------------------------------
    big = [r for r in rows if r.numel >= BIG]
    ok = [r for r in big if r.verdict in "=≡"]
    exact = [r for r in big if r.verdict == "="]
    mid = [r for r in rows if SMALL <= r.numel < BIG]
    print("\nFigures (a label counts as correct when it is the expected one or names the identical")
    print("distribution: same family, bound/std within 0.5%; such pairs are listed under ≡)")
    fig1 = pct(len(ok), len(big))
    print(f"  1. correct label, tensors ≥ 1,000 elements: {fig1}   target ≥ 99%")
    print(f"     the expected label itself:               {pct(len(exact), len(big))}")
    k = sum(r.verdict in "=≡" for r in mid)
    print(f"     (30-999 elements, no target:              {pct(k, len(mid))})")
    per_size = Counter((r.numel, r.verdict in "=≡") for r in big)
    sizes = sorted({r.numel for r in big})
    print(
        "     by size: "
        + ", ".join(
            f"{n}: {100 * per_size[(n, True)] / (per_size[(n, True)] + per_size[(n, False)]):.1f}%"
            for n in sizes
        )
    )
    equiv = Counter((r.expected, generic(r.got)) for r in big if r.verdict == "≡")
    if equiv:
        print("     ≡ (true -> predicted ×count):")
        grouped(equiv)
    wrong = [r for r in big if r.verdict not in "=≡"]
    if wrong:
        print("     ✗ (true -> predicted @ shapes):")
        grouped(where(wrong, lambda r: r.got), counts=False)
    re_init = [r for r in big if r.verdict_torch is not None]
    ok_b = [r for r in re_init if (r.verdict_torch or "✗") in "=≡"]
    exact_b = [r for r in re_init if r.verdict_torch == "="]
    fig1b = pct(len(ok_b), len(re_init))
    exact1b = pct(len(exact_b), len(re_init))
    print(
        f"  1b. the same tensors but the torch layer default's, identified against the torch layer"
        f"\n     default instead of their own (a layer re-initialized after construction):"
        f"\n     correct {fig1b}, the expected label itself {exact1b}"
    )
    equiv = Counter((r.expected, r.got_torch or "") for r in re_init if r.verdict_torch == "≡")
    if equiv:
        print("     ≡ (true -> predicted ×count):")
        grouped(equiv)
    wrong = [r for r in re_init if (r.verdict_torch or "✗") not in "=≡"]
    if wrong:
        print("     ✗ (true -> predicted @ shapes):")
        grouped(where(wrong, lambda r: r.got_torch or ""), counts=False)

    # -- figure 2 ---------------------------------------------------------------------------
    other = [r for r in rows if r.scheme != "kaiming_uniform(a=sqrt(5))"]
    far = [r for r in other if r.std_gap is not None and r.std_gap >= STD_GAP]
    bad = [r for r in far if r.matches_torch is True]
    fig2 = pct(len(bad), len(far))
    print(
        f'  2. wrong "matches default", other schemes with std ≥ 10% off the torch default: '
        f"{fig2}   target ≤ 1%"
    )
    print(
        "     by size: "
        + ", ".join(
            f"{b}: {pct(sum(r.matches_torch is True for r in sub), len(sub))}"
            for b in ("<30", "30-999", "≥1000")
            if (sub := [r for r in far if size_bucket(r.numel) == b])
        )
    )
    if bad:
        print("     wrongly matched (true -> @ shapes):")
        grouped(where(bad, lambda r: f"std off by {100 * (r.std_gap or 0):.0f}%"), counts=False)
    print("     at the threshold, not in the figure (std exactly 10% off), matched by size:")
    for name in dict.fromkeys(e[0] for e in edge):
        sizes_at = sorted({e[1] for e in edge if e[0] == name and e[1] >= SMALL})
        parts: list[str] = []
        for n in sizes_at:
            at = [m for nm, k, m in edge if nm == name and k == n]
            parts.append(f"{n}: {100 * sum(m is True for m in at) / len(at):.0f}%")
        print(f"       {name}: " + ", ".join(parts))
    near = [r for r in other if r.std_gap is not None and r.std_gap < STD_GAP]
    if near:
        k = sum(r.matches_torch is True for r in near)
        print(f"     (not scored, std within 10% of the default's: matched {pct(k, len(near))})")
    own = [r for r in rows if r.numel >= BIG and r.matches_self is not None]
    k = sum(r.matches_self is True for r in own)
    print(f"     (own traced default, ≥ 1,000 elements: matches_default true {pct(k, len(own))})")

    # -- figure 3 ---------------------------------------------------------------------------
    small = [r for r in rows if r.numel < SMALL]
    fine = [r for r in small if r.verdict in "=≡·"]
    fig3 = pct(len(fine), len(small))
    print(f"  3. tensors < 30 elements, inconclusive or correct: {fig3}   target 100%")
    if len(fine) < len(small):
        grouped(where([r for r in small if r.verdict not in "=≡·"], lambda r: r.got), counts=False)

    # -- figure 4 ---------------------------------------------------------------------------
    unknown = [x for x in trained if x[2] == "unknown"]
    fig4 = pct(len(unknown), len(trained))
    print(f"  4. trained-like tensors ≥ 1,000 elements, unknown: {fig4}   target ≥ 95%")
    for kind in dict.fromkeys(x[0] for x in trained):
        of_kind = [x for x in trained if x[0] == kind]
        k = sum(x[2] == "unknown" for x in of_kind)
        shapes: dict[str, Counter[tuple[int, ...]]] = defaultdict(Counter)
        for x in of_kind:
            if x[2] != "unknown":
                shapes[generic(x[2])][x[1]] += 1
        miss = "; ".join(
            f"{lab} @ "
            + " ".join("x".join(map(str, sh)) + (f"×{n}" if n > 1 else "") for sh, n in c.items())
            for lab, c in shapes.items()
        )
        print(
            f"     {kind:26s} {100 * k / len(of_kind):5.1f}%" + (f"   else: {miss}" if miss else "")
        )
    k = sum(x[3] is True for x in trained)
    print(f"     (matches_default true on trained-like: {pct(k, len(trained))})")

    # -- for the README ---------------------------------------------------------------------
    print("\nFor the README:\n")
    print(f"    $ {cmd}    # {elapsed:.0f} s on {torch.get_num_threads()} threads")
    print()
    print("| figure | result | target |")
    print("|---|---|---|")
    print(f"| correct label, tensors ≥ 1,000 elements | {fig1} | ≥ 99% |")
    print(
        f"| the same, re-initialized layers (identified against the torch default) | {fig1b} | — |"
    )
    print(f"| wrong `matches_default`, std ≥ 10% off the default | {fig2} | ≤ 1% |")
    print(f"| tensors < 30 elements `inconclusive` or correct | {fig3} | 100% |")
    print(f"| trained-like tensors ≥ 1,000 elements `unknown` | {fig4} | ≥ 95% |")


# -- false alarms ------------------------------------------------------------------------------

# Tensors per traced shape: each draw is fresh, the traced default is shared.
DRAWS_PER_SHAPE = 50
# A rate is judged where its nominal count of rejections is at least this: with 10 expected,
# a calibrated test reads over 1.5× (23 or more) with probability 2e-4.
JUDGED = 10.0
BANDS = ((100, 1_000), (1_000, 10_000), (10_000, 100_000), (100_000, 1_000_001))


@dataclass(frozen=True)
class Default:
    """A default as real models leave it: the layer or init call that is traced (on the meta
    device), and the same draw for a fresh tensor."""

    name: str
    dims: int  # 1: a bias; 2: a matrix; 4: a conv weight
    trace: Callable[[tuple[int, ...]], torch.Tensor]
    draw: Callable[[torch.Tensor, torch.Generator], object]


def _layer_weight(shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) == 2:
        return nn.Linear(shape[1], shape[0], bias=False, device="meta").weight
    conv = nn.Conv2d(shape[1], shape[0], shape[2], bias=False, device="meta")
    return conv.weight


def _layer_bias(shape: tuple[int, ...]) -> torch.Tensor:
    bias = nn.Linear(BIAS_FAN_IN, shape[0], device="meta").bias
    assert bias is not None
    return bias


def _traced(init: Callable[..., object]) -> Callable[[tuple[int, ...]], torch.Tensor]:
    def trace(shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.empty(shape, device="meta")
        init(t)
        return t

    return trace


def _bias_draw(t: torch.Tensor, generator: torch.Generator) -> object:
    # torch.nn.Linear.reset_parameters: init.uniform_(bias, -1/√fan_in, 1/√fan_in)
    b = 1 / math.sqrt(BIAS_FAN_IN)
    return nn.init.uniform_(t, -b, b, generator=generator)


FRESH: list[Default] = [
    Default(
        "Linear.weight: kaiming_uniform(a=√5)",
        2,
        _layer_weight,
        partial(nn.init.kaiming_uniform_, a=math.sqrt(5)),
    ),
    Default(
        "Conv2d.weight: kaiming_uniform(a=√5)",
        4,
        _layer_weight,
        partial(nn.init.kaiming_uniform_, a=math.sqrt(5)),
    ),
    Default("Linear.bias: U(±1/√fan_in)", 1, _layer_bias, _bias_draw),
    Default(
        "normal(0, 0.02)",
        2,
        _traced(partial(nn.init.normal_, std=0.02)),
        partial(nn.init.normal_, std=0.02),
    ),
    Default("normal(0, 1) (Embedding)", 2, _traced(nn.init.normal_), nn.init.normal_),
    Default(
        "trunc_normal(std=0.02)",
        2,
        _traced(partial(nn.init.trunc_normal_, std=0.02)),
        partial(nn.init.trunc_normal_, std=0.02),
    ),
    Default("xavier_uniform", 2, _traced(nn.init.xavier_uniform_), nn.init.xavier_uniform_),
    Default("xavier_normal", 2, _traced(nn.init.xavier_normal_), nn.init.xavier_normal_),
    Default(
        "kaiming_normal(fan_out, relu)",
        4,
        _traced(partial(nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu")),
        partial(nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu"),
    ),
]


def _shape(numel: int, dims: int, g: torch.Generator) -> tuple[int, ...]:
    """A shape of about ``numel`` values: a matrix of random aspect (1:16 to 16:1), a conv
    weight with a 1×1 or 3×3 kernel, or a vector."""
    if dims == 1:
        return (numel,)
    u = torch.rand(2, generator=g, dtype=torch.float64).tolist()
    k = 3 if dims == 4 and u[1] < 0.5 and numel >= 9 * 16 else 1
    cells = max(numel // (k * k), 1)
    rows = max(1, round(math.sqrt(cells * 16.0 ** (2 * u[0] - 1))))
    cols = max(1, -(-cells // rows))  # at least numel values
    return (rows, cols, k, k) if dims == 4 else (rows, cols)


def _wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    z = 1.959964
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, mid - half), min(1.0, mid + half)


@dataclass
class Tally:
    """Rejections of one test in one size band, against the levels the test ran at."""

    tensors: int = 0
    rejected: int = 0
    level_sum: float = 0.0  # Σ of each tensor's level: the expected count under the null

    def add(self, rejected: bool, level: float) -> None:
        self.tensors += 1
        self.rejected += rejected
        self.level_sum += level

    def cell(self) -> tuple[str, bool]:
        """``k/n ratio× [lo, hi]``, the ratio of the measured to the nominal rate with its 95%
        interval; and whether the interval lies above 1.5× nominal. A cell whose nominal
        count is under JUDGED is shown, not judged (``·``): one chance event there puts the
        interval above 1.5×."""
        if not self.tensors:
            return "—", False
        lo, hi = _wilson(self.rejected, self.tensors)
        nominal = self.level_sum / self.tensors
        judged = self.level_sum >= JUDGED
        over = judged and lo > 1.5 * nominal
        text = f"{self.rejected}/{self.tensors} {self.rejected / self.tensors / nominal:.2f}×"
        text += f" [{lo / nominal:.2f}, {hi / nominal:.2f}]" + ("" if judged else "·")
        return text + (" OVER BUDGET" if over else ""), over


def _band(numel: int) -> int:
    return next((i for i, (lo, hi) in enumerate(BANDS) if lo <= numel < hi), len(BANDS) - 1)


def false_alarms(count: int) -> bool:
    """Draw ``count`` fresh default tensors, print each test's rejection rate against its
    level; False when a rate is over budget."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one core is faster than two
    start = time.perf_counter()
    g = torch.Generator().manual_seed(31_337)
    levels = {"α": ALPHA, "10α": 10 * ALPHA}
    names = (*TESTS, "rows", "differs")
    tallies = {(lv, name, b): Tally() for lv in levels for name in names for b in range(len(BANDS))}
    per_default: dict[str, Tally] = {d.name: Tally() for d in FRESH}
    drawn = 0
    lo, hi = math.log(BANDS[0][0]), math.log(BANDS[-1][1] - 1)
    while drawn < count:
        d = FRESH[int(torch.randint(len(FRESH), (1,), generator=g))]
        numel = round(math.exp(lo + (hi - lo) * float(torch.rand(1, generator=g))))
        shape = _shape(numel, d.dims, g)
        with InitTracer() as tracer:
            meta = d.trace(shape)
        default = tracer.resolve(meta)
        tracer.close()
        assert default is not None and default.is_known, (d.name, shape)
        band = _band(math.prod(shape))
        for _ in range(min(DRAWS_PER_SHAPE, count - drawn)):
            t = torch.empty(shape)
            d.draw(t, generator=g)
            rs = running_stats(t, seed=drawn)
            found = identify(rs, shape, default, t)
            tests = decision_tests(rs, shape, default, t, structure=found.structure)
            drawn += 1
            if tests is None:  # an all-equal or too-small tensor: no distribution test
                continue
            per_default[d.name].add(found.matches_default is False, ALPHA)
            for lv, alpha in levels.items():
                for name, p in tests.p_values.items():
                    level = tests.level(name, alpha)
                    tallies[(lv, name, band)].add(p < level, level)
                tallies[(lv, "differs", band)].add(tests.p_value <= alpha, alpha)
            # identify's own verdict is the decision the tests make together
            assert (found.matches_default is False) == (tests.p_value <= ALPHA), (found, tests)
    elapsed = time.perf_counter() - start
    torch.set_num_threads(threads)
    return _print_false_alarms(count, tallies, per_default, levels, names, elapsed)


def _print_false_alarms(
    count: int,
    tallies: dict[tuple[str, str, int], Tally],
    per_default: dict[str, Tally],
    levels: dict[str, float],
    names: tuple[str, ...],
    elapsed: float,
) -> bool:
    print(
        f"\nFalse alarms: {count} fresh default tensors, {len(FRESH)} defaults, sizes "
        f"log-uniform over 100..10^6 values; {elapsed:.0f} s"
    )
    print(
        "  each cell: rejected/tensors, measured ÷ nominal rate [95% interval]; a test's\n"
        "  nominal rate is its share of the decision's level (Bonferroni over the tests run);\n"
        f"  · fewer than {JUDGED:g} rejections expected: shown, not judged"
    )
    ok = True
    bands = [f"{lo:,}-{hi - 1:,}" for lo, hi in BANDS]
    for lv, alpha in levels.items():
        print(f"\n  decision level {lv} = {alpha:g}")
        width = 12
        print("  " + f"{'test':{width}s}" + "".join(f"{b:>38s}" for b in bands) + f"{'all':>38s}")
        for name in names:
            cells = []
            total = Tally()
            for b in range(len(BANDS)):
                t = tallies[(lv, name, b)]
                total.tensors += t.tensors
                total.rejected += t.rejected
                total.level_sum += t.level_sum
                text, over = t.cell()
                ok &= not over
                cells.append(text)
            text, over = total.cell()
            ok &= not over
            cells.append(text)
            print("  " + f"{name:{width}s}" + "".join(f"{c:>38s}" for c in cells))
    print(f"\n  differs at α = {ALPHA:g}, by default:")
    for name, t in per_default.items():
        text, over = t.cell()
        ok &= not over
        print(f"    {name:40s} {text}")
    print("  within budget" if ok else "  OVER BUDGET: a rate's interval lies above 1.5× its level")
    return ok


if __name__ == "__main__":
    if sys.argv[1:] == ["--false-alarms"]:  # this section alone
        raise SystemExit(0 if false_alarms(FALSE_ALARM) else 1)
    main()
