"""`apply` records the model it built; `check` and `report` on the output rebuild it from the
record when its module is installed, so types and defaults are known without --model. A
module only the working folder holds is never imported for a record: naming it with --model
trusts it, and the record's arguments are used."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from initscope.cli import app

MODELS = textwrap.dedent(
    """
    import pathlib
    import torch

    # Importing this module leaves a mark, so a test can tell whether it was imported.
    pathlib.Path(__file__).with_name("IMPORTED").write_text("imported")


    class Net(torch.nn.Module):
        def __init__(self, hidden: int = 8) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, hidden)
            self.norm = torch.nn.LayerNorm(hidden)


    def make_net(hidden: int = 8) -> Net:
        return Net(hidden)
    """
)


@pytest.fixture
def forget_modules() -> Iterator[None]:
    """Modules a test imports from its own folders are forgotten afterwards."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("recpkg_", "localmodels")):
            del sys.modules[name]


def _installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """A package installed in a site folder on sys.path (not the working folder): its code
    and its *.dist-info, as pip leaves them."""
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("")
    (site / name / "models.py").write_text(MODELS)
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "top_level.txt").write_text(f"{name}\n")
    monkeypatch.syspath_prepend(str(site))
    return site / name


def _apply(runner: CliRunner, ref: str, out: Path) -> None:
    result = runner.invoke(
        app, ["apply", "--rules", "xavier", ref, "--arg", "hidden=6", "-o", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output


def _params(runner: CliRunner, *argv: str) -> dict[str, Any]:
    result = runner.invoke(app, ["report", *argv, "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    return {p["name"]: p for p in json.loads(result.stdout)["parameters"]}


@pytest.mark.usefixtures("forget_modules")
def test_an_installed_modules_record_rebuilds_the_model(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _installed(tmp_path, monkeypatch, "recpkg_installed")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = work / "out.pt"
    _apply(runner, "recpkg_installed.models:Net", out)
    # The rules match by type: a bare state dict has none, the rebuilt model has them.
    result = runner.invoke(app, ["check", str(out), "--rules", "xavier", "-q"])
    assert result.exit_code == 0, result.output
    assert "bare state dict" not in result.stderr
    params = _params(runner, str(out))
    assert params["fc.weight"]["shape"] == [6, 4]  # the record's hidden=6, not the default 8
    assert params["fc.weight"]["module_type"] == "torch.nn.modules.linear.Linear"
    assert all(p["default"] is not None for p in params.values())
    assert params["norm.weight"]["matches_default"] is True  # xavier's rules keep norms
    assert params["fc.weight"]["default"]["init"] == "kaiming_uniform_"  # Linear's own


@pytest.mark.usefixtures("forget_modules")
def test_a_recorded_factory_is_called_only_when_named_and_never_with_the_files_arguments(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _installed(tmp_path, monkeypatch, "recpkg_factory")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.safetensors"
    _apply(runner, "recpkg_factory.models:make_net", out)
    result = runner.invoke(app, ["report", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert (
        f"{out} records recpkg_factory.models:make_net, which is not an nn.Module class; "
        "reading it as a bare state dict"
    ) in result.stderr
    # Named, the factory is trusted; its arguments from the file are shown, not passed (a
    # record naming subprocess:run would otherwise run what it says).
    ref = "recpkg_factory.models:make_net"
    result = runner.invoke(app, ["report", str(out), "--model", ref, "-q"])
    assert result.exit_code == 2
    assert (
        f"{out}'s record calls {ref} with hidden=6; initscope passes a record's arguments "
        "only to an nn.Module class: give the ones you trust with --arg name=value"
    ) in result.stderr
    params = _params(runner, str(out), "--model", ref, "--arg", "hidden=6")
    assert params["fc.weight"]["shape"] == [6, 4]
    assert all(p["default"] is not None for p in params.values())


def test_a_named_function_never_gets_a_records_arguments(runner: CliRunner, tmp_path: Path) -> None:
    import torch

    from initscope.io.saving import METADATA_KEY, Provenance, write_safetensors

    marker = tmp_path / "RAN"
    record = Provenance(
        "0", model={"ref": "subprocess:run", "args": [["touch", str(marker)]], "kwargs": {}}
    )
    out = tmp_path / "crafted.safetensors"
    write_safetensors(out, {"w": torch.zeros(2)}, {METADATA_KEY: record.to_json()})
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "which is not an nn.Module class" in result.stderr
    assert "--model subprocess:run" not in result.stderr  # never advised
    result = runner.invoke(app, ["report", str(out), "--model", "subprocess:run"])
    assert result.exit_code == 2
    assert "initscope passes a record's arguments only to an nn.Module class" in result.stderr
    assert not marker.exists()


@pytest.mark.usefixtures("forget_modules")
def test_a_working_folder_module_is_named_not_imported(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "localmodels.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m initscope` has it
    out = tmp_path / "out.pt"
    _apply(runner, "localmodels:Net", out)  # a target the user names: imported, trusted
    (tmp_path / "IMPORTED").unlink()
    del sys.modules["localmodels"]
    for command in (["report", "out.pt"], ["check", "out.pt"]):
        result = runner.invoke(app, [*command, "-q"])
        assert result.exit_code == 0, result.output
        assert result.stderr.splitlines() == [
            "initscope: warning: out.pt's record names localmodels:Net, a module in the "
            "working folder; initscope does not import it from a record; pass --model "
            "localmodels:Net to trust it (reading it as a bare state dict)"
        ]
    assert not (tmp_path / "IMPORTED").exists()
    assert "localmodels" not in sys.modules
    # Named, it is imported, built with the record's hidden=6 (its default is 8), and the
    # type rules can be checked.
    result = runner.invoke(
        app, ["check", "out.pt", "--rules", "xavier", "--model", "localmodels:Net", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert (tmp_path / "IMPORTED").exists()
    params = _params(runner, "out.pt", "--model", "localmodels:Net")
    assert params["norm.weight"]["matches_default"] is True
    # --arg overrides what the record says: hidden=8 no longer fits the file.
    result = runner.invoke(
        app, ["report", "out.pt", "--model", "localmodels:Net", "--arg", "hidden=8"]
    )
    assert result.exit_code == 2
    assert "out.pt does not fit the model" in result.stderr


@pytest.mark.usefixtures("forget_modules")
def test_a_module_beside_the_checkpoint_is_named_not_imported(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = tmp_path / "made"
    made.mkdir()
    (made / "localmodels.py").write_text(MODELS)
    monkeypatch.chdir(made)
    monkeypatch.syspath_prepend(str(made))
    _apply(runner, "localmodels:Net", made / "out.pt")
    (made / "IMPORTED").unlink()
    del sys.modules["localmodels"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["report", str(made / "out.pt"), "-q"])
    assert result.exit_code == 0, result.output
    assert (
        f"a module beside {made / 'out.pt'}; initscope does not import it from a record"
    ) in result.stderr
    assert not (made / "IMPORTED").exists()


def test_named_arguments_from_a_record_are_held_to_its_limits(
    runner: CliRunner, tmp_path: Path
) -> None:
    # A 16-byte file whose record asks for Linear(40000, 40000): naming torch.nn:Linear
    # trusts the class, not the file's arguments, which are refused before any allocation.
    import torch

    from initscope.io.saving import METADATA_KEY, Provenance, write_safetensors

    record = Provenance(
        "0",
        model={"ref": "torch.nn:Linear", "args": [40000, 40000], "kwargs": {"bias": False}},
    )
    out = tmp_path / "small.safetensors"
    write_safetensors(out, {"weight": torch.zeros(2, 2)}, {METADATA_KEY: record.to_json()})
    result = runner.invoke(app, ["report", str(out), "--model", "torch.nn:Linear"])
    assert result.exit_code == 2, result.output
    assert (
        f"{out}'s record gives torch.nn:Linear its arguments, but its names or shapes do not "
        "match the file's; building it with --arg alone"
    ) in result.stderr
    assert "bad arguments for torch.nn:Linear" in result.stderr
