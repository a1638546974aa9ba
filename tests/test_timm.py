"""Real timm models, built by timm.create_model as a user would name them: no parameter's
default is custom, report and report --meta agree on every default, every fresh tensor of
1,000 values or more is at it, and check passes; the same for a folder timm saved for the
Hub (config.json + model.safetensors), built from its config.

timm initializes ViT and ConvNeXt weights with its own trunc_normal_ (uniform_ → erfinv_ →
mul_ → add_ → clamp_, timm/layers/weight_init.py), which the tracer derives to the truncated
normal it draws; ResNet uses torch's kaiming_normal_ and constants. Where timm does not
import, tests/test_derived.py runs the same functions from tests/fixtures/timm_like.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from initscope.cli import app

# timm imports torchvision at import time (timm.layers, timm.data), and torchvision wheels
# are built for one torch release each: with a torch that has none, timm cannot be imported.
timm = pytest.importorskip("timm", reason="timm (and the torchvision it imports) not installed")

MODELS = ["vit_tiny_patch16_224", "convnext_atto", "resnet18"]


def _params(runner: CliRunner, *argv: str) -> dict[str, dict[str, Any]]:
    result = runner.invoke(app, ["report", *argv, "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    return {p["name"]: p for p in json.loads(result.stdout)["parameters"]}


@pytest.mark.slow  # three ImageNet-sized models built, reported twice and checked
@pytest.mark.parametrize("name", MODELS)
def test_a_timm_model_is_right_out_of_the_box(runner: CliRunner, name: str) -> None:
    target = ["timm:create_model", "--arg", f"model_name={name}"]
    cpu = _params(runner, *target)
    meta = _params(runner, *target, "--meta")
    assert cpu.keys() == meta.keys()
    for n, p in cpu.items():
        assert p["default"] is not None, n
        assert p["default"]["family"] != "custom", (n, p["default"])
        assert p["default"]["label"] == meta[n]["default"]["label"], n
        if p["numel"] >= 1000:
            assert p["matches_default"] is True, (n, p["fit"], p["default"]["label"])
    result = runner.invoke(app, ["check", *target, "-q"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow  # three models saved as timm folders, reported and checked
@pytest.mark.parametrize("name", MODELS)
def test_a_timm_folder_is_built_from_its_config(
    runner: CliRunner, tmp_path: Path, name: str
) -> None:
    # The folder as timm writes it for the Hub (timm/models/_hub.py save_for_hf): config.json
    # with the architecture and model_args, and model.safetensors.
    import torch
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    save_for_hf(model, tmp_path / name, safe_serialization=True)
    params = _params(runner, str(tmp_path / name))
    for n, p in params.items():
        assert p["default"] is not None, n  # built from the config, not read bare
        assert p["default"]["family"] != "custom", (n, p["default"])
        if p["numel"] >= 1000:
            assert p["matches_default"] is True, (n, p["fit"], p["default"]["label"])
    result = runner.invoke(app, ["check", str(tmp_path / name), "-q"])
    assert result.exit_code == 0, result.output
