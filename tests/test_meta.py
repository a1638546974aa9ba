"""--meta: defaults of huge models without memory for their weights."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from initscope.cli import app
from initscope.io.models import trace_model
from initscope.io.targets import ModelSpec

transformers = pytest.importorskip("transformers")


def _summary(tm: object) -> dict[str, tuple[str, str]]:
    defaults = tm.defaults  # type: ignore[attr-defined]
    return {n: (d.call.name, d.distribution.label()) for n, d in defaults.items()}


@pytest.mark.parametrize("factory", ["tiny_llama", "tiny_gpt2", "tiny_llama_reinitialized"])
def test_meta_trace_equals_cpu_trace(factory: str) -> None:
    """transformers skips its init on meta; initscope runs it there, when post_init would."""
    ref = f"tests.fixtures.hf_models:{factory}"
    cpu = trace_model(ModelSpec(ref))
    meta = trace_model(ModelSpec(ref), meta=True)
    assert next(meta.model.parameters()).device.type == "meta"
    assert _summary(meta) == _summary(cpu)


def test_writes_after_construction_stay_on_meta() -> None:
    # transformers' init runs at the end of the model's __init__, before the factory's own
    # writes (peft's LoRA layers, a zeroed head): on meta too, not over them afterwards.
    meta = _summary(
        trace_model(ModelSpec("tests.fixtures.hf_models:tiny_llama_reinitialized"), meta=True)
    )
    assert meta["lm_head.weight"] == ("zeros_", "const 0")
    assert meta["model.layers.0.self_attn.q_proj.weight"] == ("xavier_uniform_", "U(±0.2165)")
    assert meta["model.layers.1.self_attn.q_proj.weight"] == ("normal_", "N(0, 0.02)")


def test_llama_7b_sized_config_on_meta(runner: CliRunner) -> None:
    result = runner.invoke(
        app, ["report", "tests.fixtures.hf_models:llama_7b", "--meta", "--format", "json", "-q"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["summary"]["numel"] == 6_738_415_616
    linears = [p for p in data["parameters"] if p["module_type"].endswith(".Linear")]
    assert len(linears) == 32 * 7 + 1
    for p in linears:
        assert p["default"]["family"] == "normal" and p["default"]["std"] == 0.02, p["name"]
        assert p["stats"] is None and p["fit"] is None and p["matches_default"] is None


def test_meta_with_torch_layers(runner: CliRunner) -> None:
    result = runner.invoke(
        app, ["report", "initscope.examples:UNet", "--meta", "--format", "json", "-q"]
    )
    assert result.exit_code == 0, result.output
    p = {q["name"]: q for q in json.loads(result.stdout)["parameters"]}["stem.weight"]
    assert p["default"]["family"] == "uniform" and p["stats"] is None


def test_too_large_for_memory_suggests_meta(runner: CliRunner) -> None:
    big = ["nn.Linear", "--arg", "in_features=1000000", "--arg", "out_features=1000000"]
    result = runner.invoke(app, ["report", *big])
    assert result.exit_code == 2, result.output
    assert "does not fit in memory" in result.stderr and "--meta" in result.stderr
    result = runner.invoke(app, ["report", *big, "--meta", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["numel"] == 1_000_001_000_000


def test_meta_model_with_checkpoint_streams_real_statistics(
    runner: CliRunner, linear_pt: object
) -> None:
    args = ["--model", "nn.Linear", "--arg", "in_features=5", "--arg", "out_features=100"]
    result = runner.invoke(app, ["report", str(linear_pt), *args, "--meta", "--format", "json"])
    assert result.exit_code == 0, result.output
    w = {p["name"]: p for p in json.loads(result.stdout)["parameters"]}["weight"]
    assert w["stats"]["std"] > 0 and w["matches_default"] is True
