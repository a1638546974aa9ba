"""The fused statistics kernel: the same results as the torch path, from memory or a file,
whatever the thread count or the CPU's instruction set; a file that shrinks while it is read is
a clear error; and a kernel that is not built, or turned off, means the torch path."""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import shutil
import struct
import sys
import sysconfig
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import initscope.stats
from initscope.cli import app
from initscope.errors import CheckpointError
from initscope.io.checkpoints import open_checkpoint
from initscope.knowledge.identification import _sample_rows, row_lines
from initscope.measure.report import ReportOptions, report_checkpoint
from initscope.stats import fused, native
from initscope.stats.tensor import RunningStats, file_stats, running_stats, tensor_stats

needs_kernel = pytest.mark.skipif(
    not fused.available(), reason="the fused kernel is not built here (no C compiler)"
)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _torch_path(t: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> RunningStats:
    with monkeypatch.context() as m:
        m.setattr(fused, "available", lambda: False)
        return running_stats(t, seed=7)


@functools.cache
def _cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = 2 * 2**20 + 12_345  # many segments, the last one short, a ragged tail
    nan_inf = torch.randn(n, generator=g)
    nan_inf[[5, 70_000, 2_100_000]] = torch.tensor([math.nan, math.inf, -math.inf])
    sparse = torch.randn(n, generator=g)
    sparse[torch.rand(n, generator=g) < 0.9] = 0
    return {
        "normal": torch.randn(n, generator=g) * 0.02,
        "offset": 1000 + torch.randn(n, generator=g) * 1e-3,  # mean ≫ std
        "nan-inf": nan_inf,
        "sparse": sparse,
        "constant": torch.ones(n),
        "all-nan": torch.full((4099,), math.nan),
        "tiny": torch.tensor([3.0]),
        "odd": torch.randn(17, generator=g),
    }


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(_cases()))
def test_kernel_matches_the_torch_path(
    case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = _cases()[case].to(dtype)
    fast, slow = running_stats(t, seed=7), _torch_path(t, monkeypatch)
    got, want = fast.result(), slow.result()
    for field in ("numel", "zero_fraction", "nan_count", "inf_count", "min", "max", "abs_max"):
        assert getattr(got, field) == getattr(want, field), field
    if want.mean is None:
        assert got.mean is None and got.std is None
        return
    assert got.mean is not None and got.std is not None and want.std is not None
    assert abs(got.mean - want.mean) <= 1e-12 * max(abs(want.mean), want.std, 1e-300)
    assert got.std == pytest.approx(want.std, rel=1e-10, abs=1e-300)
    assert torch.equal(fast.sample(), slow.sample())  # the same positions, the same values


@needs_kernel
def test_results_do_not_depend_on_the_thread_count() -> None:
    t = torch.randn(5 * fused.SEGMENT + 3) * 0.1 + 0.5
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused.scan(t.dtype, t.numel(), address=t.data_ptr())
        torch.set_num_threads(2)
        two = fused.scan(t.dtype, t.numel(), address=t.data_ptr())
    finally:
        torch.set_num_threads(before)
    assert [bytes(a) for a in one.accumulators] == [bytes(a) for a in two.accumulators]


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3000, 700), (700, 3000), (40, 3, 3, 3)])
def test_a_file_scan_equals_the_memory_scan(
    tmp_path: Path, dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    g = torch.Generator().manual_seed(1)
    t = (torch.randn(shape, generator=g) * 0.05).to(dtype)
    path = tmp_path / "w.safetensors"
    save_file({"pad": torch.zeros(3, dtype=torch.uint8), "w": t}, str(path))
    ckpt = open_checkpoint(path)
    stored = ckpt.stored("w")
    assert stored is not None
    lines = row_lines(shape)
    rs, rows = file_stats(stored.fd, stored.offset, dtype, t.numel(), seed=3, lines=lines)
    mem = running_stats(t, seed=3)
    assert rs.result() == mem.result()  # the same code over the same chunks: the same bits
    assert torch.equal(rs.sample(), mem.sample())
    assert rows is not None and torch.equal(rows, _sample_rows(t))  # rows, or columns if tall
    ckpt.close()


@needs_kernel
def test_a_file_that_shrinks_while_it_is_read_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_file({"a": torch.randn(300, 300), "b": torch.randn(300, 300)}, str(path))
    with open_checkpoint(path) as ckpt:
        os.truncate(path, path.stat().st_size - 1000)  # a trainer saving over it
        with pytest.raises(
            CheckpointError, match=r"cannot read tensor 'b' from .*big\.safetensors"
        ):
            report_checkpoint(ckpt, target=str(path), options=ReportOptions(workers=1))


@needs_kernel
def test_the_cli_reports_the_same_through_either_path(
    tiny_safetensors: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["report", str(tiny_safetensors), "--format", "json"]
    fast = runner.invoke(app, args)
    monkeypatch.setattr(fused, "available", lambda: False)
    slow = runner.invoke(app, args)
    assert fast.exit_code == 0 and slow.exit_code == 0
    a, b = json.loads(fast.stdout), json.loads(slow.stdout)
    for p, q in zip(a["parameters"], b["parameters"], strict=True):
        assert p["fit"] == q["fit"] and p["matches_default"] == q["matches_default"]
        assert p["stats"]["std"] == pytest.approx(q["stats"]["std"], rel=1e-10)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["the first block", "the shift's picks"])
def test_a_segment_starting_with_nan_or_inf_keeps_its_precision(
    dtype: torch.dtype, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(2)
    t = (1e4 + 1e-3 * torch.randn(300_000, generator=g, dtype=torch.float64)).to(dtype)
    if where == "the first block":
        t[:2048] = math.nan
    else:  # only the 33 evenly spaced values the shift is taken from
        t[:2048:62] = math.inf
    got, want = running_stats(t).result(), _torch_path(t, monkeypatch).result()
    assert got.std == pytest.approx(want.std, rel=1e-9)
    assert (got.nan_count, got.inf_count) == (want.nan_count, want.inf_count)


@needs_kernel
@pytest.mark.parametrize(("big", "std"), [(1e150, 5.000009536770e149), (2e152, math.inf)])
def test_sums_past_the_float64_range_give_the_spread_or_inf_never_zero(
    big: float, std: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = torch.zeros(262_144, dtype=torch.float64)
    t[1::2] = big
    for s in (running_stats(t).result(), _torch_path(t, monkeypatch).result()):
        assert s.mean == pytest.approx(big / 2, rel=1e-12)
        assert s.std == pytest.approx(std, rel=1e-9)


@needs_kernel
def test_lazily_negated_views_are_read_as_values(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch._neg_view(torch.rand(5000) + 1)
    got, want = running_stats(x).result(), _torch_path(x, monkeypatch).result()
    assert got.mean is not None and got.mean < 0 and got == want


@needs_kernel
def test_negative_zero_is_reported_as_zero() -> None:
    z = torch.zeros(4096)
    z[1::2] = -0.0
    s = running_stats(z).result()
    assert s.min is not None and s.max is not None
    assert math.copysign(1, s.min) == 1 and math.copysign(1, s.max) == 1


# -- how the kernel is found: built at install time, chosen at load time ------------------------


def _compiler() -> str | None:
    """The C compiler setuptools builds extensions with ($CC, else Python's own), if present."""
    words = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    return shutil.which(words[0]) if words else None


def test_the_kernel_is_built_where_a_compiler_is() -> None:
    # The extension is optional, so a kernel.c that no longer compiles would install quietly
    # without it, and every test above would be skipped: this one fails instead.
    if _compiler() is None:
        pytest.skip("no C compiler here: the install leaves the kernel out by design")
    if os.environ.get("INITSCOPE_FUSED") == "0":
        pytest.skip("INITSCOPE_FUSED=0: this run tests the torch path")
    assert fused.available(), fused.describe()
    described = fused.describe()
    assert described.startswith(("fused C kernel (avx2) at ", "fused C kernel (portable) at "))
    path = Path(described.split(" at ", 1)[1])
    assert path.parent == Path(initscope.stats.__file__).parent
    assert path.name.startswith("_kernel.")


def _no_kernel_module(monkeypatch: pytest.MonkeyPatch, module: ModuleType | None) -> None:
    """Make ``from initscope.stats import _kernel`` give ``module`` (None: ImportError), and
    the next use of the kernel look for it again."""
    monkeypatch.delattr(initscope.stats, "_kernel", raising=False)
    monkeypatch.setitem(sys.modules, "initscope.stats._kernel", module)
    if module is not None:
        monkeypatch.setattr(initscope.stats, "_kernel", module, raising=False)
    monkeypatch.setattr(native, "_LOADED", [])


def _torch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Assert that statistics still come, and from torch: the kernel is never called."""

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the kernel was called")

    monkeypatch.setattr(fused, "scan", no_scan)
    assert not fused.available()
    assert tensor_stats(torch.arange(10.0)).mean == 4.5


def test_initscope_fused_0_takes_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITSCOPE_FUSED", "0")
    assert fused.describe() == "torch (INITSCOPE_FUSED=0)"
    _torch_only(monkeypatch)


def test_without_the_built_module_initscope_uses_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INITSCOPE_FUSED", raising=False)
    _no_kernel_module(monkeypatch, None)
    assert fused.describe() == (
        "torch (the C kernel is not built; installing initscope where a C compiler works builds it)"
    )
    _torch_only(monkeypatch)


def test_a_module_that_is_not_our_library_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = ModuleType("initscope.stats._kernel")
    fake.__file__ = str(tmp_path / "_kernel.so")
    fake.__spec__ = ModuleSpec(fake.__name__, None, origin=fake.__file__)
    (tmp_path / "_kernel.so").write_bytes(b"not a library")
    monkeypatch.delenv("INITSCOPE_FUSED", raising=False)
    _no_kernel_module(monkeypatch, fake)
    assert fused.describe().startswith(f"torch (the C kernel at {fake.__file__} cannot be used")
    _torch_only(monkeypatch)


def test_a_built_module_that_does_not_load_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # as a module built for another platform, or a damaged file, would be
    (tmp_path / f"_kernel{EXTENSION_SUFFIXES[0]}").write_bytes(b"not a library")
    monkeypatch.delenv("INITSCOPE_FUSED", raising=False)
    monkeypatch.delattr(initscope.stats, "_kernel", raising=False)
    monkeypatch.delitem(sys.modules, "initscope.stats._kernel", raising=False)
    monkeypatch.setattr(initscope.stats, "__path__", [str(tmp_path)])
    monkeypatch.setattr(native, "_LOADED", [])
    assert fused.describe().startswith("torch (the C kernel cannot be imported (")
    _torch_only(monkeypatch)


@needs_kernel
def test_avx2_and_portable_code_give_the_same_bits() -> None:
    # One build serves every CPU, and a report must be the same bytes on each: the AVX2
    # code and the portable code run the same operations in the same order.
    lib = native.library()
    assert lib is not None
    if lib.fused_isa() != b"avx2":
        pytest.skip("this CPU has no AVX2: only the portable code runs here")
    g = torch.Generator().manual_seed(5)
    rows = torch.randn(64, 1000, generator=g, dtype=torch.float64) * 3 + 1

    def run() -> list[bytes]:
        got = []
        for t in _cases().values():
            for dtype in DTYPES:
                x = t.to(dtype)
                n = x.numel()
                lines = fused.Lines(torch.arange(0, 640, 10), 10, 1) if n >= 1000 else None
                done = fused.scan(dtype, n, address=x.data_ptr(), positions=torch.arange(0, n, 97),
                                  lines=lines)  # fmt: skip
                got += [bytes(a) for a in done.accumulators]
                got += [_bits(done.sample), _bits(done.lines)]
        return [*got, struct.pack("6d", *fused.row_test(rows))]

    avx2 = run()
    try:
        assert lib.fused_prefer_portable(1) == b"portable"
        assert fused.describe().startswith("fused C kernel (portable)")
        portable = run()
    finally:
        lib.fused_prefer_portable(0)
    assert fused.describe().startswith("fused C kernel (avx2)")
    assert avx2 == portable


def _bits(t: torch.Tensor | None) -> bytes:
    return b"" if t is None else t.numpy().tobytes()


# -- identification's sample work: the radix sort with the kurtosis, and the KS distance --


def _samples() -> dict[str, torch.Tensor]:
    """Samples as identification gets them (float64 copies of stored values): every stored
    dtype's rounding, both signs, ties, signed zeros, subnormals, infinities, odd sizes."""
    g = torch.Generator().manual_seed(4)
    out = {
        f"normal-{str(d).removeprefix('torch.')}": (torch.randn(4096, generator=g) * 0.02)
        .to(d)
        .double()
        for d in DTYPES
    }
    out["uniform-f64"] = torch.rand(4096, generator=g, dtype=torch.float64) * 2 - 1
    out["positive"] = torch.rand(1000, generator=g, dtype=torch.float64) + 3
    out["negative"] = -torch.rand(999, generator=g, dtype=torch.float64) - 3
    out["ties"] = torch.randint(-3, 4, (500,), generator=g).double()
    special = [0.0, -0.0, 5e-324, -5e-324, 1e-310, -1e-310, math.inf, -math.inf, 1e308, -1e308]
    out["special"] = torch.tensor(special * 7, dtype=torch.float64)
    out["one"] = torch.tensor([2.5], dtype=torch.float64)
    out["empty"] = torch.empty(0, dtype=torch.float64)
    out["constant"] = torch.full((64,), -0.75, dtype=torch.float64)
    out["signed zeros"] = torch.tensor([0.0, -0.0] * 9, dtype=torch.float64)
    out["two values"] = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    # float64 over the whole range, both signs: every bit varies, six passes
    out["wide"] = torch.randn(3001, generator=g, dtype=torch.float64) * torch.exp2(
        torch.randint(-1000, 1000, (3001,), generator=g).double()
    )
    return out


def _b2(x: torch.Tensor) -> float:
    c = x - x.mean()
    m2 = float((c * c).mean()) if x.numel() else 0.0
    return float((c**4).mean()) / (m2 * m2) if m2 > 0 else math.nan


@needs_kernel
def test_samples_are_sorted_as_torch_sorts_them_with_their_kurtosis() -> None:
    cases = _samples()
    ordered, kurtoses = fused.samples(list(cases.values()))
    for (name, x), got, b2 in zip(cases.items(), ordered, kurtoses, strict=True):
        assert got.shape == x.shape, name
        assert torch.equal(got, x.sort().values), name  # -0.0 == 0.0: any correct order
        want = _b2(x)
        if math.isnan(want):
            assert math.isnan(b2), name
        else:
            assert b2 == pytest.approx(want, rel=1e-12), name
    # one call for many samples gives what one call for each gives
    for (name, x), got, b2 in zip(cases.items(), ordered, kurtoses, strict=True):
        [alone], [b2_alone] = fused.samples([x])
        assert torch.equal(alone, got), name
        assert b2_alone == b2 or (math.isnan(b2) and math.isnan(b2_alone)), name


@needs_kernel
def test_the_ks_distance_is_that_of_the_full_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """fused_ks takes the CDF at a fraction of the values; its distance must be the full
    pass's (torch's, where erf may differ by an ulp), for fits good and bad."""
    from initscope.knowledge.distributions import Distribution
    from initscope.knowledge.goodness import ks_test

    g = torch.Generator().manual_seed(6)
    samples = [
        (torch.randn(4096, generator=g) * 0.02).bfloat16().double(),
        torch.randn(1000, generator=g, dtype=torch.float64) * 0.05 + 0.01,
        (torch.rand(4096, generator=g) * 0.2 - 0.1).double(),
        torch.randn(31, generator=g, dtype=torch.float64),
        torch.randn(4099, generator=g, dtype=torch.float64).clamp(-2, 2),
    ]
    candidates = [
        Distribution.normal(0.0, 0.02),
        Distribution.normal(0.01, 0.05),
        Distribution.normal(0.0, 1.0),
        Distribution.uniform(-0.1, 0.1),
        Distribution.uniform(-0.0346, 0.0346),
        Distribution.trunc_normal(0.0, 1.0, -2.0, 2.0),
        Distribution.trunc_normal(0.0, 0.02, -0.04, 0.04),
    ]
    for x in samples:
        ordered = x.sort().values
        for d in candidates:
            form = d.cdf_form()
            assert form is not None
            family, a, b, lo, hi = form
            got = fused.ks_distance(ordered, family.value, a, b, lo, hi)
            with monkeypatch.context() as m:
                m.setattr(fused, "available", lambda: False)
                want = ks_test(ordered, d, presorted=True).statistic
            assert abs(got - want) <= 4e-16, (d.label(), got, want)
            if d.family.value == "uniform":
                assert got == want  # no erf: the very same operations


@needs_kernel
def test_the_row_test_statistics_are_the_torch_paths() -> None:
    """fused_row_test gives the row test's χ² statistics and scales as the torch path does
    (to rounding), down to the cases the caller refuses (no spread: s2 = 0)."""
    from initscope.knowledge import identification

    g = torch.Generator().manual_seed(8)
    cases = {
        "normal": torch.randn(64, 512, generator=g, dtype=torch.float64) * 0.02,
        "small": torch.randn(8, 8, generator=g, dtype=torch.float64),
        "row offsets": torch.randn(64, 300, generator=g, dtype=torch.float64)
        + torch.arange(64, dtype=torch.float64)[:, None],
        "huge": torch.randn(64, 64, generator=g, dtype=torch.float64) * 1e150,
    }
    for name, rows in cases.items():
        got = fused.row_test(rows)
        want = identification._row_test(rows)
        assert got[:4] == pytest.approx(want, rel=1e-9, nan_ok=True), name
        norm0, dot01 = float(rows[0] @ rows[0]), float(rows[0] @ rows[1])
        assert got.norm0 == pytest.approx(norm0, rel=1e-12), name
        assert abs(got.dot01 - dot01) <= 1e-12 * norm0, name  # sums in another order
    s2 = fused.row_test(torch.ones(16, 16, dtype=torch.float64))[2]
    assert s2 == 0.0
    assert identification._p_rows(torch.ones(16, 16, dtype=torch.float64)) is None


@needs_kernel
def test_the_ks_test_reads_any_float_sample_and_says_nan_for_nan() -> None:
    """The kernel's KS distance is given float64 values on the CPU whatever the caller's
    sample (a presorted float32 one was read as doubles); NaN values give NaN, as torch's
    full pass does."""
    from initscope.knowledge.distributions import Distribution
    from initscope.knowledge.goodness import ks_test

    g = torch.Generator().manual_seed(9)
    x = torch.randn(1000, generator=g).sort().values  # float32
    d = Distribution.normal(0.0, 1.0)
    assert ks_test(x, d, presorted=True) == ks_test(x.double(), d, presorted=True)
    assert ks_test(x, d, presorted=True).p_value > 1e-3
    with_nan = torch.cat([x.double(), torch.tensor([math.nan], dtype=torch.float64)])
    assert math.isnan(fused.ks_distance(with_nan, "normal", 0.0, 1.0))


# -- torch's own computations, done in C: the sample positions and the incomplete gammas --


@needs_kernel
@pytest.mark.parametrize(
    ("numel", "size"),
    [(131_072, 4096), (4097, 4096), (1_000_003, 4096), (5000, 100), (65, 64), (2**40 + 7, 4096)],
)
def test_sample_positions_are_torchs_draw(numel: int, size: int) -> None:
    """fused_positions replays torch's generator: the positions are those the torch path
    draws, bit for bit, for any seed (reports stay the same with and without the kernel)."""
    from initscope.stats import tensor

    seeds = [0, 1, 7, 2**31, 2**32 - 1, 2**32 + 5, 123_456_789]
    for seed in seeds:
        got = fused.positions(numel, size, seed)
        bounds = torch.arange(size + 1, dtype=torch.long) * numel // size
        widths = bounds[1:] - bounds[:-1]
        u = torch.rand(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        want = torch.minimum(u.mul(widths.double()).long(), widths - 1) + bounds[:-1]
        assert torch.equal(got, want), seed
        assert torch.equal(tensor.sample_positions(numel, size, seed), want), seed


@needs_kernel
def test_the_incomplete_gammas_are_torchs() -> None:
    """The kernel's P(a, x) and Q(a, x) are torch.special.gammainc/gammaincc's, to 1e-10
    relative, over every branch of their algorithm (series, continued fraction, the
    asymptotic expansion for large a near x) and at the edges (0, inf, NaN, negative)."""
    g = torch.Generator().manual_seed(9)
    a = torch.pow(10.0, torch.rand(4000, generator=g, dtype=torch.float64) * 10 - 3)
    x = a * torch.pow(10.0, torch.rand(4000, generator=g, dtype=torch.float64) * 4.5 - 3)
    near = torch.tensor([25.0, 63.5, 150.0, 250.0, 2047.5, 1e6], dtype=torch.float64)
    a = torch.cat([a, near, near, torch.tensor([1.0, 0.0, 2.0, math.inf, -1.0, 2.0, math.nan])])
    x = torch.cat(
        [x, near * 1.01, near * 0.97, torch.tensor([0.0, 1.0, math.inf, 2.0, 2.0, -1.0, 1.0])]
    )
    for ours, theirs in (
        (fused.gammainc, torch.special.gammainc),
        (fused.gammaincc, torch.special.gammaincc),
    ):
        want = theirs(a, x).tolist()
        for ai, xi, w in zip(a.tolist(), x.tolist(), want, strict=True):
            got = ours(ai, xi)
            if math.isnan(w):
                assert math.isnan(got), (ai, xi)
            else:
                assert got == pytest.approx(w, rel=1e-10, abs=1e-300), (ai, xi)


@needs_kernel
def test_the_kolmogorov_series_is_pythons_bit_for_bit() -> None:
    """The KS p-value's series in C sums the same terms in the same order as
    goodness.kolmogorov_sf: the same value to the bit, edges and NaN included."""
    from initscope.knowledge.goodness import kolmogorov_sf

    g = torch.Generator().manual_seed(10)
    xs = (torch.rand(20_000, generator=g, dtype=torch.float64) * 5 - 1).tolist()
    xs += [0.0, 0.2, 0.19999999999999998, 1e-300, 5e-324, 100.0, math.inf, -math.inf, math.nan]
    for x in xs:
        assert fused.kolmogorov_sf(x) == kolmogorov_sf(x), x
