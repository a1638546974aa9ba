"""`initscope explain`: the call, the numbers, the formula in constructor terms, the source."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from initscope.cli import app
from initscope.explain import explain


def test_conv_transpose_explained_from_constructor_arguments(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        [
            "explain",
            "nn.ConvTranspose2d",
            "--arg",
            "in_channels=8",
            "--arg",
            "out_channels=4",
            "--arg",
            "kernel_size=3",
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("torch.nn.ConvTranspose2d(in_channels=8, out_channels=4, kernel_size=3)")
    assert "representative" not in out
    # torch takes ConvTranspose's fan_in from weight.size(1) = out_channels
    assert "fan_in = size(1) × receptive field = 4 (out_channels) × 3·3 = 36" in out
    assert "U(±0.1667)" in out  # 1/sqrt(36)
    assert "bound = 0.1667 = 1/√fan_in(weight) = 1/√36" in out
    assert "torch/nn/modules/conv.py" in out
    assert "torch.nn.init.kaiming_uniform_" in out


def test_without_args_uses_representative_values_and_says_so(runner: CliRunner) -> None:
    result = runner.invoke(app, ["explain", "nn.Linear"])
    assert result.exit_code == 0, result.output
    assert "representative arguments" in result.stdout
    assert "with a = √5 this is bound = 1/√fan_in" in result.stdout


def test_lstm_bound_is_named_after_hidden_size() -> None:
    e = explain("nn.LSTM", {"input_size": 10, "hidden_size": 64})
    p = {x.name: x for x in e.parameters}
    assert p["weight_ih_l0"].default.distribution.high == pytest.approx(1 / 8)
    assert any("1/√hidden_size = 1/√64" in line for line in p["weight_ih_l0"].formula)


def test_xavier_formula_for_multihead_attention() -> None:
    e = explain("nn.MultiheadAttention", {"embed_dim": 16, "num_heads": 4})
    p = {x.name: x for x in e.parameters}
    formula = " ".join(p["in_proj_weight"].formula)
    assert "gain·√(6/(fan_in+fan_out)) = 1·√(6/64)" in formula
    assert p["in_proj_weight"].default.distribution.high == pytest.approx(math.sqrt(6 / 64))


def test_embedding_partial_padding_row_is_explained(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        [
            "explain",
            "nn.Embedding",
            "--arg",
            "num_embeddings=10",
            "--arg",
            "embedding_dim=3",
            "--arg",
            "padding_idx=0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "N(0, 1)" in result.stdout
    assert "partial  fill_(value=0)" in result.stdout


def test_json_format(runner: CliRunner) -> None:
    result = runner.invoke(app, ["explain", "nn.Conv2d", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "initscope.explain/1"
    assert data["representative"] is True
    w = data["parameters"][0]
    assert w["name"] == "weight" and w["default"]["family"] == "uniform"
    assert w["fan_in"] == 6 * 9
    assert w["default"]["high"] == pytest.approx(1 / math.sqrt(54))
    assert w["torch_function"].startswith("torch.nn.init.kaiming_uniform_")


def test_missing_argument_without_representative_value(runner: CliRunner) -> None:
    result = runner.invoke(app, ["explain", "tests.fixtures.models:Broken"])
    assert result.exit_code == 2, result.output
    assert "needs width" in result.stderr and "--arg width=" in result.stderr
