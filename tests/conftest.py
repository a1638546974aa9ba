from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
# Tests import toy models as `tests.fixtures.models:Tiny`, as a user would name their own.
sys.path.insert(0, str(ROOT))
# Tables are as wide as COLUMNS says (the goldens are 100 wide), whatever the shell exports.
os.environ["COLUMNS"] = "100"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/* from the current output (review the diff!)",
    )


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> object:
    """Compare text with tests/golden/<name>; --update-golden rewrites it on purpose."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if request.config.getoption("--update-golden"):
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing golden file {path}; run pytest --update-golden"
        want = path.read_text(encoding="utf-8")
        if name.endswith(".json") and text != want:
            # Full-precision floats: the fused kernel and the torch path sum in different
            # orders, so the last digits may differ (1e-12 relative is what stats tests hold).
            assert _close(json.loads(text), json.loads(want)), f"output differs from {path}"
            return
        assert text == want, f"output differs from {path}"

    return check


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.fixture
def linear_pt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(5, 100).state_dict(), path)
    return path


@pytest.fixture
def tiny_safetensors(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    from tests.fixtures.models import Tiny

    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in Tiny().state_dict().items()}, str(path))
    return path


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    torch.manual_seed(1234)
    yield


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch with one thread: for modules of small tensors, where the thread pool only costs
    time (several times over when other processes share the CPUs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
