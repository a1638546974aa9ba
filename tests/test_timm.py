"""Real timm models, built by timm.create_model as a user would name them: no parameter's
default is custom, report and report --meta agree on every default, every fresh tensor of
1,000 values or more is at it, and check passes.

timm initializes ViT and ConvNeXt weights with its own trunc_normal_ (uniform_ → erfinv_ →
mul_ → add_ → clamp_, timm/layers/weight_init.py), which the tracer derives to the truncated
normal it draws; ResNet uses torch's kaiming_normal_ and constants. Where timm does not
import, tests/test_derived.py runs the same functions from tests/fixtures/timm_like.py.
"""

from __future__ import annotations

import json
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
