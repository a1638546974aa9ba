"""The traced default of each layer type, checked two independent ways: against the numbers
torch's formula gives (written out here by hand), and by a KS test on the real tensor."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from initscope.io.models import trace_model
from initscope.io.targets import ModelSpec
from initscope.knowledge.distributions import Distribution, Family
from initscope.knowledge.goodness import ks_test
from initscope.knowledge.tracing import DefaultInit, InitTracer


def traced(ref: str, **kwargs: Any) -> tuple[nn.Module, dict[str, DefaultInit]]:
    tm = trace_model(ModelSpec(ref, (), kwargs), seed=0)
    return tm.model, dict(tm.defaults)


def assert_uniform(d: DefaultInit, bound: float) -> None:
    assert d.distribution.family is Family.UNIFORM, d
    assert d.distribution.low == pytest.approx(-bound, rel=1e-9)
    assert d.distribution.high == pytest.approx(bound, rel=1e-9)


def assert_follows(t: torch.Tensor, dist: Distribution) -> None:
    """The real CPU-initialized values pass a KS test against the traced distribution."""
    result = ks_test(t.detach().reshape(-1), dist)
    assert result.p_value > 1e-3, (dist, result)


def test_linear_is_kaiming_uniform_sqrt5_for_weight_and_bias() -> None:
    model, d = traced("torch.nn:Linear", in_features=5, out_features=100)
    bound = 1 / math.sqrt(5)
    assert d["weight"].call.name == "kaiming_uniform_"
    assert d["weight"].call.args["a"] == pytest.approx(math.sqrt(5))
    assert_uniform(d["weight"], bound)
    assert d["bias"].call.name == "uniform_"
    assert_uniform(d["bias"], bound)
    assert_follows(model.weight, d["weight"].distribution)
    assert d["weight"].call.source is not None and "linear.py" in d["weight"].call.source


@pytest.mark.parametrize(
    ("ref", "kwargs", "fan_in"),
    [
        ("nn.Conv1d", {"in_channels": 6, "out_channels": 32, "kernel_size": 5}, 6 * 5),
        ("nn.Conv2d", {"in_channels": 6, "out_channels": 32, "kernel_size": 3}, 6 * 9),
        ("nn.Conv3d", {"in_channels": 2, "out_channels": 16, "kernel_size": 3}, 2 * 27),
        # grouped: each output channel sees in_channels / groups inputs
        (
            "nn.Conv2d",
            {"in_channels": 8, "out_channels": 32, "kernel_size": 3, "groups": 4},
            2 * 9,
        ),
        # ConvTranspose: weight is (in, out/groups, k, k) and torch takes fan_in from size(1)
        ("nn.ConvTranspose2d", {"in_channels": 8, "out_channels": 32, "kernel_size": 3}, 32 * 9),
        (
            "nn.ConvTranspose1d",
            {"in_channels": 8, "out_channels": 16, "kernel_size": 4, "groups": 2},
            8 * 4,
        ),
    ],
)
def test_conv_defaults(ref: str, kwargs: dict[str, Any], fan_in: int) -> None:
    model, d = traced(ref, **kwargs)
    bound = 1 / math.sqrt(fan_in)
    assert_uniform(d["weight"], bound)
    assert_uniform(d["bias"], bound)
    assert_follows(model.weight, d["weight"].distribution)


def test_conv_without_bias_has_only_weight() -> None:
    _, d = traced("nn.Conv2d", in_channels=3, out_channels=8, kernel_size=3, bias=False)
    assert set(d) == {"weight"}


def test_bilinear_bound_uses_in1_features() -> None:
    model, d = traced("nn.Bilinear", in1_features=10, in2_features=3, out_features=40)
    assert_uniform(d["weight"], 1 / math.sqrt(10))
    assert_uniform(d["bias"], 1 / math.sqrt(10))
    assert_follows(model.weight, d["weight"].distribution)


def test_multihead_attention_fused_in_proj_is_xavier_out_proj_is_linear() -> None:
    e = 32
    model, d = traced("nn.MultiheadAttention", embed_dim=e, num_heads=4)
    assert d["in_proj_weight"].call.name == "xavier_uniform_"
    # in_proj_weight is (3e, e): fan_in + fan_out = 4e
    assert_uniform(d["in_proj_weight"], math.sqrt(6 / (4 * e)))
    assert d["in_proj_bias"].distribution == Distribution.constant(0.0)
    assert d["out_proj.weight"].call.name == "kaiming_uniform_"
    assert_uniform(d["out_proj.weight"], 1 / math.sqrt(e))
    # out_proj.bias: Linear's uniform, then overwritten by MultiheadAttention with zeros
    assert d["out_proj.bias"].distribution == Distribution.constant(0.0)
    assert_follows(model.in_proj_weight, d["in_proj_weight"].distribution)


def test_transformer_overrides_every_matrix_with_xavier() -> None:
    model, d = traced(
        "nn.Transformer",
        d_model=16,
        nhead=2,
        num_encoder_layers=2,
        num_decoder_layers=1,
        dim_feedforward=32,
        batch_first=True,
    )
    params = dict(model.named_parameters())
    matrices = [n for n, p in params.items() if p.dim() > 1]
    assert matrices
    for name in matrices:
        fan_out, fan_in = params[name].shape
        assert d[name].call.name == "xavier_uniform_", name
        assert_uniform(d[name], math.sqrt(6 / (fan_in + fan_out)))
    # vectors keep their layer's own default
    assert d["encoder.layers.1.norm1.weight"].distribution == Distribution.constant(1.0)
    assert_uniform(d["encoder.layers.0.linear1.bias"], 1 / math.sqrt(16))


@pytest.mark.parametrize("ref", ["nn.RNN", "nn.LSTM", "nn.GRU"])
def test_recurrent_layers_use_one_over_sqrt_hidden_everywhere(ref: str) -> None:
    model, d = traced(ref, input_size=10, hidden_size=64, num_layers=2, bidirectional=True)
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == (2 * 2 * 4)
    for name in names:
        assert_uniform(d[name], 1 / math.sqrt(64))
    assert_follows(model.weight_hh_l1_reverse, d["weight_hh_l1_reverse"].distribution)


def test_embedding_is_standard_normal_and_padding_row_is_a_partial_write() -> None:
    model, d = traced("nn.Embedding", num_embeddings=500, embedding_dim=16, padding_idx=3)
    w = d["weight"]
    assert w.distribution == Distribution.normal(0.0, 1.0)
    assert [c.name for c in w.partial] == ["fill_"]
    assert torch.all(model.weight[3] == 0)
    rows = torch.cat([model.weight[:3], model.weight[4:]])
    assert_follows(rows, w.distribution)


def test_embedding_without_padding_has_no_partial_write() -> None:
    _, d = traced("nn.Embedding", num_embeddings=10, embedding_dim=4)
    assert d["weight"].partial == ()


@pytest.mark.parametrize(
    ("ref", "kwargs"),
    [
        ("nn.LayerNorm", {"normalized_shape": 8}),
        ("nn.BatchNorm2d", {"num_features": 8}),
        ("nn.GroupNorm", {"num_groups": 2, "num_channels": 8}),
        ("nn.InstanceNorm1d", {"num_features": 8, "affine": True}),
    ],
)
def test_norms_are_ones_and_zeros(ref: str, kwargs: dict[str, Any]) -> None:
    _, d = traced(ref, **kwargs)
    assert d["weight"].distribution == Distribution.constant(1.0)
    assert d["bias"].distribution == Distribution.constant(0.0)


def test_batchnorm_buffers_are_traced_too() -> None:
    _, d = traced("nn.BatchNorm1d", num_features=4)
    assert d["running_mean"].distribution == Distribution.constant(0.0)
    assert d["running_var"].distribution == Distribution.constant(1.0)


def test_lazy_modules_are_materialized_with_the_example_input() -> None:
    spec = ModelSpec("tests.fixtures.models:LazyNet", example_input_shape=(2, 3, 8, 8))
    tm = trace_model(spec)
    # LazyConv2d(8, 3) on 3 channels: fan_in = 3*3*3; LazyLinear on 8*6*6 features
    assert_uniform(tm.defaults["conv.weight"], 1 / math.sqrt(27))
    assert_uniform(tm.defaults["fc.weight"], 1 / math.sqrt(8 * 6 * 6))
    assert tuple(tm.model.fc.weight.shape) == (4, 288)


def test_transformer_encoder_copies_carry_the_original_layers_default() -> None:
    """Every layer is a deepcopy: new tensors no init call touched, same default."""
    tm = trace_model(ModelSpec("initscope.examples:TinyTransformer", (), {"num_layers": 3}))
    for i in range(3):
        d = tm.defaults[f"encoder.layers.{i}.self_attn.in_proj_weight"]
        assert d.call.name == "xavier_uniform_"
        assert "deepcopy" in d.via
        assert_uniform(d, math.sqrt(6 / (96 + 32)))
        lin = tm.defaults[f"encoder.layers.{i}.linear1.weight"]
        assert_uniform(lin, 1 / math.sqrt(32))


def test_custom_user_init_idioms() -> None:
    tm = trace_model(ModelSpec("tests.fixtures.models:CustomInit", (), {"d": 16, "n_layer": 4}))
    d = tm.defaults
    assert d["cls_token"].distribution == Distribution.constant(0.0)
    assert d["scale"].distribution == Distribution.constant(1.0)
    # torch.randn(8, d) * 0.02 → N(0, 0.02)
    assert d["pos"].distribution == Distribution.normal(0.0, 0.02)
    assert_follows(tm.model.pos, d["pos"].distribution)
    # trunc_normal_(std=0.02) then .data.mul_(1/sqrt(2*n_layer)): the history is kept
    proj = d["proj.weight"]
    assert proj.call.name == "trunc_normal_"
    assert [c.name for c in proj.then] == ["mul_"]
    scale = 1 / math.sqrt(8)
    assert proj.distribution == Distribution.trunc_normal(0.0, 0.02 * scale, -2 * scale, 2 * scale)
    assert_follows(tm.model.proj.weight, proj.distribution)
    assert d["proj.bias"].distribution == Distribution.constant(0.5)
    ortho = d["ortho.weight"]
    assert ortho.call.name == "orthogonal_"
    assert ortho.distribution.family is Family.ORTHOGONAL
    assert ortho.distribution.gain == 2.0
    w = tm.model.ortho.weight.detach()
    assert torch.allclose(w @ w.T, 4.0 * torch.eye(16), atol=1e-4)
    # torch.empty that nothing ever wrote stays visibly uninitialized
    assert d["empty"].call.name == "empty"


@pytest.mark.parametrize(
    ("init", "kwargs", "expected"),
    [
        ("xavier_normal_", {"gain": 2.0}, Distribution.normal(0.0, 2.0 * math.sqrt(2 / 110))),
        ("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "relu"}, None),
        ("uniform_", {"a": -0.3, "b": 0.1}, Distribution.uniform(-0.3, 0.1)),
        ("constant_", {"val": 0.25}, Distribution.constant(0.25)),
        ("eye_", {}, None),
        ("normal_", {"mean": 1.0, "std": 0.5}, Distribution.normal(1.0, 0.5)),
    ],
)
def test_every_init_function_is_recognized(
    init: str, kwargs: dict[str, Any], expected: Distribution | None
) -> None:
    w = torch.empty(100, 10)
    with InitTracer() as tracer:
        getattr(nn.init, init)(w, **kwargs)
    d = tracer.resolve(w)
    assert d is not None and d.call.name == init
    for k, v in kwargs.items():
        assert d.call.args[k] == v
    if expected is not None:
        assert d.distribution == expected
    if init == "kaiming_normal_":
        assert d.distribution == Distribution.normal(0.0, math.sqrt(2) / math.sqrt(100))
    if init == "eye_":
        assert d.distribution.family is Family.EYE
    if d.distribution.is_continuous:
        assert_follows(w, d.distribution)


def test_views_and_data_alias_the_parameter() -> None:
    p = nn.Parameter(torch.empty(4, 6))
    with InitTracer() as tracer:
        p.data.t().normal_(0, 0.1)
    d = tracer.resolve(p)
    assert d is not None and d.distribution == Distribution.normal(0.0, 0.1)


def test_copy_from_an_initialized_tensor_carries_its_default() -> None:
    dst = torch.empty(3, 5)
    with InitTracer() as tracer:
        src = torch.empty(3, 5)
        nn.init.xavier_uniform_(src)
        dst.copy_(src)
    d = tracer.resolve(dst)
    assert d is not None and d.call.name == "xavier_uniform_" and d.via == ("copy_",)


def test_untouched_tensor_resolves_to_none() -> None:
    with InitTracer() as tracer:
        pass
    assert tracer.resolve(torch.zeros(2)) is None


def test_meta_device_construction_is_traced() -> None:
    with torch.device("meta"), InitTracer() as tracer:
        lin = nn.Linear(8, 4)
    d = tracer.resolve(lin.weight)
    assert d is not None
    assert_uniform(d, 1 / math.sqrt(8))


def test_indexed_assignment_is_a_partial_write() -> None:
    with InitTracer() as tracer:
        emb = nn.Embedding(10, 4)
        emb.weight.data[0] = 0  # basic indexing: a view of one row
        emb.weight.data[[2, 5]] = 1.0  # advanced indexing: some rows
    d = tracer.resolve(emb.weight)
    assert d is not None
    assert d.distribution == Distribution.normal(0.0, 1.0)
    assert [c.name for c in d.partial] == ["__setitem__", "__setitem__"]


def test_in_place_arithmetic_keeps_its_operands() -> None:
    with InitTracer() as tracer:
        lin = nn.Linear(4, 4)
        lin.weight.data.mul_(0.5)
        lin.bias.data.clamp_(min=-0.1, max=0.1)
    w = tracer.resolve(lin.weight)
    assert w is not None and [c.signature() for c in w.then] == ["mul_(other=0.5)"]
    assert w.distribution.high == pytest.approx(0.25) and w.distribution.low == pytest.approx(-0.25)
    b = tracer.resolve(lin.bias)
    assert b is not None and b.then[0].args == {"min": -0.1, "max": 0.1}
    # A clamp inside U(±0.5) leaves atoms at ±0.1: no family, a derived default.
    assert b.distribution.family is Family.DERIVED
    assert b.label() == "derived: clamp(U(±0.5), min=-0.1, max=0.1)"


def test_an_op_with_an_untraced_operand_is_custom() -> None:
    with InitTracer() as tracer:
        lin = nn.Linear(4, 4)
        lin.bias.data.add_(torch.randperm(4).float())  # randperm: a draw nothing models
    b = tracer.resolve(lin.bias)
    assert b is not None and [c.name for c in b.then] == ["add_"]
    assert b.distribution.family is Family.CUSTOM and b.recipe is None


def test_every_init_function_is_traced_on_meta_as_on_cpu() -> None:
    # torch returns early from trunc_normal_, orthogonal_, sparse_ and dirac_ on meta; the
    # call itself is recorded, not the randn/empty before it.
    ref = "tests.fixtures.models:InitAfterInit"
    cpu = trace_model(ModelSpec(ref))
    meta = trace_model(ModelSpec(ref), meta=True)
    assert next(meta.model.parameters()).device.type == "meta"
    assert _labels(meta) == _labels(cpu)
    assert {n: d.call.name for n, d in meta.defaults.items()} == {
        "cls_token": "trunc_normal_",
        "rotation": "orthogonal_",
        "sparse": "sparse_",
        "identity": "dirac_",
        "eye": "eye_",
        "xavier": "xavier_normal_",
    }
    assert meta.defaults["cls_token"].distribution.label() == "TN(0, 0.02; [-2, 2])"
    assert dict(meta.defaults["rotation"].call.args)["gain"] == 2.0


def _labels(tm: object) -> dict[str, tuple[str, str]]:
    defaults = tm.defaults  # type: ignore[attr-defined]
    return {n: (d.call.name, d.distribution.label()) for n, d in defaults.items()}


def test_values_computed_without_a_draw_are_deterministic_not_untraced() -> None:
    ref = "tests.fixtures.models:Deterministic"
    for meta in (False, True):
        traced = trace_model(ModelSpec(ref), meta=meta)
        d = traced.defaults
        a_log = d["layers.0.A_log"]
        assert a_log.distribution.family.value == "deterministic"
        assert [c.name for c in (a_log.call, *a_log.then)] == ["arange", "repeat", "log"]
        assert d["table"].distribution.family.value == "deterministic"
        assert d["gates"].distribution.label() == "const 1"  # exp of zeros
        assert d["logit_scale"].distribution.label() == "const 2.659"
        assert d["layers.1.D"].distribution.label() == "const 1"
        assert all(x.is_known for x in d.values())


def test_an_expanded_view_is_covered_by_what_wrote_its_source() -> None:
    # Mamba: A = arange(1, n + 1)[None, :].expand(d, -1).contiguous(); A_log = log(A)
    with InitTracer() as tracer:
        a = torch.arange(1, 9, dtype=torch.float32)[None, :].expand(4, -1).contiguous()
        a_log = torch.log(a)
    found = tracer.resolve(a_log)
    assert found is not None
    assert [c.name for c in (found.call, *found.then)] == ["arange", "log"]
    assert found.distribution.family.value == "deterministic"


def test_values_computed_from_several_deterministic_tensors_are_deterministic() -> None:
    # Whisper's sinusoids (transformers/models/whisper/modeling_whisper.py): an arange times
    # exp of another, its sin and cos joined by cat; then copied into the position table.
    with InitTracer() as tracer:
        inv = torch.exp(-0.5 * torch.arange(4))
        times = torch.arange(8).view(-1, 1) * inv.view(1, -1)
        table = torch.empty(8, 8)
        table.copy_(torch.cat([times.sin(), times.cos()], dim=1))
        ones = torch.cat([torch.ones(2), torch.ones(3)])
        drawn = torch.cat([torch.ones(2), torch.randn(3)])
        scaled = torch.arange(4) * torch.randn(4)
    found = tracer.resolve(table)
    assert found is not None and found.distribution.family.value == "deterministic"
    # the chain of the first operand: arange(8) times (exp(...)), its sin, joined
    assert [c.name for c in (found.call, *found.then)] == ["arange", "mul", "sin", "cat"]
    assert found.via == ("copy_",)
    one = tracer.resolve(ones)
    assert one is not None and one.distribution.label() == "const 1"
    for mixed in (drawn, scaled):  # a draw among the inputs: not deterministic, and no family
        state = tracer.resolve(mixed)
        assert state is not None and state.distribution.family.value == "custom"
