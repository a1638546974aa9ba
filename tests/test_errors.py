"""Every user mistake ends in exit code 2 and one ``initscope: error: ...`` line, no traceback.

The cases live in ``tests/cases/errors/cases.yaml`` (its header documents the vocabulary); this
module builds each case's files in a tmp dir, runs the CLI and checks the contract. A few
properties that are not one-error-line cases (``--debug``, ``--unsafe-load`` succeeding,
nothing written on error) are plain tests at the end.
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner, Result

from initscope.cli import app
from initscope.io.targets import import_ref

CASES_FILE = Path(__file__).parent / "cases" / "errors" / "cases.yaml"
PREFIX = "initscope: error: "
# A report command that works, to point --output at places.
LINEAR = ["report", "nn.Linear", "-a", "in_features=2", "-a", "out_features=2"]

_CASE_KEYS = {"id", "args", "message", "match", "files", "xfail"}
# the recipe keys that say what a file is made from (exactly one per file)
_SOURCES = {"text", "hex", "garbage", "directory", "tensor", "tensors", "value"}
_SOURCES |= {"state_dict", "module"}
_RECIPE_KEYS = _SOURCES | {"kwargs", "truncate", "overwrite", "replace"}


# -- the cases file --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    messages: tuple[str, ...]
    patterns: tuple[str, ...]
    files: Mapping[str, Mapping[str, Any]]
    xfail: str | None


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    assert isinstance(items, list) and all(isinstance(s, str) for s in items), (
        f"{where}: expected a string or a list of strings, got {value!r}"
    )
    return tuple(items)


def _load_cases() -> list[Case]:
    doc = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
    cases: list[Case] = []
    for raw in doc["cases"]:
        where = f"{CASES_FILE}: case {raw.get('id', '?')!r}"
        unknown = set(raw) - _CASE_KEYS
        assert not unknown, f"{where}: unknown keys {sorted(unknown)}"
        assert isinstance(raw.get("id"), str), f"{where}: needs an id"
        args = raw.get("args")
        assert isinstance(args, list) and args, f"{where}: needs args"
        files = raw.get("files") or {}
        for name, recipe in files.items():
            assert isinstance(recipe, dict), f"{where}: file {name!r} needs a recipe mapping"
            bad = set(recipe) - _RECIPE_KEYS
            assert not bad, f"{where}: file {name!r}: unknown recipe keys {sorted(bad)}"
            sources = set(recipe) & _SOURCES
            assert len(sources) == 1, f"{where}: file {name!r} needs exactly one of {_SOURCES}"
        case = Case(
            id=raw["id"],
            args=tuple(str(a) for a in args),
            messages=_strings(raw.get("message"), where),
            patterns=_strings(raw.get("match"), where),
            files=files,
            xfail=raw.get("xfail"),
        )
        assert case.messages or case.patterns, f"{where}: needs a message or a match"
        cases.append(case)
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), f"{CASES_FILE}: duplicate ids"
    return cases


CASES = _load_cases()


def _params() -> list[Any]:
    return [
        pytest.param(
            c,
            id=c.id,
            # raises=AssertionError: a CaseSetupError still fails an xfail case
            marks=[pytest.mark.xfail(strict=True, raises=AssertionError, reason=c.xfail)]
            if c.xfail
            else [],
        )
        for c in CASES
    ]


# -- building a case's files -----------------------------------------------------------------


class CaseSetupError(Exception):
    """A recipe cannot be followed: a broken case, never an expected failure."""


def _save_state(state: Mapping[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(dict(state), path)


def _make_file(path: Path, recipe: Mapping[str, Any]) -> None:
    kwargs = recipe.get("kwargs") or {}
    if "directory" in recipe:
        path.mkdir(parents=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if "text" in recipe:
        path.write_text(recipe["text"], encoding="utf-8")
    elif "hex" in recipe:
        path.write_bytes(bytes.fromhex(recipe["hex"]))
    elif "garbage" in recipe:
        path.write_bytes(random.Random(path.name).randbytes(int(recipe["garbage"])))
    elif "tensors" in recipe:
        _save_state({k: torch.zeros(s) for k, s in recipe["tensors"].items()}, path)
    elif "tensor" in recipe:
        torch.save(torch.zeros(recipe["tensor"]), path)
    elif "state_dict" in recipe:
        torch.manual_seed(0)
        _save_state(import_ref(recipe["state_dict"])(**kwargs).state_dict(), path)
    elif "module" in recipe:
        torch.save(import_ref(recipe["module"])(**kwargs), path)
    elif "value" in recipe:
        torch.save(recipe["value"], path)
    data = path.read_bytes()
    if "overwrite" in recipe:
        spot = recipe["overwrite"]
        at = int(spot["at"])
        patch = spot["text"].encode() if "text" in spot else bytes.fromhex(spot["hex"])
        data = data[:at] + patch + data[at + len(patch) :]
    for swap in recipe.get("replace") or []:
        old = swap["old"].encode() if "old" in swap else bytes.fromhex(swap["old_hex"])
        new = swap["new"].encode() if "new" in swap else bytes.fromhex(swap["new_hex"])
        if len(old) != len(new) or old not in data:
            raise CaseSetupError(f"{path.name}: cannot replace {old!r} with {new!r}")
        data = data.replace(old, new, 1)
    if "truncate" in recipe:
        data = data[: int(len(data) * float(recipe["truncate"]))]
    path.write_bytes(data)


def _prepare(case: Case, tmp: Path) -> tuple[list[str], list[str]]:
    """Create the case's files; return its argv and expected substrings with {tmp} expanded."""
    for name, recipe in case.files.items():
        _make_file(tmp / name, recipe)
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    messages = [m.replace("{tmp}", str(tmp)) for m in case.messages]
    return args, messages


