"""Bad rules files, one mistake each, and the exact lines initscope prints for them.

The files live in ``tests/cases/rules/``; ``cases.yaml`` there (its header documents the keys)
gives each one's target and expected output. Each case runs ``initscope rules validate FILE
[TARGET]`` with the current directory set to that folder, so messages say
``name.yaml:line:col``, and, when it has a target, ``initscope apply --rules FILE TARGET -o
OUT`` into a tmp dir. The CLI is run through :func:`initscope.cli.main`, the console-script
entry point, so click's own usage errors are one line as well.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from initscope.cli import main
from initscope.io.targets import import_ref

CASES_DIR = Path(__file__).parent / "cases" / "rules"
CASES_FILE = CASES_DIR / "cases.yaml"

_CASE_KEYS = {"file", "mistake", "target", "checkpoint", "stderr", "bug", "validate", "apply"}
_EXPECT_KEYS = {"exit", "stdout", "stderr"}
_CHECKPOINT_KEYS = {"name", "state_dict", "kwargs"}
CHECKPOINT = "{checkpoint}"


# -- the cases file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What one command must do: its exit code and its exact stdout and stderr lines."""

    exit: int
    stdout: tuple[str, ...]
    stderr: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    file: str
    mistake: str
    target: str | None
    checkpoint: Mapping[str, Any] | None
    validate: Expect
    apply: Expect | None  # None: no target, so only `rules validate FILE` runs
    bug: str | None

    @property
    def id(self) -> str:
        return self.file.removesuffix(".yaml")


def _lines(value: object, where: str) -> tuple[str, ...]:
    assert isinstance(value, list) and all(isinstance(s, str) for s in value), (
        f"{where}: expected a list of lines, got {value!r}"
    )
    return tuple(value)


def _expect(raw: Mapping[str, Any], override: object, where: str) -> Expect:
    over: Mapping[str, Any] = {}
    if override is not None:
        assert isinstance(override, dict), f"{where}: expected a mapping"
        bad = set(override) - _EXPECT_KEYS
        assert not bad, f"{where}: unknown keys {sorted(bad)}"
        over = override
    stderr = over.get("stderr", raw.get("stderr"))
    assert stderr is not None, f"{where}: needs stderr lines"
    exit_code = over.get("exit", 2)
    assert isinstance(exit_code, int), f"{where}: exit must be an integer"
    assert exit_code == 2 or raw.get("bug"), (
        f"{where}: only a case with `bug:` may expect exit {exit_code} rather than 2"
    )
    return Expect(exit_code, _lines(over.get("stdout", []), where), _lines(stderr, where))


def _load_cases() -> list[Case]:
    doc = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
    cases: list[Case] = []
    for raw in doc["cases"]:
        where = f"{CASES_FILE}: case {raw.get('file', '?')!r}"
        unknown = set(raw) - _CASE_KEYS
        assert not unknown, f"{where}: unknown keys {sorted(unknown)}"
        file = raw.get("file")
        assert isinstance(file, str) and (CASES_DIR / file).is_file(), f"{where}: no such file"
        assert isinstance(raw.get("mistake"), str), f"{where}: needs a mistake"
        target = raw.get("target")
        checkpoint = raw.get("checkpoint")
        assert (target == CHECKPOINT) == (checkpoint is not None), (
            f"{where}: a checkpoint recipe goes with target: {CHECKPOINT!r}, and only with it"
        )
        if checkpoint is not None:
            bad = set(checkpoint) ^ _CHECKPOINT_KEYS
            assert not bad, f"{where}: checkpoint needs exactly {sorted(_CHECKPOINT_KEYS)}"
        assert target is not None or "apply" not in raw, f"{where}: apply needs a target"
        cases.append(
            Case(
                file=file,
                mistake=raw["mistake"],
                target=target,
                checkpoint=checkpoint,
                validate=_expect(raw, raw.get("validate"), f"{where}: validate"),
                apply=None if target is None else _expect(raw, raw.get("apply"), f"{where}: apply"),
                bug=raw.get("bug"),
            )
        )
    files = [c.file for c in cases]
    assert len(files) == len(set(files)), f"{CASES_FILE}: a file is listed twice"
    return cases


CASES = _load_cases()
VALIDATE = [pytest.param(c, id=c.id) for c in CASES]
APPLY = [pytest.param(c, id=c.id) for c in CASES if c.apply is not None]


