"""Defaults made by chains of elementwise ops: timm's own init functions (closed forms),
Mamba's time-step bias (a derived default, tested against a probe of its chain), and values
the code computed (deterministic, compared with a replay of their recipe)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from initscope.cli import app
from initscope.io.models import trace_model
from initscope.io.targets import ModelSpec
from initscope.knowledge.distributions import Distribution, Family
from initscope.knowledge.goodness import ks_two_sample
from initscope.knowledge.identification import identify
from initscope.knowledge.recipes import (
    MAX_REPLAY,
    MAX_STEPS,
    PROBE_SIZE,
    Recipe,
    Ref,
    Step,
    parse_op,
    probe,
    replay,
)
from initscope.knowledge.tracing import DefaultInit, InitTracer
from initscope.stats.tensor import running_stats
from tests.fixtures.timm_like import VarianceScaled

VIT = "tests.fixtures.timm_like:VitLike"
TIME_STEP = "tests.fixtures.models:TimeStep"


def _params(runner: CliRunner, *argv: str) -> dict[str, dict[str, Any]]:
    result = runner.invoke(app, ["report", *argv, "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    return {p["name"]: p for p in json.loads(result.stdout)["parameters"]}


def _identify(values: torch.Tensor, default: DefaultInit) -> bool | None:
    found = identify(running_stats(values), tuple(values.shape), default, values)
    return found.matches_default


# -- timm's functions: closed forms ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["timm", "jax"])
def test_a_vit_initialized_by_timm_functions_has_no_custom_default(
    runner: CliRunner, mode: str
) -> None:
    cpu = _params(runner, VIT, "--arg", f"mode={mode}")
    meta = _params(runner, VIT, "--arg", f"mode={mode}", "--meta")
    assert cpu.keys() == meta.keys()
    for name, p in cpu.items():
        assert p["default"]["family"] not in ("custom", "derived"), (name, p["default"])
        assert p["default"]["label"] == meta[name]["default"]["label"], name
        if p["numel"] >= 1000:
            assert p["matches_default"] is True, (name, p["fit"], p["default"]["label"])
    if mode == "timm":
        # timm's uniform_ -> erfinv_ -> mul_ -> add_ -> clamp_ is torch's trunc_normal_(std=.02)
        qkv = cpu["blocks.0.attn.qkv.weight"]["default"]
        assert qkv["label"] == cpu["pos_embed"]["default"]["label"] == "TN(0, 0.02; [-2, 2])"
        assert qkv["init"] == "uniform_" and qkv["then"][0] == "erfinv_()"
    else:
        # lecun_normal_: std sqrt(1/fan_in)/0.8796, cut at 2 of its own units
        sigma = math.sqrt(1 / (3 * 8 * 8)) / 0.87962566103423978
        expected = Distribution.trunc_normal(0.0, sigma, -2 * sigma, 2 * sigma).label()
        assert cpu["patch_embed.proj.weight"]["default"]["label"] == expected


def test_every_way_of_variance_scaling_is_its_distribution() -> None:
    defaults = trace_model(ModelSpec("tests.fixtures.timm_like:VarianceScaled")).defaults
    d_in, d_out = 48, 96
    fan = {"fan_in": d_in, "fan_out": d_out, "fan_avg": (d_in + d_out) / 2}
    for i, (mode, distribution) in enumerate(VarianceScaled.WAYS):
        std = math.sqrt(2.0 / fan[mode])
        got = defaults[f"scaled.{i}.weight"].distribution
        if distribution == "truncated_normal":
            sigma = std / 0.87962566103423978
            assert got.family is Family.TRUNC_NORMAL
            assert got.scale == pytest.approx(sigma) and got.high == pytest.approx(2 * sigma)
            assert got.std == pytest.approx(std, rel=1e-6)  # what variance_scaling_ asks for
        elif distribution == "normal":
            assert got == Distribution.normal(0.0, pytest.approx(std))  # type: ignore[arg-type]
        else:
            assert got.family is Family.UNIFORM and got.high == pytest.approx(math.sqrt(3) * std)
    tf = defaults["tf.weight"].distribution
    assert (tf.family, tf.loc, tf.scale) == (Family.TRUNC_NORMAL, 0.1, pytest.approx(0.05))
    assert (tf.low, tf.high) == (pytest.approx(0.0), pytest.approx(0.2))


def test_a_far_clamp_on_a_normal_is_a_truncation_and_a_near_one_is_derived() -> None:
    with InitTracer() as tracer:
        far = torch.randn(2000).mul_(0.02).clamp_(-2.0, 2.0)  # 100σ: nothing is cut
        near = torch.randn(2000).clamp(min=0.0)  # half the mass at 0
    got_far, got_near = tracer.resolve(far), tracer.resolve(near)
    assert got_far is not None and got_far.label() == "TN(0, 0.02; [-2, 2])"
    assert got_near is not None and got_near.label() == "derived: clamp(N(0, 1), min=0)"
    assert _identify(near, got_near) is True
    assert _identify(torch.randn(2000).abs(), got_near) is False  # no atom at 0


# -- derived: the probe ---------------------------------------------------------------------


def test_mamba_time_step_bias_is_derived_and_tested_against_its_probe() -> None:
    cpu = trace_model(ModelSpec(TIME_STEP))
    meta = trace_model(ModelSpec(TIME_STEP), meta=True)
    bias = cpu.defaults["bias"]
    assert bias.distribution.family is Family.DERIVED
    assert bias.label() == (
        "derived: x + log(-expm1(-x)), x = clamp(exp(U(-6.908, -2.303)), min=0.0001)"
    )
    assert bias == meta.defaults["bias"]  # the recipe and the probe's moments alike
    assert cpu.defaults["table"].label() == "derived: exp(N(-1, 0.5))"  # via .data =
    values = cpu.model.bias.detach()
    assert _identify(values, bias) is True
    assert _identify(cpu.model.table.detach(), cpu.defaults["table"]) is True
    # Another seed's draw passes; a trained-like update, another dt_max, or the values
    # before the inverse softplus do not.
    assert _identify(trace_model(ModelSpec(TIME_STEP), seed=7).model.bias.detach(), bias)
    assert _identify(values + 0.7 * torch.randn_like(values), bias) is False
    other = trace_model(ModelSpec(TIME_STEP, kwargs={"dt_max": 0.2})).model.bias.detach()
    assert _identify(other, bias) is False
    assert _identify(torch.nn.functional.softplus(values), bias) is False


def test_a_derived_default_is_checked_as_other_defaults(runner: CliRunner, tmp_path: Path) -> None:
    model = trace_model(ModelSpec(TIME_STEP)).model
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "fresh.safetensors"))
    state["bias"] = state["bias"] * 1.5
    save_file(state, str(tmp_path / "scaled.safetensors"))
    expect = tmp_path / "expect.yaml"
    expect.write_text("checks:\n  - param: bias\n    follows: default\n")
    argv = ["--model", TIME_STEP, "--expect", str(expect)]
    fresh = runner.invoke(app, ["check", str(tmp_path / "fresh.safetensors"), *argv])
    assert fresh.exit_code == 0, fresh.output
    bad = runner.invoke(app, ["check", str(tmp_path / "scaled.safetensors"), *argv])
    assert bad.exit_code == 1, bad.output
    assert "bias" in bad.stdout and "derived: x + log(-expm1(-x))" in bad.stdout
    report = _params(runner, TIME_STEP)["bias"]["default"]
    assert report["family"] == "derived"
    assert (
        report["expression"] == "x + log(-expm1(-x)), x = clamp(exp(U(-6.908, -2.303)), min=0.0001)"
    )


def test_one_draw_read_two_ways_is_not_two_independent_draws() -> None:
    with InitTracer() as tracer:
        x = torch.randn(16, 16)
        symmetric = x + x.t()  # the diagonal is 2x, not a sum of two draws
        square = x * x  # one draw twice, aligned: chi-square with one degree
        twice = torch.randn(16, 16) + torch.randn(16, 16)  # two draws: N(0, 2) in effect
    sym, sq, two = (tracer.resolve(t) for t in (symmetric, square, twice))
    assert sym is not None and sym.distribution.family is Family.CUSTOM
    assert sq is not None and sq.label() == "derived: x·x, x = N(0, 1)"
    assert sq.distribution.mean == pytest.approx(1.0, abs=0.02)
    assert two is not None and two.label() == "derived: N(0, 1) + N(0, 1)"
    assert two.distribution.std == pytest.approx(math.sqrt(2.0), rel=0.01)


def test_two_sample_ks_tells_a_shift_from_a_redraw() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, generator=g, dtype=torch.float64).sort().values
    b = torch.randn(PROBE_SIZE, generator=g, dtype=torch.float64).sort().values
    assert ks_two_sample(a, b).p_value > 0.01
    assert ks_two_sample(a + 0.1, b).p_value < 1e-3


def test_two_sample_ks_equals_the_gap_over_both_samples_with_ties() -> None:
    # The statistic from a's values alone equals the largest gap over every value of both.
    g = torch.Generator().manual_seed(1)
    for trial in range(100):
        n, m = (int(k) for k in torch.randint(1, 60, (2,), generator=g))
        a = torch.randint(0, 8, (n,), generator=g).double().sort().values
        b = (torch.randint(0, 8, (m,), generator=g).double() + 0.5 * (trial % 2)).sort().values
        points = torch.cat((a, b))
        cdf_a = torch.searchsorted(a, points, right=True).double() / n
        gap = (cdf_a - torch.searchsorted(b, points, right=True).double() / m).abs().max()
        assert ks_two_sample(a, b).statistic == pytest.approx(float(gap), abs=1e-12)


def test_a_derived_default_survives_pickling() -> None:
    # parallel report workers receive defaults pickled
    bias = trace_model(ModelSpec(TIME_STEP)).defaults["bias"]
    again = pickle.loads(pickle.dumps(bias))
    assert again == bias and again.label() == bias.label()


# -- deterministic: the replay ----------------------------------------------------------------


def test_deterministic_values_are_compared_with_their_replay() -> None:
    traced = trace_model(ModelSpec("tests.fixtures.models:Deterministic"))
    a_log = traced.defaults["layers.0.A_log"]
    values = traced.model.layers[0].A_log.detach()
    assert (
        a_log.recipe is not None
        and a_log.recipe.expression() == "log(repeat(arange(1, 33, 1), [64, 1]))"
    )
    assert _identify(values, a_log) is True
    changed = values.clone()
    changed[3, 5] += 1e-3
    assert _identify(changed, a_log) is False
    table = traced.defaults["table"]  # torch.tensor([1., 2., 3.]): exact, however few
    assert _identify(traced.model.table.detach(), table) is True
    assert _identify(torch.tensor([1.0, 2.0, 4.0]), table) is False


def test_a_large_deterministic_tensor_is_compared_from_its_sample() -> None:
    # 64 x 256 values: more than the sample holds, so values and moments, not places
    with InitTracer() as tracer:
        a = nn.Parameter(torch.log(torch.arange(1, 65, dtype=torch.float32).repeat(256, 1)))
        far = nn.Parameter(torch.linspace(-1, 1, 20000).reshape(200, 100).t().contiguous())
    for p in (a, far):
        d = tracer.resolve(p)
        assert d is not None and d.distribution.family is Family.DETERMINISTIC
        assert _identify(p.detach(), d) is True
        assert _identify(p.detach() + 1e-3 * torch.randn_like(p), d) is False


def test_sinusoidal_positions_are_replayed() -> None:
    # transformers' Whisper: sinusoids(length, channels), copied into the position embedding
    length, channels = 64, 32
    with InitTracer() as tracer:
        weight = nn.Parameter(torch.empty(length, channels))
        increment = math.log(10000) / (channels // 2 - 1)
        inv_timescales = torch.exp(-increment * torch.arange(channels // 2))
        scaled = torch.arange(length).view(-1, 1) * inv_timescales.view(1, -1)
        with torch.no_grad():
            weight.copy_(torch.cat([scaled.sin(), scaled.cos()], dim=1))
        stacked = nn.Parameter(torch.stack([torch.linspace(0, 1, 40)] * 30))
    d = tracer.resolve(weight)
    assert d is not None and d.distribution.family is Family.DETERMINISTIC
    assert d.recipe is not None and d.recipe.expression().startswith("cat(sin(x), cos(x), [1])")
    assert _identify(weight.detach(), d) is True
    assert _identify(weight.detach().roll(1, dims=0), d) is False
    s = tracer.resolve(stacked)
    assert s is not None and s.recipe is not None and _identify(stacked.detach(), s) is True


def test_deterministic_values_without_a_recipe_are_not_judged() -> None:
    with InitTracer() as tracer:
        # cumsum with a dtype: outside the allow-list, still no draw
        p = nn.Parameter(torch.arange(2000.0).cumsum(0, dtype=torch.float64))
    d = tracer.resolve(p)
    assert d is not None and d.distribution.family is Family.DETERMINISTIC and d.recipe is None
    assert _identify(p.detach(), d) is None


# -- safety: replay runs only its own tables, within bounds ----------------------------------


def _arange(n: int) -> Step:
    return Step("arange", (0.0, float(n), 1.0), (n,))


@pytest.mark.parametrize(
    "steps",
    [
        (Step("system", ("rm -rf /",)),),  # type: ignore[arg-type]
        (Step("__import__", (0.0,)),),
        (Step("arange", (0.0, 1e12, 1.0), (10**12,)),),  # too many values
        (Step("eye", (), (10**6, 10**6), (10**6, 10**6)),),
        (_arange(16), Step("repeat", (Ref(0),), (), (10**6, 10**6))),
        (_arange(16), Step("gather", (Ref(0),), (4, 8), (1, 0, 8, 1, 0))),  # reads past 16
        (_arange(16), Step("gather", (Ref(0),), (4,), (1, 0, -1, 15))),  # negative stride
        (_arange(16), Step("gather", (Ref(0),), (2,), (1, 0))),  # malformed
        (_arange(16), Step("exp", (Ref(5),))),  # a reference forward
        (_arange(4), *(Step("exp", (Ref(i),)) for i in range(MAX_STEPS))),  # too long
        (Step("values", (1.0, 2.0), (3,)),),  # shape and values disagree
        (Step("uniform", (0.0, 1.0), (), token=(0,)),),  # a draw is no deterministic value
    ],
)
def test_replay_refuses_what_it_does_not_know(steps: tuple[Step, ...]) -> None:
    recipe = Recipe(steps)
    assert replay(recipe) is None
    if not any(s.op in ("uniform",) for s in steps):
        assert probe(recipe) is None


def test_probe_and_replay_sizes_are_bounded() -> None:
    drawn = Recipe((Step("uniform", (0.0, 1.0), token=(0,)), Step("exp", (Ref(0),))))
    got = probe(drawn)
    assert got is not None and got.numel() == PROBE_SIZE and got.dtype == torch.float64
    assert probe(drawn) is not None and torch.equal(probe(drawn), got)  # type: ignore[arg-type]
    assert replay(Recipe((_arange(MAX_REPLAY),))) is not None
    assert replay(Recipe((_arange(MAX_REPLAY + 1),))) is None


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("eval", ("1",), {}),
        ("div", (1.0, 2.0), {"rounding_mode": "floor"}),  # changes the op
        ("add", (1.0, 2.0), {"alpha": 2}),
        ("clamp", (1.0,), {"min": torch.zeros(2)}),  # tensor bounds
        ("repeat", (1.0, "2"), {}),
        ("exp", (1.0,), {"out": 3}),
    ],
)
def test_ops_outside_the_allow_list_are_not_parsed(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    assert parse_op(name, args, kwargs) is None