# -- running and checking ---------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    result: Result
    warnings: tuple[str, ...]  # what Python would print to stderr in a real run

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def stderr(self) -> str:
        return self.result.stderr

    @property
    def stdout(self) -> str:
        return self.result.stdout

    @property
    def output(self) -> str:
        return self.result.output


def _run(args: Sequence[str]) -> Run:
    # pytest records warnings instead of printing them; record them here, under Python's
    # default filters, so that the checks can count them as the stderr lines they would be.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
            warnings.simplefilter("ignore", quiet)
        warnings.simplefilter("ignore", ResourceWarning)
        result = CliRunner().invoke(app, list(args))
    shown = tuple(f"{w.category.__name__}: {w.message}" for w in caught)
    return Run(result, shown)


def assert_one_error_line(result: Run) -> str:
    """The user-error contract; returns the error line without its prefix."""
    assert result.exit_code == 2, result.output
    assert not result.warnings, f"warnings would print on stderr too: {result.warnings}"
    assert "Traceback" not in result.output, result.output
    assert result.stdout == "", result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    assert lines[0].startswith(PREFIX), result.stderr
    assert len(lines[0]) > len(PREFIX) + 10, result.stderr
    return lines[0][len(PREFIX) :]


def _check_message(line: str, messages: Sequence[str], patterns: Sequence[str]) -> None:
    for m in messages:
        assert m in line, f"expected {m!r} in the error line:\n{line}"
    for p in patterns:
        assert re.search(p, line), f"expected /{p}/ to match the error line:\n{line}"


@pytest.mark.parametrize("case", _params())
def test_error_case(case: Case, tmp_path: Path) -> None:
    args, messages = _prepare(case, tmp_path)
    line = assert_one_error_line(_run(args))
    _check_message(line, messages, case.patterns)


@pytest.mark.parametrize("case", _params())
def test_error_case_with_debug_shows_traceback(case: Case, tmp_path: Path) -> None:
    args, messages = _prepare(case, tmp_path)
    result = _run(["--debug", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback (most recent call last)" in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(PREFIX), result.stderr
    _check_message(last[len(PREFIX) :], messages, case.patterns)


def test_command_level_debug_flag_shows_traceback() -> None:
    result = _run(["report", "torch.nn:Linaer", "--debug"])
    assert result.exit_code == 2, result.output
    assert "Traceback (most recent call last)" in result.stderr
    assert "TargetError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(PREFIX)


def test_debug_state_does_not_leak_into_the_next_run() -> None:
    assert _run(["--debug", "report", "torch.nn:Linaer"]).exit_code == 2
    assert_one_error_line(_run(["report", "torch.nn:Linaer"]))


def test_cases_file_covers_every_recipe_source() -> None:
    used = {src for c in CASES for r in c.files.values() for src in set(r) & _SOURCES}
    assert used == _SOURCES


# -- not one-error-line cases -----------------------------------------------------------------


def test_pickled_module_loads_with_unsafe_load(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(5, 3), path)
    assert_one_error_line(_run(["report", str(path)]))
    result = _run(["report", str(path), "--unsafe-load", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert '"weight"' in result.stdout or "weight" in result.stdout


_FAILING_FOR_OUTPUT: dict[str, tuple[list[str], dict[str, dict[str, Any]]]] = {
    "unknown-class": (["report", "torch.nn:Linaer"], {}),
    "truncated-pt": (
        ["report", "{tmp}/tiny.pt"],
        {"tiny.pt": {"state_dict": "tests.fixtures.models:Tiny", "truncate": 0.5}},
    ),
    "key-mismatch": (
        ["report", "{tmp}/partial.pt", "--model", "tests.fixtures.models:Tiny"],
        {"partial.pt": {"tensors": {"fc.weight": [3, 4]}}},
    ),
    "lazy-without-shape": (["report", "tests.fixtures.models:LazyNet"], {}),
}


@pytest.mark.parametrize("fmt", ["json", "table"])
@pytest.mark.parametrize("which", sorted(_FAILING_FOR_OUTPUT))
def test_failed_report_writes_nothing(which: str, fmt: str, tmp_path: Path) -> None:
    argv, files = _FAILING_FOR_OUTPUT[which]
    case = Case(which, tuple(argv), (), (), files, None)
    args, _ = _prepare(case, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_error_line(_run([*args, "--format", fmt, "--output", f"{tmp_path}/out.json"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_failed_report_keeps_an_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    out.write_text("previous report\n", encoding="utf-8")
    assert_one_error_line(_run(["report", "torch.nn:Linaer", "--output", str(out)]))
    assert out.read_text(encoding="utf-8") == "previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_successful_report_writes_only_the_output(tmp_path: Path) -> None:
    # The control for the two tests above: the same command that works does write out.json.
    out = tmp_path / "out.json"
    result = _run([*LINEAR, "--format", "json", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert out.read_text(encoding="utf-8").startswith("{")


def test_output_onto_a_directory_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = _run([*LINEAR, "--output", str(tmp_path / "out")])
    assert_one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert list((tmp_path / "out").iterdir()) == []
