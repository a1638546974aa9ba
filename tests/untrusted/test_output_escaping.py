"""Output is data, never control: names from a file reach no terminal raw, no spreadsheet as
a formula, no Markdown table as a broken row. Odd values and odd exceptions end in figures or
one line, never a traceback. Each test is a reproduction that failed before its fix."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from initscope.io.saving import write_safetensors

# What must never be printed raw: C0 controls but tab and newline, DEL, C1, bidi controls.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
HOSTILE = {
    "clear": "\x1b[2J\x1b[31mred",
    "title": "\x1b]0;owned\x07x",
    "cr": "fake\rrow",
    "nl": "two\nlines",
    "pipe": "a|b",
    "formula": "=cmd|' /C calc'!A0",
    "bidi": "safe\u202eexe.txt",
}


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    tensors = {f"{v}.weight": torch.randn(8, 8) for v in HOSTILE.values()}
    tensors["\x1b[2J.weight"] = torch.full((8, 8), float("nan"))  # check reports it, by name
    path = tmp_path / "hostile.safetensors"
    write_safetensors(path, tensors)
    return path


def _clean(result: object) -> None:
    out: str = result.stdout + result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in out
    found = RAW.search(out)
    assert found is None, f"raw {found.group()!r} in: {out[max(found.start() - 40, 0) :][:120]!r}"


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_report_prints_names_escaped(runner: CliRunner, hostile: Path, fmt: str) -> None:
    result = runner.invoke(app, ["report", str(hostile), "--format", fmt])
    assert result.exit_code == 0, result.output
    _clean(result)
    if fmt == "table":
        assert "\\x1b[2J\\x1b[31mred" in result.stdout
        assert "two\\x0alines" in result.stdout
    if fmt == "json":  # JSON carries the real names, escaped by JSON itself
        names = {p["name"] for p in json.loads(result.stdout)["parameters"]}
        assert f"{HOSTILE['nl']}.weight" in names


def test_csv_cells_are_not_formulas(runner: CliRunner, hostile: Path) -> None:
    result = runner.invoke(app, ["report", str(hostile), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(HOSTILE) + 1
    names = {r["name"] for r in rows}
    assert "'=cmd|' /C calc'!A0.weight" in names
    assert not any(n[:1] in "=+-@" for n in names)
    numbers = [float(r["mean"]) for r in rows if r["mean"]]  # numbers stay numbers: -0.1
    assert any(x < 0 for x in numbers)


def test_markdown_rows_keep_their_cells(runner: CliRunner, hostile: Path) -> None:
    result = runner.invoke(app, ["report", str(hostile), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `")]
    assert len(rows) == len(HOSTILE) + 1
    header = next(line for line in result.stdout.splitlines() if line.startswith("| parameter"))
    cells = len(re.split(r"(?<!\\)\|", header))
    assert all(len(re.split(r"(?<!\\)\|", row)) == cells for row in rows)


@pytest.mark.parametrize("fmt", ["text", "github", "junit", "json"])
def test_check_prints_names_escaped(runner: CliRunner, hostile: Path, fmt: str) -> None:
    result = runner.invoke(app, ["check", str(hostile), "--format", fmt])
    assert result.exit_code == 1, result.output
    _clean(result)
    if fmt == "text":
        assert "\\x1b[2J.weight: nonfinite" in result.stdout


def test_junit_failure_text_keeps_one_line_per_violation(runner: CliRunner, tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    path = tmp_path / "two.safetensors"  # 1e30 everywhere: abs_max and uninitialized
    write_safetensors(path, {f"{HOSTILE['nl']}.weight": torch.full((8, 8), 1e30)})
    result = runner.invoke(app, ["check", str(path), "--format", "junit"])
    assert result.exit_code == 1, result.output
    _clean(result)
    failure = ET.fromstring(result.stdout).find(".//failure")
    assert failure is not None and failure.text is not None, result.stdout
    lines = failure.text.splitlines()  # the name's newline escaped, the joining ones kept
    assert len(lines) == 2, lines
    assert all(line.startswith("two\\x0alines.weight: ") for line in lines), lines


def test_diff_apply_and_errors_print_names_escaped(
    runner: CliRunner, hostile: Path, tmp_path: Path
) -> None:
    _clean(runner.invoke(app, ["diff", str(hostile), str(hostile)]))
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - param: weight\n    init: zeros\nunmatched: keep\n")
    plan = runner.invoke(app, ["apply", "--rules", str(rules), str(hostile), "--dry-run"])
    assert plan.exit_code == 0, plan.output
    _clean(plan)
    # An error that lists the file's names: loading it into a model they do not fit.
    error = runner.invoke(app, ["report", str(hostile), "--model", "torch.nn:Linear",
                                "--arg", "in_features=8", "--arg", "out_features=8"])  # fmt: skip
    assert error.exit_code == 2, error.output
    _clean(error)


def test_escape_helpers() -> None:
    from initscope.render.common import csv_cell, escape_text

    assert escape_text("a\x1bb\u202ec\nd") == "a\\x1bb\\u202ec\\x0ad"
    assert escape_text("a\nb\tc\x1b", keep="\n\t") == "a\nb\tc\\x1b"
    # Every character through U+2FFF, with each set of kept characters the renderers use:
    # controls escaped unless kept, everything else as it is.
    everything = "".join(chr(c) for c in range(0x3000) if not 0xD800 <= c < 0xE000)
    for keep in ("", "\n\t", "\r\n"):
        expected = "".join(
            c
            if c in keep or not (RAW.match(c) or c in "\t\n")
            else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
            for c in everything
        )
        assert escape_text(everything, keep) == expected
    assert [csv_cell(x) for x in ("=1+1", "+x", "-y", "@z", "\tq", "ok")] == [
        "'=1+1", "'+x", "'-y", "'@z", "\\x09q", "ok",
    ]  # fmt: skip


# -- odd values and odd exceptions -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
@pytest.mark.parametrize("fused", ["1", "0"])
def test_float64_values_past_the_float_range_give_figures(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, fused: str
) -> None:
    monkeypatch.setenv("INITSCOPE_FUSED", fused)
    torch.manual_seed(0)
    tensors = {
        "huge": torch.rand(1000, dtype=torch.float64) * 1e300,
        "big": torch.rand(1000, dtype=torch.float64) * 1e90,
    }
    path = tmp_path / f"big.{suffix}"
    if suffix == "pt":
        torch.save(tensors, path)
    else:
        write_safetensors(path, tensors)
    for args in (
        ["report", str(path)],
        ["report", str(path), "--format", "json"],
        ["check", str(path)],
        ["diff", str(path), str(path)],
        ["plot", str(path), "-o", str(tmp_path / "p.png")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code in (0, 1), (args, result.output)
        assert "internal error" not in result.stderr, result.stderr
    table = runner.invoke(app, ["report", str(path)]).stdout
    assert re.search(r"huge\s.*\binf$", table, re.M), table


def test_a_base_exception_from_a_library_is_one_line(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class LibraryAbort(BaseException):  # as torch.distributed.checkpoint's CheckpointException
        pass

    import initscope.measure.report as report

    def raises(*args: object, **kwargs: object) -> None:
        raise LibraryAbort("a reader gave up")

    monkeypatch.setattr(report, "build_report", raises)
    result = runner.invoke(app, ["report", "torch.nn:Linear", "--arg", "in_features=2",
                                 "--arg", "out_features=2"])  # fmt: skip
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("initscope: internal error: LibraryAbort: a reader gave up")
    assert len(result.stderr.splitlines()) == 1


def crafted_inputs(folder: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    names = folder / "names.safetensors"
    write_safetensors(names, {f"{v}.weight": torch.randn(4, 4) for v in HOSTILE.values()})
    big = folder / "float64.pt"
    torch.save({"w": torch.rand(1000, dtype=torch.float64) * 1e300}, big)
    return {"hostile-names": names, "float64-past-range": big}
