"""Streaming statistics: exact against torch, mergeable across any split, bounded sample."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from initscope.knowledge.distributions import Distribution
from initscope.knowledge.goodness import kolmogorov_sf, ks_test
from initscope.stats import fused
from initscope.stats.tensor import RunningStats, running_stats, sample_positions, tensor_stats


@pytest.fixture(params=["fused", "torch"], autouse=True)
def stats_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both paths: the fused kernel and torch ops."""
    if request.param == "torch":
        monkeypatch.setattr(fused, "available", lambda: False)
    elif not fused.available():
        pytest.skip("the fused kernel is not built here (no C compiler)")
    return str(request.param)


def test_matches_torch_across_chunks() -> None:
    t = torch.randn(1000, 37, dtype=torch.float32) * 3 + 1
    s = running_stats(t, chunk=4096).result()  # forces 10 chunks
    d = t.double()
    assert s.mean == pytest.approx(float(d.mean()), rel=1e-12)
    assert s.std == pytest.approx(float(d.std()), rel=1e-12)
    assert (s.min, s.max) == (float(d.min()), float(d.max()))
    assert s.abs_max == float(d.abs().max())


@pytest.mark.parametrize(
    "dtype",
    [
        torch.bfloat16,
        torch.float16,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
        torch.int8,
        torch.float32,
        torch.float64,
    ],
)
def test_low_precision_and_integer_dtypes_accumulate_in_float64(dtype: torch.dtype) -> None:
    t = (torch.randn(4096) * 20).to(dtype)
    t[::9] = 0
    s = tensor_stats(t)
    d = t.double()
    assert s is not None
    assert s.mean == pytest.approx(float(d.mean()), rel=1e-12, abs=1e-12)
    assert s.std == pytest.approx(float(d.std()), rel=1e-12)
    assert (s.min, s.max) == (float(d.min()), float(d.max()))
    assert s.zero_fraction == float((d == 0).double().mean())


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=3000),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=6),
    scale=st.floats(min_value=1e-3, max_value=1e3),
)
def test_merge_of_any_split_equals_one_pass(n: int, cuts: list[float], scale: float) -> None:
    g = torch.Generator().manual_seed(n)
    t = torch.randn(n, generator=g, dtype=torch.float64) * scale + scale / 3
    t[torch.rand(n, generator=g) < 0.05] = 0.0
    bounds = sorted({0, n, *(int(c * n) for c in cuts)})
    positions = sample_positions(n, 64, seed=5)
    merged = RunningStats(positions=positions)
    for lo, hi in itertools.pairwise(bounds):
        part = RunningStats(positions=positions)
        part.update(t[lo:hi], lo)
        merged.merge(part)
    one = RunningStats(positions=positions)
    one.update(t, 0)
    a, b = merged.result(), one.result()
    assert a.numel == b.numel == n
    assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-9 * scale)
    if n > 1:
        assert a.std == pytest.approx(b.std, rel=1e-9)
    assert (a.min, a.max, a.zero_fraction) == (b.min, b.max, b.zero_fraction)
    assert torch.equal(merged.sample(), one.sample())
    assert torch.equal(one.sample(), t[positions])


def test_sample_is_bounded_and_distinct() -> None:
    p = sample_positions(10_000_000, 4096, seed=1)
    assert p.numel() == 4096 and p.unique().numel() == 4096
    assert int(p.min()) >= 0 and int(p.max()) < 10_000_000
    assert torch.equal(p, sample_positions(10_000_000, 4096, seed=1))
    assert sample_positions(10, 4096, seed=1).tolist() == list(range(10))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shift", [0.0, 1.0, 1000.0])
