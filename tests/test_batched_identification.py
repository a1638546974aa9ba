"""Identification screens candidates by their variance before the sample tests, and a report
identifies tensors in batches (identify_many: their samples sorted in one call of the
kernel): the answer (label, numbers, p-value, whether the values are at their default) must
be exactly that of one tensor alone testing every candidate to the end (``exhaustive=True``),
on a corpus of many families, sizes and dtypes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import initscope.knowledge.identification as identification
from initscope.knowledge.identification import (
    Identification,
    Query,
    identify,
    identify_many,
    structure_for,
)
from initscope.knowledge.tracing import DefaultInit, InitTracer
from initscope.stats.tensor import running_stats

Init = Callable[[torch.Tensor], Any]


def _trained(t: torch.Tensor) -> None:
    """A default plus a low-rank update, as a few steps of training leave it."""
    if t.dim() < 2:
        t.uniform_(-0.1, 0.1)
    else:
        nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    if t.dim() == 2:
        u = torch.randn(t.shape[0], 2) * 0.05
        v = torch.randn(2, t.shape[1]) * 0.05
        t.add_(u @ v)
    else:
        t.add_(torch.randn_like(t) * t.std())


FAMILIES: dict[str, Init] = {
    "uniform": lambda t: nn.init.uniform_(t, -0.1, 0.1),
    "normal_002": lambda t: nn.init.normal_(t, 0.0, 0.02),
    "normal_shifted": lambda t: nn.init.normal_(t, 0.3, 0.7),
    "trunc_normal": lambda t: nn.init.trunc_normal_(t, std=0.02, a=-0.04, b=0.04),
    "kaiming_uniform_default": lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)),
    "kaiming_normal": lambda t: nn.init.kaiming_normal_(t, nonlinearity="relu"),
    "kaiming_uniform_fan_out": lambda t: nn.init.kaiming_uniform_(t, mode="fan_out"),
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal_tanh": lambda t: nn.init.xavier_normal_(t, gain=5 / 3),
    "constant": lambda t: nn.init.constant_(t, 0.5),
    "zeros": nn.init.zeros_,
    "orthogonal": nn.init.orthogonal_,
    "eye": nn.init.eye_,
    "trained": _trained,
    "laplace": lambda t: t.copy_(torch.distributions.Laplace(0.0, 0.02).sample(t.shape)),
}
# Sizes from 30 values to 10^5, vectors, matrices and a conv kernel; 2-D families only get
# matrices.
SHAPES: tuple[tuple[int, ...], ...] = (
    (30,),
    (40, 1),
    (8, 8),
    (100,),
    (64, 48),
    (256, 64),
    (16, 8, 3, 3),
    (320, 320),
)
# torch computes fans (kaiming, xavier) and matrices (orthogonal, eye) for 2-D and up only.
MATRIX_ONLY = {n for n in FAMILIES if n.startswith(("kaiming", "xavier", "orthogonal", "eye"))}
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _corpus() -> list[tuple[str, torch.Tensor]]:
    torch.manual_seed(11)
    out: list[tuple[str, torch.Tensor]] = []
    for i, (name, init) in enumerate(FAMILIES.items()):
        for j, shape in enumerate(SHAPES):
            if name in MATRIX_ONLY and len(shape) < 2:
                continue
            if name == "eye" and len(shape) != 2:
                continue
            t = torch.empty(shape, dtype=torch.float32)
            with torch.no_grad():
                init(t)
            out.append((f"{name}{list(shape)}", t.to(DTYPES[(i + j) % len(DTYPES)])))
    return out


CORPUS = _corpus()


def _same(a: Identification, b: Identification) -> None:
    assert a.fit.label == b.fit.label
    assert a.fit.family == b.fit.family
    assert dict(a.fit.params) == dict(b.fit.params)
    assert a.fit.p_value == b.fit.p_value  # the winner's own tests: the very same numbers
    assert a.matches_default == b.matches_default
    assert a.structure == b.structure


def _both(t: torch.Tensor, default: DefaultInit | None) -> tuple[Identification, Identification]:
    rs = running_stats(t, seed=5)
    shape = tuple(t.shape)
    return (
        identify(rs, shape, default, t),
        identify(rs, shape, default, t, exhaustive=True),
    )


@pytest.mark.parametrize(("name", "t"), CORPUS, ids=[n for n, _ in CORPUS])
def test_screened_equals_exhaustive(name: str, t: torch.Tensor) -> None:
    screened, full = _both(t, None)
    _same(screened, full)


def _traced_variants() -> list[tuple[torch.Tensor, DefaultInit | None]]:
    """A Linear's, a Conv2d's and an Embedding's weight with its traced default: at it,
    rescaled, and re-initialised with another scheme, in each dtype."""
    with InitTracer() as tracer:
        layers = [nn.Linear(96, 80), nn.Conv2d(8, 16, 3), nn.Embedding(200, 32)]
    out: list[tuple[torch.Tensor, DefaultInit | None]] = []
    for k, layer in enumerate(layers):
        w = layer.weight
        default = tracer.resolve(w)
        variants = [w.detach().clone(), w.detach() * 3.0, torch.empty_like(w)]
        nn.init.xavier_normal_(variants[2])
        for v, dtype in zip(variants, DTYPES[k:] + DTYPES[:k], strict=False):
            out.append((v.to(dtype), default))
    return out


def test_screened_equals_exhaustive_against_traced_defaults() -> None:
    """With a traced default the decision is unchanged, and when the values differ from it
    the search over the candidates gives the same name."""
    for t, default in _traced_variants():
        screened, full = _both(t, default)
        _same(screened, full)


def test_corpus_names_what_it_should() -> None:
    """The corpus is not vacuous: it holds named schemes, estimated fits and unknowns."""
    labels = {n: _both(t, None)[0].fit.label for n, t in CORPUS}
    assert labels["kaiming_uniform_default[320, 320]"] == "kaiming_uniform(a=sqrt(5))"
    assert labels["normal_002[320, 320]"] == "normal(std=0.02)"
    assert labels["orthogonal[256, 64]"].startswith("orthogonal")
    assert labels["trained[320, 320]"] == "unknown"
    assert labels["laplace[320, 320]"] == "unknown"
    assert labels["constant[100]"] == "constant(0.5)"


def test_the_screen_skips_most_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the screen: a tensor far from every named scheme runs the full tests on
    the one estimated candidate that fits, not on all of them."""
    calls: list[str] = []
    real = identification._p_candidate

    def counted(*args: Any, **kw: Any) -> float:
        calls.append("x")
        return real(*args, **kw)

    monkeypatch.setattr(identification, "_p_candidate", counted)
    t = (torch.randn(512, 256) * 0.02).to(torch.bfloat16)
    screened, full = _both(t, None)
    _same(screened, full)
    assert screened.fit.label == "normal(std=0.02)"
    # exhaustive: every named scheme (25 for a matrix) and the first estimated one
    assert len(calls) > 25
    calls.clear()
    identify(running_stats(t, seed=5), (512, 256), None, t)
    assert len(calls) == 1


