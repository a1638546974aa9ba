"""State dicts the way training scripts nest them: unwrapped, or selected with --key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app


def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"fc.weight": torch.randn(8, 4) * 0.1, "fc.bias": torch.zeros(8)}


def _save(tmp_path: Path, obj: Any, name: str = "ckpt.pt") -> str:
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def _names(runner: CliRunner, *argv: str) -> list[str]:
    import json

    result = runner.invoke(app, ["report", *argv, "--format", "json"])
    assert result.exit_code == 0, result.output
    return sorted(p["name"] for p in json.loads(result.stdout)["parameters"])


@pytest.mark.parametrize(
    "wrap",
    [
        lambda w: {"model_state": w, "epoch": 3},
        lambda w: {"state": w, "step": 10},
        lambda w: {"weights": w},
        lambda w: {"params": w, "config": "x"},
        lambda w: {"checkpoint": {"model_state": w}, "optim_name": "adam"},
        lambda w: {"ema_weights_v2": w, "step": 1},  # any one dict among the values
    ],
)
def test_usual_nestings_are_unwrapped(runner: CliRunner, tmp_path: Path, wrap: Any) -> None:
    assert _names(runner, _save(tmp_path, wrap(_weights()))) == ["fc.bias", "fc.weight"]


def test_key_selects_an_entry_explicitly(runner: CliRunner, tmp_path: Path) -> None:
    # two dicts: nothing says which is the model, until --key does
    obj = {"student": _weights(), "teacher": {"head.weight": torch.randn(3, 3)}}
    path = _save(tmp_path, obj)
    result = runner.invoke(app, ["report", path])
    assert result.exit_code == 2, result.output
    assert "top-level keys: student, teacher" in result.stderr
    assert "--key" in result.stderr
    assert _names(runner, path, "--key", "student") == ["fc.bias", "fc.weight"]
    assert _names(runner, path, "--key", "teacher") == ["head.weight"]


def test_a_dotted_key_walks_nested_dicts(runner: CliRunner, tmp_path: Path) -> None:
    path = _save(tmp_path, {"run": {"final": {"net": _weights()}, "best": {}}})
    assert _names(runner, path, "--key", "run.final.net") == ["fc.bias", "fc.weight"]
    result = runner.invoke(app, ["check", path, "--key", "run.last"])
    assert result.exit_code == 2, result.output
    assert "has no last at run (keys there: final, best)" in result.stderr
    assert "Traceback" not in result.output


def test_key_on_a_file_without_entries_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(_weights(), str(path))
    result = runner.invoke(app, ["report", str(path), "--key", "model"])
    assert result.exit_code == 2, result.output
    assert "selects an entry of a torch.save file" in result.stderr
