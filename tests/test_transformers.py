"""Real third-party models: the model's own _init_weights is what gets traced."""

from __future__ import annotations

import pytest
import torch

from initscope.io.models import trace_model
from initscope.io.targets import ModelSpec
from initscope.knowledge.distributions import Distribution, Family
from initscope.knowledge.goodness import ks_test

transformers = pytest.importorskip("transformers")


def test_bert_reports_normal_002_for_linear_and_embedding_weights() -> None:
    tm = trace_model(ModelSpec("tests.fixtures.hf_models:tiny_bert"))
    modules = dict(tm.model.named_modules())
    linear_w = embed_w = norm = bias = 0
    for name, d in tm.defaults.items():
        owner, _, param = name.rpartition(".")
        module = modules[owner]
        if isinstance(module, torch.nn.Linear) and param == "weight":
            assert d.distribution == Distribution.normal(0.0, 0.02), name
            linear_w += 1
        elif isinstance(module, torch.nn.Embedding):
            assert d.distribution == Distribution.normal(0.0, 0.02), name
            embed_w += 1
        elif isinstance(module, torch.nn.LayerNorm):
            expected = 1.0 if param == "weight" else 0.0
            assert d.distribution == Distribution.constant(expected), name
            norm += 1
        elif param == "bias":
            assert d.distribution == Distribution.constant(0.0), name
            bias += 1
        if isinstance(module, torch.nn.Linear) and param == "bias":
            assert d.distribution == Distribution.constant(0.0), name
    assert linear_w >= 12 and embed_w == 3 and norm >= 6
    # and the values really follow it
    w = tm.model.encoder.layer[0].attention.self.query.weight
    assert ks_test(w.reshape(-1), Distribution.normal(0.0, 0.02)).p_value > 1e-3


def test_bert_source_points_at_transformers_init_weights() -> None:
    tm = trace_model(ModelSpec("tests.fixtures.hf_models:tiny_bert"))
    d = tm.defaults["encoder.layer.0.attention.self.query.weight"]
    assert d.distribution.family is Family.NORMAL
    assert d.call.source is not None and "transformers" in d.call.source
