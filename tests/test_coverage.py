"""Every parameter-creating class in ``torch.nn`` has a traced default with numbers that the
real CPU-initialized tensor follows, and ``initscope explain`` works for it.

The classes are enumerated from the installed torch, not from a list kept here: each
``vars(torch.nn)`` value that is an ``nn.Module`` subclass is constructed (with the arguments
below where it needs some) and counts as parameter-creating when it has parameters that are not
those of its arguments (``nn.DataParallel(module)`` wraps parameters, it creates none). Every
parameter-creating class must be in :data:`CASES` or :data:`UNCOVERED`, and every other class
must be constructible here, so a torch release that adds a class fails this test until the
class is handled.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from initscope.io.models import trace_model
from initscope.io.targets import ModelSpec, construct
from initscope.knowledge.distributions import Distribution, Family
from initscope.knowledge.explanation import explain
from initscope.knowledge.goodness import ks_test

# A traced distribution is accepted when the real tensor's KS p-value exceeds this. Construction
# is seeded (trace_model's seed 0), so each p-value is fixed for a given torch: the test is
# deterministic, not flaky at rate 1e-3 per tensor.
KS_LEVEL = 1e-3
KS_MIN_ELEMENTS = 100


@dataclass(frozen=True)
class Case:
    """How to construct one class: keyword arguments (a callable for those that must be fresh
    objects, such as a layer to copy), and the input that materializes a Lazy class."""

    kwargs: Mapping[str, Any] | Callable[[], dict[str, Any]] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None

    def make_kwargs(self) -> dict[str, Any]:
        return self.kwargs() if callable(self.kwargs) else dict(self.kwargs)


_CONV = {"in_channels": 16, "out_channels": 32, "kernel_size": 3}
_CONV3D = {"in_channels": 8, "out_channels": 16, "kernel_size": 3}
_CELL = {"input_size": 48, "hidden_size": 64}
_RNN = {**_CELL, "num_layers": 2, "bidirectional": True}
_ATTN: dict[str, Any] = {"d_model": 64, "nhead": 4, "dim_feedforward": 128}

# The parameter-creating classes covered, with their constructor arguments. Every class that
# creates parameters is here (arguments or not) or in UNCOVERED. Sizes: every weight has at
# least 2,000 elements, enough for the KS test to reject a bound or std 10% off (p < 1e-3);
# vectors (biases) get the KS test from 100 elements, and a range check below that.
CASES: dict[str, Case] = {
    "AdaptiveLogSoftmaxWithLoss": Case(
        {
            "in_features": 128,
            "n_classes": 200,
            "cutoffs": [60, 120],
            "div_value": 2.0,
            "head_bias": True,
        }
    ),
    "BatchNorm1d": Case({"num_features": 8}),
    "BatchNorm2d": Case({"num_features": 8}),
    "BatchNorm3d": Case({"num_features": 8}),
    "Bilinear": Case({"in1_features": 10, "in2_features": 12, "out_features": 40}),
    "Conv1d": Case({**_CONV, "kernel_size": 5}),
    "Conv2d": Case(_CONV),
    "Conv3d": Case(_CONV3D),
    "ConvTranspose1d": Case({**_CONV, "kernel_size": 5}),
    "ConvTranspose2d": Case({**_CONV, "groups": 2}),
    "ConvTranspose3d": Case(_CONV3D),
    "Embedding": Case({"num_embeddings": 500, "embedding_dim": 16}),
    "EmbeddingBag": Case({"num_embeddings": 500, "embedding_dim": 16}),
    "GRU": Case(_RNN),
    "GRUCell": Case(_CELL),
    "GroupNorm": Case({"num_groups": 2, "num_channels": 8}),
    # affine=False (their default) creates no parameters
    "InstanceNorm1d": Case({"num_features": 8, "affine": True}),
    "InstanceNorm2d": Case({"num_features": 8, "affine": True}),
    "InstanceNorm3d": Case({"num_features": 8, "affine": True}),
    "LSTM": Case(_RNN),
    "LSTMCell": Case(_CELL),
    "LayerNorm": Case({"normalized_shape": 16}),
    "LazyBatchNorm1d": Case({}, (4, 8)),
    "LazyBatchNorm2d": Case({}, (2, 8, 3, 3)),
    "LazyBatchNorm3d": Case({}, (2, 8, 2, 2, 2)),
    "LazyConv1d": Case({"out_channels": 32, "kernel_size": 5}, (2, 16, 10)),
    "LazyConv2d": Case({"out_channels": 32, "kernel_size": 3}, (2, 16, 8, 8)),
    "LazyConv3d": Case({"out_channels": 16, "kernel_size": 3}, (1, 8, 5, 5, 5)),
    "LazyConvTranspose1d": Case({"out_channels": 32, "kernel_size": 5}, (2, 16, 10)),
    "LazyConvTranspose2d": Case({"out_channels": 32, "kernel_size": 3}, (2, 16, 8, 8)),
    "LazyConvTranspose3d": Case({"out_channels": 16, "kernel_size": 3}, (1, 8, 5, 5, 5)),
    "LazyInstanceNorm1d": Case({}, (2, 8, 5)),
    "LazyInstanceNorm2d": Case({}, (2, 8, 3, 3)),
    "LazyInstanceNorm3d": Case({}, (2, 8, 2, 2, 2)),
    "LazyLinear": Case({"out_features": 64}, (2, 64)),
    "Linear": Case({"in_features": 64, "out_features": 128}),
    "LinearCrossEntropyLoss": Case({"in_features": 64, "num_classes": 100, "bias": True}),
    # kdim/vdim give separate q/k/v weights; add_bias_kv adds bias_k and bias_v
    "MultiheadAttention": Case(
        {"embed_dim": 64, "num_heads": 4, "kdim": 32, "vdim": 48, "add_bias_kv": True}
    ),
    "PReLU": Case({"num_parameters": 8}),
    "RMSNorm": Case({"normalized_shape": 16}),
    "RNN": Case(_RNN),
    "RNNBase": Case({"mode": "GRU", **_CELL}),
    "RNNCell": Case(_CELL),
    "RNNCellBase": Case({**_CELL, "bias": True, "num_chunks": 2}),
    "SyncBatchNorm": Case({"num_features": 8}),
    "Transformer": Case(
        {**_ATTN, "num_encoder_layers": 2, "num_decoder_layers": 1, "batch_first": True}
    ),
    "TransformerDecoderLayer": Case(_ATTN),
    "TransformerEncoderLayer": Case(_ATTN),
    # The layer argument is a nested spec, built under the tracer like the rest, so the
    # deep copies carry its traced default.
    "TransformerEncoder": Case(
        {
            "encoder_layer": {"model": "torch.nn:TransformerEncoderLayer", "kwargs": _ATTN},
            "num_layers": 2,
            "enable_nested_tensor": False,
        }
    ),
    "TransformerDecoder": Case(
        {
            "decoder_layer": {"model": "torch.nn:TransformerDecoderLayer", "kwargs": _ATTN},
            "num_layers": 2,
        }
    ),
}

# Further constructions of covered classes, for code paths the main case does not take.
VARIANTS: dict[str, tuple[str, Case]] = {
    "Conv2d[groups]": ("Conv2d", Case({**_CONV, "groups": 2})),
    "LSTM[proj_size]": ("LSTM", Case({**_RNN, "proj_size": 32})),
    "MultiheadAttention[fused]": ("MultiheadAttention", Case({"embed_dim": 64, "num_heads": 4})),
    "PReLU[default]": ("PReLU", Case({})),
    "RNN[relu]": ("RNN", Case({**_CELL, "nonlinearity": "relu", "bias": False})),
}

# Parameter-creating classes that cannot be covered, with the reason. Their constructor
# arguments are in OTHER_ARGS; they must still trace and explain without an error.
UNCOVERED: dict[str, str] = {}


def _data_parallel_kwargs() -> dict[str, Any]:
    return {"module": nn.Linear(2, 2)}


# Arguments for the classes outside CASES that need some: those in UNCOVERED, and those that
# turn out to create no parameters (pooling, padding, reshaping, ...). That the latter create
# none is checked, not assumed.
OTHER_ARGS: dict[str, Case] = {
    **{f"Adaptive{k}Pool{d}d": Case({"output_size": 2}) for k in ("Avg", "Max") for d in (1, 2, 3)},
    **{f"{k}Pool{d}d": Case({"kernel_size": 2}) for k in ("Avg", "Max") for d in (1, 2, 3)},
    **{f"MaxUnpool{d}d": Case({"kernel_size": 2}) for d in (1, 2, 3)},
    **{f"LPPool{d}d": Case({"norm_type": 2.0, "kernel_size": 2}) for d in (1, 2, 3)},
    **{f"FractionalMaxPool{d}d": Case({"kernel_size": 2, "output_size": 2}) for d in (2, 3)},
    **{
        f"{k}Pad{d}d": Case({"padding": 1})
        for k in ("Circular", "Reflection", "Replication", "Zero")
        for d in (1, 2, 3)
    },
    **{f"ConstantPad{d}d": Case({"padding": 1, "value": 0.0}) for d in (1, 2, 3)},
    "ChannelShuffle": Case({"groups": 2}),
    "CrossMapLRN2d": Case({"size": 3}),
    "LocalResponseNorm": Case({"size": 3}),
    "Fold": Case({"output_size": 4, "kernel_size": 2}),
    "Unfold": Case({"kernel_size": 2}),
    "PixelShuffle": Case({"upscale_factor": 2}),
    "PixelUnshuffle": Case({"downscale_factor": 2}),
    "Threshold": Case({"threshold": 0.1, "value": 0.0}),
    "Unflatten": Case({"dim": 1, "unflattened_size": (2, 2)}),
    # wraps the module it is given: its parameters are that module's, none of its own
    "DataParallel": Case(_data_parallel_kwargs),
}

# Classes that cannot be constructed here at all, with the reason.
UNCONSTRUCTIBLE: dict[str, str] = {}


# -- discovery ------------------------------------------------------------------------------


def _module_classes() -> dict[str, type[nn.Module]]:
    return {
        name: obj
        for name, obj in vars(nn).items()
        if isinstance(obj, type) and issubclass(obj, nn.Module)
    }


def _arguments_parameters(kwargs: Mapping[str, Any]) -> set[int]:
    return {id(p) for v in kwargs.values() if isinstance(v, nn.Module) for p in v.parameters()}


@dataclass(frozen=True)
class _Census:
    creating: frozenset[str]  # construct with parameters of their own
    plain: frozenset[str]  # construct without any
    failed: Mapping[str, str]  # could not be constructed: the error


def _census() -> _Census:
    creating: set[str] = set()
    plain: set[str] = set()
    failed: dict[str, str] = {}
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # deprecations (nn.Container, NLLLoss2d) and the like
        for name in _module_classes():
            case = CASES.get(name) or OTHER_ARGS.get(name) or Case()
            kwargs = case.make_kwargs()
            try:
                module = construct(ModelSpec("torch.nn:" + name, (), kwargs))
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
                continue
            given = _arguments_parameters(kwargs)
            own = [p for p in module.parameters() if id(p) not in given]
            (creating if own else plain).add(name)
    return _Census(frozenset(creating), frozenset(plain), failed)


CENSUS = _census()


def test_every_torch_nn_class_is_constructible_or_explained() -> None:
    unexplained = {n: e for n, e in CENSUS.failed.items() if n not in UNCONSTRUCTIBLE}
    assert not unexplained, (
        "torch.nn classes that could not be constructed: add arguments to CASES (if it "
        f"creates parameters) or OTHER_ARGS, or a reason to UNCONSTRUCTIBLE: {unexplained}"
    )
    stale = set(UNCONSTRUCTIBLE) - set(CENSUS.failed)
    assert not stale, f"UNCONSTRUCTIBLE classes that construct now: {sorted(stale)}"


def test_parameter_creating_classes_are_exactly_the_covered_and_the_uncovered() -> None:
    covered, uncovered = set(CASES), set(UNCOVERED)
    assert not covered & uncovered, sorted(covered & uncovered)
    missing = CENSUS.creating - covered - uncovered
    assert not missing, (
        f"torch.nn classes that create parameters but are not handled: {sorted(missing)}; "
        "add each to CASES (with constructor arguments) or to UNCOVERED (with a reason)"
    )
    extra = (covered | uncovered) - CENSUS.creating
    assert not extra, (
        f"listed as parameter-creating but not (or no longer) in torch.nn, or creating no "
        f"parameters: {sorted(extra)}"
    )
    stale = set(OTHER_ARGS) - CENSUS.plain - uncovered - set(CENSUS.failed)
    assert not stale, f"OTHER_ARGS entries neither parameter-free nor uncovered: {stale}"


def test_census_sees_the_well_known_classes() -> None:
    """Guard the discovery itself: it must not quietly find nothing."""
    assert {"Linear", "Conv2d", "LSTM", "Embedding", "LazyLinear"} <= CENSUS.creating
    assert {"ReLU", "MaxPool2d", "Sequential", "MSELoss", "DataParallel"} <= CENSUS.plain


# -- coverage -------------------------------------------------------------------------------


def _all_cases() -> Iterator[Any]:
    for name in sorted(CASES):
        yield pytest.param(name, CASES[name], id=name)
    for label, (name, case) in sorted(VARIANTS.items()):
        yield pytest.param(name, case, id=label)


def _has_numbers(d: Distribution) -> bool:
    needed = {
        Family.UNIFORM: (d.low, d.high),
        Family.NORMAL: (d.loc, d.scale),
        Family.TRUNC_NORMAL: (d.loc, d.scale, d.low, d.high),
        Family.CONSTANT: (d.value,),
        Family.ORTHOGONAL: (d.gain,),
        Family.EYE: (d.value,),
        Family.DIRAC: (d.value,),
        Family.SPARSE: (d.scale, d.sparsity),
    }.get(d.family)
    return needed is not None and all(v is not None and math.isfinite(v) for v in needed)


def _check_values(name: str, t: torch.Tensor, d: Distribution) -> None:
    """The real tensor ``t`` is consistent with the traced distribution ``d``."""
    x = t.detach().to(torch.float64).reshape(-1)
    if d.family is Family.CONSTANT:
        assert d.value is not None
        assert torch.equal(x, torch.full_like(x, d.value)), (name, d, x[:8])
        return
    if d.family is Family.UNIFORM:
        assert d.low is not None and d.high is not None
        assert bool((x >= d.low).all() and (x <= d.high).all()), (name, d, x.min(), x.max())
    if d.family is Family.ORTHOGONAL:
        assert d.gain is not None
        m = x.reshape(t.shape[0], -1)
        small = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
        eye = torch.eye(small.shape[0], dtype=torch.float64)
        assert torch.allclose(small, d.gain**2 * eye, atol=1e-4), (name, d)
        return
    if d.is_continuous and x.numel() >= KS_MIN_ELEMENTS:
        result = ks_test(x, d)
        assert result.p_value > KS_LEVEL, (name, d.label(), result)


@pytest.mark.parametrize(("cls_name", "case"), list(_all_cases()))
def test_traced_default_is_a_known_distribution_the_tensor_follows(
    cls_name: str, case: Case
) -> None:
    """Each parameter's traced default is a family with numbers; the real tensor passes a KS
    test against it (continuous, ≥ 100 elements), lies in its range (uniform), equals it
    exactly (constant), or is orthonormal up to the gain (orthogonal)."""
    spec = ModelSpec(
        "torch.nn:" + cls_name, (), case.make_kwargs(), example_input_shape=case.input_shape
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = trace_model(spec)
    params = list(tm.model.named_parameters())
    assert params, f"{cls_name} built without parameters"
    # Buffers too (BatchNorm's running statistics): the same checks hold for them.
    problems = []
    for name, p in params + list(tm.model.named_buffers()):
        d = tm.defaults[name]
        if d.distribution.family is Family.CUSTOM or not _has_numbers(d.distribution):
            problems.append(f"{name}: {d.call.signature()} -> {d.distribution.label()}")
            continue
        _check_values(name, p, d.distribution)
    assert not problems, f"{cls_name}: defaults without a known distribution: {problems}"


@pytest.mark.parametrize(("cls_name", "case"), list(_all_cases()))
def test_explain_works(cls_name: str, case: Case) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = explain("torch.nn:" + cls_name, case.make_kwargs(), input_shape=case.input_shape)
    assert ex.layer == f"torch.nn.{cls_name}"
    assert ex.parameters
    for p in ex.parameters:
        assert p.default.distribution.family is not Family.CUSTOM, (p.name, p.default)


def test_uncovered_classes_still_trace_and_explain() -> None:
    """What cannot be covered must still report and explain, if without numbers (none is
    uncovered in torch 2.13; this keeps the rule for when one is)."""
    for cls_name in sorted(UNCOVERED):
        case = OTHER_ARGS[cls_name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec = ModelSpec(
                "torch.nn:" + cls_name,
                (),
                case.make_kwargs(),
                example_input_shape=case.input_shape,
            )
            tm = trace_model(spec)
            ex = explain("torch.nn:" + cls_name, case.make_kwargs(), input_shape=case.input_shape)
        assert set(tm.defaults) >= {n for n, _ in tm.model.named_parameters()}
        assert ex.parameters