def test_fast_path_is_accurate_when_mean_dwarfs_std(dtype: torch.dtype, shift: float) -> None:
    # LayerNorm-like weights (1 ± 1e-3) and offset data: the shifted second pass keeps the
    # mean and std accurate where a naive sum of squares would cancel catastrophically.
    g = torch.Generator().manual_seed(3)
    t = (shift + torch.randn(3_000_000, generator=g, dtype=torch.float64) * 1e-3).to(dtype)
    s = tensor_stats(t)
    d = t.double()
    assert s is not None
    std = float(d.std())
    assert abs(s.mean - float(d.mean())) <= 1e-9 * max(std, 1e-300)
    assert s.std == pytest.approx(std, rel=1e-9, abs=1e-300)
    assert (s.min, s.max) == (float(d.min()), float(d.max()))
    assert s.zero_fraction == float((d == 0).double().mean())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fast_path_falls_back_on_a_block_with_nan_or_inf(bad: float) -> None:
    t = torch.randn(3_000_000)
    t[2_500_000] = bad  # in the third 1 Mi block
    s = tensor_stats(t)
    clean = torch.cat([t[:2_500_000], t[2_500_001:]]).double()
    assert s is not None
    assert (s.nan_count, s.inf_count) == ((1, 0) if bad != bad else (0, 1))
    assert s.mean == pytest.approx(float(clean.mean()), rel=1e-9, abs=1e-12)
    assert s.std == pytest.approx(float(clean.std()), rel=1e-9)


def test_nan_inf_excluded_from_moments() -> None:
    t = torch.tensor([1.0, 2.0, float("nan"), float("inf"), -float("inf"), 3.0])
    s = tensor_stats(t)
    assert s is not None
    assert (s.nan_count, s.inf_count) == (1, 2)
    assert s.mean == 2.0 and s.std == 1.0 and s.abs_max == 3.0


def test_all_nan_tensor_has_no_moments() -> None:
    s = tensor_stats(torch.full((4,), float("nan")))
    assert s is not None and s.mean is None and s.nan_count == 4


def test_meta_tensor_has_no_stats() -> None:
    assert tensor_stats(torch.empty(3, device="meta")) is None


def test_ks_rejects_the_wrong_distribution() -> None:
    torch.manual_seed(0)
    x = torch.empty(4096).uniform_(-1 / math.sqrt(5), 1 / math.sqrt(5))
    assert ks_test(x, Distribution.uniform(-1 / math.sqrt(5), 1 / math.sqrt(5))).p_value > 0.01
    # xavier_uniform's bound for a (100, 5) weight: sqrt(6/105) = 0.239 vs 0.447
    assert ks_test(x, Distribution.uniform(-0.239, 0.239)).p_value < 1e-6
    assert ks_test(x, Distribution.normal(0, x.std().item())).p_value < 1e-6


def test_kolmogorov_sf_known_values() -> None:
    # tabulated: P(K > 1.36) ≈ 0.049, P(K > 1.63) ≈ 0.010
    assert kolmogorov_sf(1.358) == pytest.approx(0.05, abs=1e-3)
    assert kolmogorov_sf(1.628) == pytest.approx(0.01, abs=5e-4)
    assert kolmogorov_sf(0.0) == 1.0


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_complex_sparse_and_quantized_tensors() -> None:
    z = tensor_stats(torch.zeros(4, dtype=torch.cfloat))
    assert z is not None and z.zero_fraction == 1.0
    sp = torch.tensor([[0.0, 2.0], [4.0, 0.0]]).to_sparse()
    s = tensor_stats(sp)
    assert s is not None and s.mean == 1.5 and s.zero_fraction == 0.5
    q = torch.quantize_per_tensor(
        torch.tensor([0.5, 1.0]), scale=0.5, zero_point=0, dtype=torch.qint8
    )
    qs = tensor_stats(q)
    assert qs is not None and qs.mean == 0.75


def test_float64_values_near_the_maximum_keep_a_finite_mean() -> None:
    t = torch.zeros(100, dtype=torch.float64)
    t[0] = torch.finfo(torch.float64).min
    s = tensor_stats(t)
    assert s is not None
    assert s.mean == pytest.approx(torch.finfo(torch.float64).min / 100, rel=1e-12)
    assert s.std == math.inf  # the squares overflow: inf, not NaN


def test_float64_values_at_both_ends_of_the_range_keep_a_finite_mean() -> None:
    t = torch.zeros(5000, dtype=torch.float64)
    t[0], t[4000] = torch.finfo(torch.float64).max, torch.finfo(torch.float64).min
    t[7] = math.inf
    s = tensor_stats(t)
    assert s is not None
    assert s.mean == pytest.approx(0.0, abs=1e-300) and s.std == math.inf and s.inf_count == 1
