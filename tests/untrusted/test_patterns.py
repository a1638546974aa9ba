"""Rules files are data anyone can hand over: no pattern, size or shape of one may hang
initscope. Each test is a reproduction that failed before its fix; each runs the CLI in a
subprocess under a hard timeout, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from initscope.rules import RulesError, load_rules
from initscope.saving import write_safetensors

ROOT = Path(__file__).resolve().parents[2]


def _initscope(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "initscope", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_a_catastrophic_regex_matches_in_linear_time(tmp_path: Path) -> None:
    # Python's re takes 2^31 steps for (a+)+$ against 31 a's and a '!': hours.
    name = "a" * 31 + "!"
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {f"{name}.weight": torch.ones(4, 4), f"{name}.bias": torch.ones(4)})
    rules = tmp_path / "r.yaml"
    rules.write_text('rules:\n  - name: "re:(a+)+$"\n    init: zeros\nunmatched: keep\n')
    out = tmp_path / "out.safetensors"
    done = _initscope("apply", "--rules", str(rules), str(path), "-o", str(out), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "0 by an init rule" in done.stdout or "not covered" in done.stdout
    check = _initscope("check", str(path), "--rules", str(rules), timeout=60)
    assert check.returncode in (0, 1), check.stderr


def test_regex_matching_is_a_full_match() -> None:
    from initscope.rules import name_regex

    match = name_regex(r"encoder\.layers\.\d+\.attn")
    assert match("encoder.layers.11.attn")
    assert not match("encoder.layers.11.attn.out")
    assert not match("x.encoder.layers.1.attn")


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        (r"(a)\1", "invalid escape sequence"),
        ("(?=a)a", "invalid perl operator"),
        ("a{1001}", "invalid repetition size"),
    ],
)
def test_what_only_a_backtracking_engine_runs_is_a_rules_error(
    tmp_path: Path, pattern: str, says: str
) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(f"rules:\n  - name: 're:{pattern}'\n    init: zeros\n")
    with pytest.raises(RulesError) as info:
        load_rules(str(rules), {})
    line = info.value.lines()[0]
    assert line.startswith(f"{rules}:2:5: rules[0].name: invalid regular expression")
    assert says in line and "RE2 syntax" in line


@pytest.mark.slow
def test_validation_is_linear_in_the_number_of_problems(tmp_path: Path) -> None:
    # 64k unknown keys: the old validator compared each new problem with every earlier one
    # (2 billion comparisons, minutes); now seconds. The shown problems are capped.
    lines = ["rules:", "  - param: bias", "    init: zeros"]
    lines += [f"    unknown{i}: 1" for i in range(64_000)]
    rules = tmp_path / "many.yaml"
    rules.write_text("\n".join(lines) + "\n")
    done = _initscope("rules", "validate", str(rules), timeout=60)
    assert done.returncode == 2, done.stderr[-500:]
    errors = done.stderr.splitlines()
    assert errors[-1] == "initscope: error: 64000 problems in the rules; nothing was changed"
    assert errors[-2] == "initscope: error: ... and 63950 more problems like these"
    assert len(errors) == 52


@pytest.mark.slow
def test_an_alias_bomb_and_deep_nesting_are_one_line(tmp_path: Path) -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        name, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"{name}: &{name} [" + ",".join(["*" + prev] * 9) + "]")
    lines.append("rules:\n  - param: bias\n    init: zeros\n    bomb: *i")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    deep = tmp_path / "deep.yaml"
    deep.write_text("rules: " + "[" * 100_000 + "]" * 100_000 + "\n")
    for path, says in ((bomb, "expands to more than"), (deep, "nested too deeply")):
        done = _initscope("rules", "validate", str(path), timeout=60)
        assert done.returncode == 2, done.stderr[-500:]
        assert says in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.splitlines()) == 1


def crafted_inputs(folder: Path) -> dict[str, Path]:
    """A checkpoint whose names are the subject of catastrophic patterns."""
    path = folder / "aaaa.safetensors"
    name = "a" * 31 + "!"
    write_safetensors(path, {f"{name}.weight": torch.ones(4, 4), f"{name}.bias": torch.ones(4)})
    return {"names-for-catastrophic-regex": path}