# -- running -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    exit_code: int
    stdout: str
    stderr: str
    warnings: tuple[str, ...]  # what Python would print on stderr in a real run

    @property
    def output(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def _run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> Run:
    capsys.readouterr()
    # pytest records warnings instead of printing them; record them here under Python's
    # default filters, as test_errors.py does, so that they count as stderr lines.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
            warnings.simplefilter("ignore", quiet)
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(SystemExit) as exit_info:
            main(list(argv))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    shown = tuple(f"{w.category.__name__}: {w.message}" for w in caught)
    return Run(code if isinstance(code, int) else 0, out, err, shown)


def _check(run: Run, expect: Expect, subst: Mapping[str, str]) -> None:
    def expand(lines: Sequence[str]) -> list[str]:
        out = []
        for line in lines:
            for key, value in subst.items():
                line = line.replace(key, value)
            out.append(line)
        return out

    assert run.exit_code == expect.exit, run.output
    assert "Traceback" not in run.stdout + run.stderr, run.output
    assert run.stderr.splitlines() == expand(expect.stderr), run.output
    assert run.stderr == "" or run.stderr.endswith("\n"), run.output
    assert run.stdout.splitlines() == expand(expect.stdout), run.output
    assert not run.warnings, f"warnings would print on stderr too: {run.warnings}"


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _make_checkpoint(case: Case, folder: Path) -> Path:
    assert case.checkpoint is not None
    folder.mkdir()
    path = folder / case.checkpoint["name"]
    torch.manual_seed(0)
    model = import_ref(case.checkpoint["state_dict"])(**case.checkpoint["kwargs"])
    torch.save(model.state_dict(), path)
    return path


def _target(case: Case, tmp: Path) -> tuple[str | None, Path | None]:
    """The case's TARGET argument, and the checkpoint file when the target is one."""
    if case.target == CHECKPOINT:
        path = _make_checkpoint(case, tmp / "in")
        return str(path), path
    return case.target, None


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VALIDATE)
def test_rules_validate(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, checkpoint = _target(case, tmp_path)
    before = checkpoint.read_bytes() if checkpoint is not None else None
    monkeypatch.chdir(CASES_DIR)
    files = _listing(CASES_DIR)
    run = _run(["rules", "validate", case.file, *([target] if target else [])], capsys)
    _check(run, case.validate, {"{tmp}": str(tmp_path)})
    assert _listing(CASES_DIR) == files, "rules validate wrote into the cases folder"
    if checkpoint is not None:
        assert checkpoint.read_bytes() == before, "rules validate changed its target"
        assert _listing(checkpoint.parent) == [checkpoint.name]


@pytest.mark.parametrize("case", APPLY)
def test_apply(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert case.apply is not None
    target, checkpoint = _target(case, tmp_path)
    assert target is not None
    before = checkpoint.read_bytes() if checkpoint is not None else None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.safetensors"
    monkeypatch.chdir(CASES_DIR)
    files = _listing(CASES_DIR)
    run = _run(["apply", "--rules", case.file, target, "-o", str(out)], capsys)
    _check(run, case.apply, {"{tmp}": str(tmp_path)})
    assert _listing(CASES_DIR) == files, "apply wrote into the cases folder"
    if run.exit_code != 0:
        assert not out.exists(), f"a failed apply wrote {out}"
        assert _listing(out_dir) == [], f"a failed apply left files in {out_dir}"
    if checkpoint is not None:
        assert checkpoint.read_bytes() == before, "apply changed its input checkpoint"
        assert _listing(checkpoint.parent) == [checkpoint.name]


def test_every_file_in_the_folder_is_a_case() -> None:
    on_disk = {p.name for p in CASES_DIR.glob("*.yaml")} - {CASES_FILE.name}
    assert on_disk == {c.file for c in CASES}


def test_the_cases_cover_both_stages_and_several_problems() -> None:
    # The folder is the acceptance test of the issue: file-only mistakes, mistakes only a
    # model reveals, bare checkpoints, and files whose every problem must be reported.
    assert sum(c.target is None for c in CASES) >= 30
    assert sum(c.target is not None and c.target != CHECKPOINT for c in CASES) >= 8
    assert sum(c.target == CHECKPOINT for c in CASES) >= 2
    several = [c for c in CASES if len(c.validate.stderr) > 2]
    assert len(several) >= 2
    for c in several:
        n = len(c.validate.stderr) - 1
        assert c.validate.stderr[-1] == (
            f"initscope: error: {n} problems in the rules; nothing was changed"
        ), c.file
