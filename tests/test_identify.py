"""Which init the values follow: acceptance cases on real models and the edge cases."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from initscope.cli import app
from initscope.knowledge.identification import identify
from initscope.knowledge.tracing import InitTracer
from initscope.stats.tensor import running_stats


def report(runner: CliRunner, *args: str) -> dict[str, dict[str, Any]]:
    result = runner.invoke(app, ["report", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return {p["name"]: p for p in json.loads(result.stdout)["parameters"]}


def label_of(t: torch.Tensor) -> str:
    return identify(running_stats(t, seed=3), tuple(t.shape), None, t).fit.label


def test_default_model_matches_its_defaults(runner: CliRunner) -> None:
    params = report(runner, "initscope.examples:UNet")
    big = [p for p in params.values() if p["numel"] >= 1000]
    assert big
    for p in big:
        assert p["matches_default"] is True, p["name"]
        assert p["fit"]["label"] == "kaiming_uniform(a=sqrt(5))"
    # BatchNorm constants are exact, whatever their size
    assert params["down1.1.weight"]["fit"]["label"] == "ones"
    assert params["down1.1.bias"]["matches_default"] is True


def test_xavier_applied_to_conv_weights_is_recognized(runner: CliRunner, tmp_path: Path) -> None:
    from initscope.examples import UNet

    torch.manual_seed(0)
    model = UNet()
    changed = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 1000:
            nn.init.xavier_uniform_(m.weight)
            changed.append(f"{name}.weight")
    torch.save(model.state_dict(), tmp_path / "x.pt")
    params = report(runner, str(tmp_path / "x.pt"), "--model", "initscope.examples:UNet")
    for name in changed:
        p = params[name]
        assert p["matches_default"] is False, name
        assert p["fit"]["label"] == "xavier_uniform(gain=1)", (name, p["fit"])
        bound = math.sqrt(6 / (p["fan_in"] + p["fan_out"]))
        assert p["fit"]["params"]["high"] == pytest.approx(bound, rel=0.02)
    assert params["up1.weight"]["matches_default"] is True  # untouched ConvTranspose2d


def test_bert_and_gpt2_weights_are_normal_002() -> None:
    transformers = pytest.importorskip("transformers")
    from initscope.io.models import trace_model
    from initscope.io.targets import ModelSpec
    from initscope.measure.report import report_model

    bert = report_model(trace_model(ModelSpec("tests.fixtures.hf_models:tiny_bert")), target="b")
    for p in bert.parameters:
        if (
            p.module_type
            and p.module_type.endswith((".Linear", ".Embedding"))
            and p.param == "weight"
        ):
            assert p.fit is not None and p.fit.label == "normal(std=0.02)", (p.name, p.fit)
            assert p.matches_default is True
        if p.module_type and p.module_type.endswith(".LayerNorm"):
            assert p.fit is not None and p.fit.label in ("ones", "zeros")
    del transformers


def test_gpt2_scaled_residual_projections() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=4, n_head=2, vocab_size=300)
    with InitTracer():
        model = transformers.GPT2LMHeadModel(config)
    w = model.transformer.h[0].attn.c_proj.weight.detach()
    # GPT-2 scales residual projections by 1/sqrt(2 * n_layer): 0.02 / sqrt(8)
    assert label_of(w) == "normal(std=0.0071)"
    assert label_of(model.transformer.h[0].mlp.c_fc.weight.detach()) == "normal(std=0.02)"


@pytest.mark.parametrize(
    ("init", "expected"),
    [
        (lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), "kaiming_normal(relu, fan_in)"),
        (lambda w: nn.init.xavier_normal_(w), "xavier_normal(gain=1)"),
        (lambda w: nn.init.orthogonal_(w), "orthogonal"),
        (lambda w: nn.init.orthogonal_(w, gain=2.0), "orthogonal(gain=2)"),
        (lambda w: nn.init.zeros_(w), "zeros"),
        (lambda w: nn.init.constant_(w, 0.5), "constant(0.5)"),
        (lambda w: nn.init.normal_(w, std=0.02), "normal(std=0.02)"),
        (
            lambda w: nn.init.trunc_normal_(w, std=0.5, a=-1, b=1),
            "trunc_normal(std=0.5, a=-2σ, b=2σ)",
        ),
    ],
)
def test_named_schemes(init: Any, expected: str) -> None:
    torch.manual_seed(1)
    w = torch.empty(256, 128)
    init(w)
    assert label_of(w) == expected


def test_small_tensors_are_inconclusive_and_trained_like_ones_unknown() -> None:
    torch.manual_seed(2)
    assert label_of(torch.randn(10)) == "inconclusive"
    heavy = torch.distributions.StudentT(2.0).sample((200, 100)) * 0.02
    assert label_of(heavy) == "unknown"
    bimodal = torch.cat([torch.randn(5000) * 0.01 - 0.1, torch.randn(5000) * 0.01 + 0.1])
    assert label_of(bimodal) == "unknown"


def test_nan_tensor_is_unknown_and_differs_from_its_default() -> None:
    with InitTracer() as tracer:
        lin = nn.Linear(64, 64)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    d = tracer.resolve(lin.weight)
    found = identify(running_stats(lin.weight, seed=0), (64, 64), d, lin.weight)
    assert found.fit.label == "unknown" and found.matches_default is False


def test_table_shows_follows_and_summary(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", "initscope.examples:UNet"])
    assert result.exit_code == 0, result.output
    assert "follows" in result.stdout and "= default?" in result.stdout
    assert "29 parameters at their default, 0 differ, 3 inconclusive" in result.stdout


def test_single_row_or_column_matrices_are_not_orthogonal(runner: CliRunner) -> None:
    for shape in (["in_features=2048", "out_features=1"], ["in_features=1", "out_features=64"]):
        params = report(runner, "nn.Linear", "--arg", shape[0], "--arg", shape[1])
        w = params["weight"]
        assert w["fit"]["label"] != "orthogonal" and w["matches_default"] is not False, w["fit"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint_at_its_default(
    runner: CliRunner, tmp_path: Path, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    sd = {k: v.to(dtype) for k, v in nn.Linear(768, 1024).state_dict().items()}
    torch.save(sd, tmp_path / "half.pt")
    args = ["--model", "nn.Linear", "--arg", "in_features=768", "--arg", "out_features=1024"]
    params = report(runner, str(tmp_path / "half.pt"), *args)
    assert params["weight"]["matches_default"] is True, params["weight"]["fit"]


def test_degenerate_sizes() -> None:
    one = torch.tensor([0.3])
    assert identify(running_stats(one, seed=0), (1,), None, one).fit.label == "inconclusive"
    with InitTracer() as tracer:
        ln = nn.LayerNorm(16)
    with torch.no_grad():
        ln.weight[3] = 1.5  # a small tensor whose constant default is certainly gone
    found = identify(running_stats(ln.weight, seed=0), (16,), tracer.resolve(ln.weight), ln.weight)
    assert found.matches_default is False
    tiny = torch.rand(50, 50, dtype=torch.float64) * 1e-310  # subnormal: round stds are 0
    label = identify(running_stats(tiny, seed=0), (50, 50), None, tiny).fit.label
    assert label.startswith("uniform(")


def test_scaled_default_is_labelled_by_its_numbers() -> None:
    with InitTracer() as tracer:
        w = torch.empty(128, 64)
        nn.init.xavier_uniform_(w)
        w.mul_(0.1)
    d = tracer.resolve(w)
    found = identify(running_stats(w, seed=0), (128, 64), d, w)
    bound = 0.1 * math.sqrt(6 / 192)
    assert found.matches_default is True
    assert found.fit.label == f"uniform({-bound:.4g}, {bound:.4g})"


def test_meta_keeps_a_models_own_special_cases() -> None:
    from initscope.io.models import trace_model
    from initscope.io.targets import ModelSpec

    ref = ModelSpec("tests.fixtures.models:NanoGPTLike")
    cpu, meta = trace_model(ref), trace_model(ref, meta=True)
    std = 0.02 / math.sqrt(8)
    for tm in (cpu, meta):
        assert tm.defaults["c_proj.weight"].distribution.scale == pytest.approx(std)


def test_bad_nested_spec_is_an_input_error(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        [
            "report",
            "nn.TransformerEncoder",
            "--arg",
            "encoder_layer={model: nn.TransformerEncoderLayer, args: 5}",
            "--arg",
            "num_layers=1",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "`args` must be a list" in result.stderr


# -- defaults that are patterns: eye_, dirac_, sparse_ ---------------------------------------


def _traced(make: Any) -> tuple[torch.Tensor, Any]:
    """A tensor made by ``make`` under the tracer, and its traced default."""
    with InitTracer() as tracer:
        t = make()
    return t, tracer.resolve(t)


def _judge(t: torch.Tensor, default: Any, via_values: bool) -> Any:
    # with the values (a tensor loaded whole), and from statistics alone (the fused reader)
    return identify(running_stats(t, seed=1), tuple(t.shape), default, t if via_values else None)


@pytest.mark.parametrize("via_values", [True, False])
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.init.eye_(torch.empty(16, 24)),
        lambda: nn.init.eye_(torch.empty(40, 12)),
        lambda: nn.init.dirac_(torch.empty(8, 8, 3, 3)),
        lambda: nn.init.dirac_(torch.empty(12, 4, 3), groups=3),
        lambda: nn.init.sparse_(torch.empty(64, 48), sparsity=0.5, std=0.02),
        lambda: nn.init.sparse_(torch.empty(200, 30), sparsity=0.1),
        lambda: nn.init.sparse_(torch.empty(33, 100), sparsity=0.9, std=1.0),
    ],
)
def test_pattern_defaults_are_identified_as_themselves(make: Any, via_values: bool) -> None:
    torch.manual_seed(0)
    t, default = _traced(make)
    found = _judge(t, default, via_values)
    assert found.matches_default is True, found.fit.label
    assert found.fit.family is default.distribution.family


@pytest.mark.parametrize(
    ("make", "other"),
    [
        # eye's default against an orthogonal matrix (it is one, but not the identity)
        (lambda: nn.init.eye_(torch.empty(16, 16)), lambda t: nn.init.orthogonal_(t)),
        (lambda: nn.init.dirac_(torch.empty(8, 8, 3, 3)), lambda t: t.normal_(0, 0.1)),
        # sparse's default against dense draws, and against the wrong number of zeros
        (lambda: nn.init.sparse_(torch.empty(64, 48), 0.5, 0.02), lambda t: t.normal_(0, 0.02)),
        (
            lambda: nn.init.sparse_(torch.empty(64, 48), 0.5, 0.02),
            lambda t: nn.init.sparse_(t, 0.25, 0.02),
        ),
        (
            lambda: nn.init.sparse_(torch.empty(64, 48), 0.5, 0.02),
            lambda t: nn.init.sparse_(t, 0.5, 0.2),  # the right zeros, ten times the spread
        ),
    ],
)
def test_other_values_do_not_pass_for_a_pattern_default(make: Any, other: Any) -> None:
    torch.manual_seed(0)
    t, default = _traced(make)
    with torch.no_grad():
        other(t)
    for via_values in (True, False):
        assert _judge(t, default, via_values).matches_default is False


@pytest.mark.parametrize(("std", "cut"), [(0.02, 2.0), (0.02, 1.0), (1.0, 3.0), (0.5, 100.0)])
def test_a_trunc_normal_fit_reports_its_own_parameters(std: float, cut: float) -> None:
    # The label names the untruncated normal's std and the cut points; the observed spread
    # of trunc_normal_(std=0.02, a=-2σ, b=2σ) is 0.0176, which is not what the label says.
    torch.manual_seed(0)
    t, default = _traced(
        lambda: nn.init.trunc_normal_(torch.empty(300, 300), std=std, a=-cut * std, b=cut * std)
    )
    found = _judge(t, default, via_values=True)
    assert found.matches_default is True
    params = found.fit.params
    assert params["std"] == pytest.approx(std, rel=0.02)
    assert (params["a"], params["b"]) == pytest.approx((-cut * std, cut * std))
    if cut <= 2:
        assert float(t.std()) < 0.9 * std  # the observed spread is not the parameter


def test_the_kurtosis_test_of_a_normal_holds_its_level_at_a_few_hundred_values() -> None:
    # The large-n z of b2 rejected fresh N(0, 1) draws of 300 values 4x as often as its
    # nominal 1e-3; Johnson's S_U with b2's exact four moments holds the level (as
    # tests/test_false_alarms.py checks for uniform draws too).
    from initscope.knowledge import identification as ident
    from initscope.knowledge.distributions import Distribution

    torch.manual_seed(0)
    trials, n, alpha = 20000, 300, 0.01
    draws = torch.randn(trials, n, dtype=torch.float64)
    normal = Distribution.normal(0.0, 1.0)
    rejected = 0
    for row in draws:
        p = ident._p_kurtosis(normal, ident._Sample(row))
        rejected += p is not None and p < alpha
    # nominal 200 (sd 14); the large-n z rejects 302 of these, Anscombe-Glynn 251, S_U 183
    assert 140 <= rejected <= 280, rejected