@pytest.mark.parametrize("scale", [1e-200, 1e-30, 1e30, 1e150, 1e300])
def test_extreme_magnitudes_give_the_same_answer(scale: float) -> None:
    """Values whose moments a float barely holds (or cannot): the screen's arithmetic must
    neither fail nor decide differently from the full tests."""
    torch.manual_seed(2)
    t = torch.randn(64, 48, dtype=torch.float64) * scale
    screened, full = _both(t, None)
    _same(screened, full)


@pytest.mark.parametrize("alpha", [1e-3, 1e-9])
def test_a_candidate_screened_out_by_its_window_could_not_have_won(alpha: float) -> None:
    """_best_candidate drops every named candidate whose variance window (solved once per
    shape and size) excludes the values' variance, without calling _cannot_beat; for that to
    change nothing, _cannot_beat must be true outside the window, and the window must be
    tight (a loose one would only cost time: it is checked to within 1e-5 of its width)."""
    import random

    rng = random.Random(3)
    for shape in [(256, 512), (64,), (16, 8, 3, 3), (50257, 768)]:
        for n in [30, 100, 4096, 10**7]:
            named = identification._named_screens(shape, n)
            windows = identification._screen_windows(shape, n, alpha)
            assert len(named) == len(windows)
            for (label, _, gamma), (lo, hi) in zip(named, windows, strict=True):
                if gamma is None:
                    assert (lo, hi) == (-math.inf, math.inf)
                    continue
                k2, sd, _ = gamma
                assert lo < k2 < hi, label
                for _ in range(100):
                    v = k2 + rng.gauss(0, 1) * sd * rng.choice([1, 3, 10, 1000])
                    if not lo <= v <= hi:
                        assert identification._cannot_beat(gamma, v, alpha), (label, n, v)
                width = hi - lo
                for end, inward in ((lo, 1.0), (hi, -1.0)):
                    assert not identification._cannot_beat(
                        gamma, end + inward * 1e-5 * width, alpha
                    )


def _queries() -> tuple[list[Query], list[Identification]]:
    """The corpus and traced defaults (at, off and away from them) as queries, each with
    its answer identified alone: 105 tensors of 15 families, 30 to 102,400 values, four
    dtypes, mixed in one list."""
    cases = [(t, None) for _, t in CORPUS] + _traced_variants()
    queries, alone = [], []
    for t, default in cases:
        rs = running_stats(t, seed=5)
        s = rs.result()
        queries.append(Query(s, rs.sample(), tuple(t.shape), default, structure_for(s, t), t.dtype))
        alone.append(identify(rs, tuple(t.shape), default, t))
    return queries, alone


def test_a_batch_is_identified_as_each_tensor_alone() -> None:
    """The acceptance: identify_many over the whole mixed corpus in one call (samples of
    different sizes and dtypes sorted together) equals identify one tensor at a time."""
    queries, alone = _queries()
    assert len({q.sample.numel() for q in queries}) > 5
    assert len({q.dtype for q in queries}) == len(DTYPES)
    batched = identify_many(queries)
    assert len(batched) == len(alone)
    for got, want in zip(batched, alone, strict=True):
        _same(got, want)
    # in any grouping: pairs, in reverse
    rev = identify_many(queries[::-1])[::-1]
    for got, want in zip(rev, alone, strict=True):
        _same(got, want)


def test_the_torch_path_names_the_same_with_p_values_to_1e9(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the kernel (not built, or INITSCOPE_FUSED=0) samples are sorted by torch and
    the KS distance taken over every value: the same labels and numbers, and p-values equal
    to 1e-9 (torch's erf and the C library's may differ by an ulp)."""
    queries, _ = _queries()
    kernel = identify_many(queries)
    monkeypatch.setenv("INITSCOPE_FUSED", "0")
    plain = identify_many(queries)
    for a, b in zip(kernel, plain, strict=True):
        assert a.fit.label == b.fit.label
        assert a.matches_default == b.matches_default
        assert dict(a.fit.params) == pytest.approx(dict(b.fit.params), rel=1e-9)
        if a.fit.p_value is None:
            assert b.fit.p_value is None
        else:
            assert a.fit.p_value == pytest.approx(b.fit.p_value, rel=1e-9, abs=1e-12)
