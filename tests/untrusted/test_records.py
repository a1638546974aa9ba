"""A checkpoint's provenance record is data from a file: it may name a model to rebuild, but
never make initscope import code nobody chose, nor build a model larger than --max-memory.
Each test is a reproduction that failed before its fix."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from initscope.errors import TargetError
from initscope.models import open_target
from initscope.report import build_report
from initscope.saving import METADATA_KEY, Provenance, write_safetensors
from initscope.targets import TargetOptions


def _recorded(path: Path, ref: str, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    record = Provenance("0", model={"ref": ref, "args": [], "kwargs": {}})
    write_safetensors(path, tensors or {"w": torch.zeros(2, 2)}, {METADATA_KEY: record.to_json()})
    return path


def test_a_namespace_package_does_not_import_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner
) -> None:
    # matplotlib installs mpl_toolkits as a namespace package: any folder on the path named
    # mpl_toolkits adds to it, the working folder included.
    pytest.importorskip("mpl_toolkits")
    marker = tmp_path / "MARKER"
    (tmp_path / "mpl_toolkits").mkdir()
    (tmp_path / "mpl_toolkits" / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "import torch\nclass M(torch.nn.Linear):\n    pass\n"
    )
    path = _recorded(tmp_path / "ns.safetensors", "mpl_toolkits.evil:M")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m initscope` would have it
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "namespace package" in result.stderr
    assert "reading it as a bare state dict" in result.stderr
    assert not marker.exists()
    assert "mpl_toolkits.evil" not in sys.modules


@pytest.mark.parametrize(
    "ref",
    [
        "unittest.__main__:main",
        "venv.__main__:main",
        "antigravity:geohash",
        "this:s",
        "__hello__:x",
    ],
)
def test_a_record_never_imports_modules_that_run_on_import(tmp_path: Path, ref: str) -> None:
    module = ref.split(":")[0]
    assert module not in sys.modules
    path = _recorded(tmp_path / "r.safetensors", ref)
    with pytest.warns(UserWarning, match="importing it would run code the record names"):
        report = build_report(str(path))
    assert not report.has_model
    assert module not in sys.modules


def test_record_import_rules() -> None:
    from initscope.models import record_import_problem

    assert record_import_problem("torch.nn") is None
    assert record_import_problem("initscope.examples") is None  # an editable install counts
    assert "__main__" in (record_import_problem("torch.__main__") or "")
    assert "not an installed package" in (record_import_problem("tests.no_such_module") or "")
    assert "not a module name" in (record_import_problem("os;rm") or "")


def test_a_record_naming_a_function_is_not_called(tmp_path: Path) -> None:
    # torch.manual_seed is importable and callable, but not an nn.Module class.
    path = _recorded(tmp_path / "f.safetensors", "torch:manual_seed")
    with pytest.warns(UserWarning, match="not an nn.Module class"):
        report = build_report(str(path))
    assert not report.has_model


def test_a_record_that_builds_on_meta_but_not_for_real_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner
) -> None:
    import initscope.models as models

    real = models.trace_model

    def fails_for_real(spec: object, *, seed: int = 0, meta: bool = False) -> object:
        if not meta:
            raise TargetError("constructing torch.nn:Linear failed: RuntimeError: no memory")
        return real(spec, seed=seed, meta=meta)  # type: ignore[arg-type]

    monkeypatch.setattr(models, "trace_model", fails_for_real)
    record = Provenance(
        "0", model={"ref": "torch.nn:Linear", "kwargs": {"in_features": 3, "out_features": 2}}
    )
    path = tmp_path / "lin.safetensors"
    lin = torch.nn.Linear(3, 2)
    write_safetensors(path, dict(lin.state_dict()), {METADATA_KEY: record.to_json()})
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "building it failed" in result.stderr
    assert "bare state dict" in result.stderr


def test_a_record_over_the_memory_budget_is_not_built(tmp_path: Path) -> None:
    # 160 KB on disk (a sparse file), but the record asks for Linear(40000, 40000): 6.4 GB.
    record = Provenance(
        "0",
        model={"ref": "torch.nn:Linear", "kwargs": {"in_features": 40000, "out_features": 40000}},
    )
    path = tmp_path / "huge.safetensors"
    write_safetensors(
        path,
        {"weight": torch.zeros(1, 40000), "bias": torch.zeros(40000)},
        {METADATA_KEY: record.to_json()},
    )
    # Rewrite the header so weight is [40000, 40000], then extend the file sparsely.
    import json

    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    w = 40000 * 40000 * 4
    header["weight"] = {"dtype": "F32", "shape": [40000, 40000], "data_offsets": [0, w]}
    header["bias"] = {"dtype": "F32", "shape": [40000], "data_offsets": [w, w + 160000]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little") + text)
        fh.truncate(8 + len(text) + w + 160000)
    assert path.stat().st_blocks * 512 < 2**20
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with open_target(str(path), TargetOptions(max_memory=2 * 2**30)) as (traced, ckpt):
            assert traced is None
            assert ckpt is not None
    assert any("over --max-memory" in str(w.message) for w in seen)


def crafted_inputs(folder: Path) -> dict[str, Path]:
    cases: dict[str, Path] = {}
    for ref in ("unittest.__main__:main", "venv.__main__:main", "antigravity:geohash"):
        name = ref.split(":")[0].replace(".", "-")
        cases[f"record-{name}"] = _recorded(folder / f"{name}.safetensors", ref)
    (folder / "mpl_toolkits").mkdir()
    (folder / "mpl_toolkits" / "evil.py").write_text(
        f"open({str(folder / 'MARKER-records')!r}, 'w').write('ran')\n"
    )
    cases["record-namespace-package"] = _recorded(folder / "ns.safetensors", "mpl_toolkits.evil:M")
    return cases


@pytest.mark.slow
def test_an_installed_module_is_not_shadowed_by_the_working_folder(tmp_path: Path) -> None:
    import subprocess

    # idna is installed (requests needs it) and not imported by initscope: a record naming
    # it must import the installed one, not ./idna.py lying beside the checkpoint.
    pytest.importorskip("idna")
    marker = tmp_path / "MARKER"
    (tmp_path / "idna.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass M: pass\n")
    path = _recorded(tmp_path / "r.safetensors", "idna:M")
    done = subprocess.run(
        [sys.executable, "-m", "initscope", "report", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert "bare state dict" in done.stderr
