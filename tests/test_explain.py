"""`initscope explain`: the call, the numbers, the formula in constructor terms, the source."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from initscope.cli import app
from initscope.knowledge.explanation import REPRESENTATIVE_ARGS, Explanation, explain

# Layers `initscope explain nn.X` must explain with no --arg at all.
NO_ARG_LAYERS = [
    "Linear",
    "Bilinear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Embedding",
    "EmbeddingBag",
    "LayerNorm",
    "GroupNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "MultiheadAttention",
    "Transformer",
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "PReLU",
    "RMSNorm",
    "AdaptiveLogSoftmaxWithLoss",
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
]


def _int_arguments(e: Explanation) -> dict[str, int]:
    return {k: v for k, v in e.arguments.items() if isinstance(v, int) and not isinstance(v, bool)}


def _fan_line(e: Explanation, param: str, label: str) -> str:
    p = {x.name: x for x in e.parameters}[param]
    return next(line for line in p.formula if line.startswith(f"{label} = "))


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


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
@pytest.mark.parametrize("layer", NO_ARG_LAYERS)
def test_common_layers_explained_without_args(layer: str) -> None:
    e = explain(f"nn.{layer}")
    assert e.layer == f"torch.nn.{layer}"
    assert e.representative is bool(e.arguments)
    for p in e.parameters:
        # a representative construction leaves no empty (untraceable) tensor behind
        assert p.default.call.name not in ("untraced", "unknown"), (p.name, p.shape)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
@pytest.mark.parametrize("layer", NO_ARG_LAYERS)
def test_representative_ints_of_one_layer_are_distinct(layer: str) -> None:
    # without --arg every argument is a representative one
    ints = _int_arguments(explain(f"nn.{layer}"))
    assert len(set(ints.values())) == len(ints), ints
    e = explain(f"nn.{layer}")
    values = set(ints.values())
    for p in e.parameters:
        sizes = list(p.shape)
        if "kernel_size" in ints and len(p.shape) > 2:
            kernel = math.prod(p.shape[2:])
            assert kernel not in values - {ints["kernel_size"]}, (p.name, p.shape, ints)
        # a size k·x (LSTM's 4·hidden_size rows) must not read as a product of two arguments
        for size in sizes:
            for x in values:
                if size != x and size % x == 0:
                    assert size // x not in values, (p.name, p.shape, ints)
        # each dimension points back to one argument
        assert not any(" or " in line for line in p.formula), (p.name, p.formula)


@pytest.mark.parametrize(
    ("layer", "gates"),
    [("RNN", 1), ("LSTM", 4), ("GRU", 3), ("RNNCell", 1), ("LSTMCell", 4), ("GRUCell", 3)],
)
def test_recurrent_layers_without_args(layer: str, gates: int) -> None:
    # nn.LSTM's own signature is (*args, **kwargs); RNNBase.__init__ says what is required,
    # and `mode` is LSTM's to pass, not ours.
    e = explain(f"nn.{layer}")
    assert e.filled == ("input_size", "hidden_size")
    hidden = e.arguments["hidden_size"]
    assert hidden not in (3, 4)  # not a gate count: weight_ih is [gates·hidden, input]
    p = {x.name.removesuffix("_l0"): x for x in e.parameters}
    assert p["weight_ih"].shape == (gates * hidden, e.arguments["input_size"])
    assert any(f"1/√hidden_size = 1/√{hidden}" in line for line in p["weight_ih"].formula)


def test_lstm_without_args_on_the_command_line(runner: CliRunner) -> None:
    result = runner.invoke(app, ["explain", "nn.LSTM"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("torch.nn.LSTM(input_size=6, hidden_size=5)")


class StackBase(nn.Module):
    def __init__(self, kind: str, depth: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.kind = kind
        self.layers = nn.ModuleList(nn.Linear(in_features, out_features) for _ in range(depth))


class KindStack(StackBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("kind", *args, **kwargs)


class TwoDeepStack(KindStack):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(2, *args, **kwargs)


def test_pass_through_inits_supply_their_own_arguments() -> None:
    # TwoDeepStack() calls StackBase("kind", 2, ...): kind and depth are not the caller's
    e = explain("tests.test_explain:TwoDeepStack")
    assert e.filled == ("in_features", "out_features")
    assert [p.name for p in e.parameters] == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.weight",
        "layers.1.bias",
    ]


def test_filled_names_only_the_arguments_not_given() -> None:
    partial = explain("nn.Linear", {"in_features": 5})
    assert partial.filled == ("out_features",)
    assert partial.representative is True
    assert dict(partial.arguments) == {"in_features": 5, "out_features": 4}
    full = explain("nn.Linear", {"in_features": 5, "out_features": 3})
    assert full.filled == () and full.representative is False
    none = explain("nn.Linear")
    assert none.filled == ("in_features", "out_features") and none.representative is True
    assert all(none.arguments[k] == REPRESENTATIVE_ARGS[k] for k in none.filled)


def test_grouped_conv_names_the_structural_argument_first() -> None:
    # weight is (out_channels, in_channels/groups, 3, 3) = (4, 4, 3, 3)
    e = explain("nn.Conv2d", {"in_channels": 8, "out_channels": 4, "kernel_size": 3, "groups": 2})
    assert _fan_line(e, "weight", "fan_in") == (
        "fan_in = size(1) × receptive field = 4 (in_channels/groups or out_channels) × 3·3 = 36"
    )
    assert _fan_line(e, "weight", "fan_out") == (
        "fan_out = size(0) × receptive field = 4 (out_channels or in_channels/groups) × 3·3 = 36"
    )


def test_grouped_conv_transpose_names_the_structural_argument_first() -> None:
    # weight is (in_channels, out_channels/groups, 3, 3) = (4, 4, 3, 3)
    e = explain(
        "nn.ConvTranspose2d",
        {"in_channels": 4, "out_channels": 8, "kernel_size": 3, "groups": 2},
    )
    assert _fan_line(e, "weight", "fan_in") == (
        "fan_in = size(1) × receptive field = 4 (out_channels/groups or in_channels) × 3·3 = 36"
    )
    assert _fan_line(e, "weight", "fan_out") == (
        "fan_out = size(0) × receptive field = 4 (in_channels or out_channels/groups) × 3·3 = 36"
    )


class KaimingThird(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(4, 6))
        nn.init.kaiming_uniform_(self.weight, a=1 / 3)


def test_kaiming_slope_formatted_like_the_call() -> None:
    e = explain("tests.test_explain:KaimingThird")
    (p,) = e.parameters
    assert p.default.call.signature().startswith("kaiming_uniform_(a=0.333333,")
    assert "(leaky_relu, a=0.333333)" in p.formula[0]


def test_constant_parameters_have_no_spread_line() -> None:
    e = explain("nn.LayerNorm", {"normalized_shape": 3})
    for p in e.parameters:
        assert not any(line.startswith("mean ") for line in p.formula), p.formula


@pytest.mark.parametrize(
    ("layer", "given", "divided"),
    [
        ("nn.Conv2d", {"groups": 4}, ("in_channels", "out_channels")),
        ("nn.Conv1d", {"groups": 3}, ("in_channels", "out_channels")),
        ("nn.ConvTranspose2d", {"groups": 4}, ("in_channels", "out_channels")),
        ("nn.GroupNorm", {"num_groups": 4}, ("num_channels",)),
        ("nn.MultiheadAttention", {"num_heads": 3}, ("embed_dim",)),
    ],
)
def test_filled_arguments_respect_a_given_divisor(
    layer: str, given: dict[str, int], divided: tuple[str, ...]
) -> None:
    e = explain(layer, given)
    ((_, d),) = given.items()
    for arg in divided:
        assert e.arguments[arg] % d == 0, (arg, e.arguments[arg])
    # the numbers still point back to one argument each
    filled = [e.arguments[a] for a in e.filled]
    assert len(set(filled)) == len(filled)


def test_explain_conv_with_groups_from_the_cli(runner: CliRunner) -> None:
    result = runner.invoke(app, ["explain", "nn.Conv2d", "--arg", "groups=4"])
    assert result.exit_code == 0, result.output
    assert "in_channels/groups" in result.stdout
