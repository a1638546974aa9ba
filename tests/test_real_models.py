"""Real architectures, built from small transformers configs (tests/fixtures/real_models.py),
as a user meets them: the fresh model named as a Python target, and the model folder
save_pretrained writes. report and report --meta agree on every default, the folder gets the
fresh model's defaults, every fresh tensor of 1,000 values or more is at its default, and
check passes on both. A PEFT LoRA model too, fresh and as a saved adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from tests.fixtures.real_models import ARCHITECTURES, MOE, build, lora

transformers = pytest.importorskip("transformers")

FRESH = "tests.fixtures.real_models:build"


def _params(runner: CliRunner, *argv: str) -> dict[str, dict[str, Any]]:
    result = runner.invoke(app, ["report", *argv, "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    assert "bare state dict" not in result.stderr, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)["parameters"]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("models")
    for name in ARCHITECTURES:
        torch.manual_seed(0)  # as initscope builds the fresh model (--seed 0)
        build(name).save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def at_default(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Expectations that every tensor follows its traced default, judged as check judges a
    run: its 1e-3 false-alarm budget split over the run's decisions."""
    path = tmp_path_factory.mktemp("expect") / "at_default.yaml"
    path.write_text("checks:\n  - follows: default\n", encoding="utf-8")
    return str(path)


def _labels(params: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {n: p["default"]["label"] for n, p in params.items()}


def _assert_at_defaults(params: dict[str, dict[str, Any]]) -> None:
    """Every default known (none custom), and every tensor of 1,000 values or more at it;
    a deterministic default (computed, not drawn: Whisper's sinusoids, Mamba's A_log) is
    replayed and must equal it exactly. report judges each tensor at level 1e-3
    (measured: 15 of 10,000 fresh N(0, 0.125) tensors of 2,048 values called "differs"), so
    of the 484 tensors judged here about 0.7 are expected to be called so by chance; one is:
    T5's decoder.block.1 wo, whose mean lies 4.1 standard errors from 0 at seed 0 (no mean
    of any T5 tensor beyond 3 at seeds 1-5; its default, N(0, d_ff ** -0.5) from
    T5PreTrainedModel._init_weights, is traced right). So at most one per model may differ,
    and check --expect, which judges every tensor at the run's level, must pass."""
    differ = []
    for n, p in params.items():
        assert p["default"] is not None, n
        assert p["default"]["family"] != "custom", (n, p["default"])
        if p["numel"] < 1000:
            continue
        if p["default"]["family"] == "deterministic":
            assert p["matches_default"] is True, n
        elif p["matches_default"] is not True:
            differ.append((n, p["fit"], p["default"]["label"]))
    assert len(differ) <= 1, differ


def _check(runner: CliRunner, *argv: str) -> None:
    result = runner.invoke(app, ["check", *argv, "-q"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow  # 31 models, each reported 4 times and checked twice: 65 s on 2 cores
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_real_architecture_is_right_out_of_the_box(
    runner: CliRunner, folders: dict[str, Path], at_default: str, name: str
) -> None:
    fresh = [FRESH, "--arg", f"name={name}"]
    folder = str(folders[name])
    cpu = _params(runner, *fresh)
    assert _labels(_params(runner, *fresh, "--meta")) == _labels(cpu)
    _assert_at_defaults(cpu)
    saved = _params(runner, folder)
    assert _labels(saved) == _labels(cpu)
    assert _labels(_params(runner, folder, "--meta")) == _labels(cpu)
    _assert_at_defaults(saved)
    for target in (fresh, [folder]):
        _check(runner, *target)  # health alone, as a user runs it first
        _check(runner, *target, "--expect", at_default)


@pytest.mark.slow  # 2 models, each reported twice and checked: 3 s
@pytest.mark.parametrize("name", sorted(MOE))
def test_a_fresh_mixture_of_experts_is_right(runner: CliRunner, at_default: str, name: str) -> None:
    fresh = [FRESH, "--arg", f"name={name}"]
    cpu = _params(runner, *fresh)
    assert _labels(_params(runner, *fresh, "--meta")) == _labels(cpu)
    assert any(p["shape"][0] == 4 and len(p["shape"]) == 3 for p in cpu.values())  # fused
    _assert_at_defaults(cpu)
    _check(runner, *fresh, "--expect", at_default)


LORA = "tests.fixtures.real_models:lora"


@pytest.mark.slow  # a LoRA model reported twice and checked, an adapter saved and read: 2 s
def test_a_peft_lora_model_has_peft_defaults_on_cpu_and_meta(
    runner: CliRunner, at_default: str, tmp_path: Path
) -> None:
    pytest.importorskip("peft")
    cpu = _params(runner, LORA)
    meta = _params(runner, LORA, "--meta")
    assert _labels(meta) == _labels(cpu)
    adapters = {n: p for n, p in cpu.items() if ".lora_" in n}
    assert len(adapters) == 8  # A and B of q_proj and v_proj in 2 layers
    for n, p in adapters.items():
        # peft/tuners/lora/layer.py reset_lora_parameters: A as nn.Linear's default,
        # kaiming_uniform(a=√5) on (r=32, 32): U(±1/√32); B zeros.
        want = ("kaiming_uniform_", "U(±0.1768)") if ".lora_A." in n else ("zeros_", "const 0")
        for got in (p, meta[n]):
            assert (got["default"]["init"], got["default"]["label"]) == want, n
            assert got["default"]["source"].startswith("peft/tuners/lora/layer.py"), n
        assert p["matches_default"] is True, (n, p["fit"])
    _assert_at_defaults(cpu)
    _check(runner, LORA)
    _check(runner, LORA, "--expect", at_default)

    # The adapter as PEFT saves it: its tensors only, read as a bare state dict (the base
    # model it names would have to be downloaded); lora_B's zeros are zeros by design.
    torch.manual_seed(0)
    lora().save_pretrained(tmp_path / "adapter")
    folder = str(tmp_path / "adapter")
    result = runner.invoke(app, ["report", folder, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "is a PEFT adapter for a base model it does not name" in result.stderr
    saved = json.loads(result.stdout)["parameters"]
    assert len(saved) == 8 and all(p["default"] is None for p in saved)
    _check(runner, folder)
