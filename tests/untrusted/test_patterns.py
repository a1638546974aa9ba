"""Rules, expectations and spec files are data anyone can hand over: no pattern, size or shape
of one may hang initscope, exhaust its memory or run code. Each test is a reproduction that
failed before its fix; each runs under a hard timeout (a subprocess with ``timeout=``, or
``signal.alarm`` around Python-level work), so a regression fails instead of hanging the
suite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from initscope.io.saving import write_safetensors
from initscope.rules.language import RulesError, load_rules

ROOT = Path(__file__).resolve().parents[2]


def _initscope(*args: str, timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: this checkout's initscope, whatever the working folder.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "initscope", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


class _Hung(Exception):
    pass


@contextmanager
def _within(seconds: int) -> Iterator[None]:
    """Fail a Python-level loop that runs past ``seconds`` (SIGALRM, main thread)."""

    def hung(signum: int, frame: object) -> None:
        raise _Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("initscope: error: "), lines[0][:500]
    return lines[0]


def _model(path: Path) -> Path:
    name = "a" * 31 + "!"
    write_safetensors(path, {f"{name}.weight": torch.ones(4, 4), f"{name}.bias": torch.ones(4)})
    return path


# -- re: patterns ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_catastrophic_regex_matches_in_linear_time(tmp_path: Path) -> None:
    # Python's re takes 2^31 steps for (a+)+$ against 31 a's and a '!': hours.
    path = _model(tmp_path / "m.safetensors")
    rules = tmp_path / "r.yaml"
    rules.write_text('rules:\n  - name: "re:(a+)+$"\n    init: zeros\nunmatched: keep\n')
    out = tmp_path / "out.safetensors"
    done = _initscope("apply", "--rules", str(rules), str(path), "-o", str(out), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "0 by an init rule" in done.stdout or "not covered" in done.stdout
    check = _initscope("check", str(path), "--rules", str(rules), timeout=60)
    assert check.returncode in (0, 1), check.stderr


def test_regex_matching_is_a_full_match() -> None:
    from initscope.rules.language import name_regex

    match = name_regex(r"encoder\.layers\.\d+\.attn")
    assert match("encoder.layers.11.attn")
    assert not match("encoder.layers.11.attn.out")
    assert not match("x.encoder.layers.1.attn")


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        (r"(a)\1", "is not supported by the linear-time regex engine (RE2: invalid escape"),
        ("(?=a)a", "is not supported by the linear-time regex engine (RE2: invalid perl op"),
        ("(?<!a)b", "is not supported by the linear-time regex engine (RE2: invalid perl op"),
        ("a{1001}", "is not supported by the linear-time regex engine (RE2: invalid repetit"),
        ("down[12.*", "invalid regular expression 'down[12.*': missing ]"),
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
    assert line.startswith(f"{rules}:2:5: rules[0].name: "), line
    assert says in line and "RE2 syntax" in line, line


def test_without_re2_a_pattern_is_refused_not_backtracked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where google-re2 cannot be installed, no bound on Python's re is safe (a*a*a*a*a*b
    # nests nothing and still takes n^5 steps): re: patterns are a rules error.
    from initscope.rules.language import name_regex

    monkeypatch.setitem(sys.modules, "re2", None)  # `import re2` raises ImportError
    name_regex.cache_clear()
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - name: 're:(a+)+$'\n    init: zeros\n")
    try:
        with _within(10), pytest.raises(RulesError) as info:
            load_rules(str(rules), {})
    finally:
        name_regex.cache_clear()
    line = info.value.lines()[0]
    assert line.startswith(f"{rules}:2:5: rules[0].name: re: patterns need the google-re2"), line
    assert "pip install google-re2" in line


def test_thousands_of_costly_patterns_are_refused_quickly(tmp_path: Path) -> None:
    # Under RE2's default 8 MB budget, \pL{400} (every Unicode letter, 400 times) compiled in
    # 0.2 s to 3 MB: 2,000 such rules took minutes and gigabytes. A pattern now has 256 KB,
    # and a file at most 256 different patterns.
    rules = tmp_path / "patterns.yaml"
    rules.write_text(
        "rules:\n"
        + "".join(f"  - init: zeros\n    name: 're:\\pL{{400}}x{i}'\n" for i in range(2_000))
    )
    with _within(30), pytest.raises(RulesError) as info:
        load_rules(str(rules), {})
    problems = info.value.problems
    assert len(problems) == 2_000
    assert problems[0].message.endswith(": pattern too large - compile failed")
    assert problems[256].message == "more than 256 different re: patterns in one file"
    assert problems[-1].where == f"{rules}:4001:5"


# -- size of the rules file -----------------------------------------------------------------


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


def test_thousands_of_dotted_types_are_refused_quickly(tmp_path: Path) -> None:
    # Each type path that fails to import cost 15 ms (a scan of every installed module for
    # a did-you-mean): 20,000 rules took five minutes. A file imports at most 8 modules and
    # names at most 64 paths; past that each one is refused without a look.
    rules = tmp_path / "types.yaml"
    rules.write_text(
        "rules:\n" + "".join(f"  - init: zeros\n    type: nosuch{i}.X\n" for i in range(20_000))
    )
    with _within(30), pytest.raises(RulesError) as info:
        load_rules(str(rules), {})
    problems = info.value.problems
    assert len(problems) == 20_000
    assert problems[0].message.startswith(
        "type 'nosuch0.X' is not imported: nosuch0 is not an installed package"
    )
    assert problems[8].message == (
        "type 'nosuch8.X': nosuch8 is not imported, and one rules file may import at most 8 "
        "modules for its types"
    )
    assert problems[64].message == "more than 64 different dotted type paths in one file"
    assert problems[-1].where == f"{rules}:40001:5"


def test_a_file_past_the_size_limit_is_refused_before_it_is_parsed(
    runner: CliRunner, tmp_path: Path
) -> None:
    # PyYAML parses about 1 MB/s: 16 MB of one plain scalar took 18 s.
    rules = tmp_path / "big.yaml"
    with rules.open("w") as fh:
        fh.write("rules:\n  - init: zeros\n    name: ")
        fh.write("ab " * (2 * 2**20))
        fh.write("\n")
    result = runner.invoke(app, ["rules", "validate", str(rules)])
    assert result.exit_code == 2, result.output[-500:]
    line = _one_error_line(result.stderr)
    assert line.startswith(f"initscope: error: {rules} is larger than 4 MiB"), line


@pytest.mark.slow
def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    # Opening a FIFO for reading blocks until some writer opens it: forever.
    fifo = tmp_path / "rules.yaml"
    os.mkfifo(fifo)
    target = _model(tmp_path / "m.safetensors")
    for args in (
        ("rules", "validate", str(fifo)),
        ("check", str(target), "--rules", str(fifo)),
        ("check", str(target), "--expect", str(fifo)),
    ):
        done = _initscope(*args, timeout=30)
        assert done.returncode == 2, done.stderr[-500:]
        line = _one_error_line(done.stderr)
        assert f"{fifo} is not a regular file" in line, line


def test_an_echoed_value_is_cut_not_printed_whole(runner: CliRunner, tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    for text, says in (
        (f"unmatched: {'x' * 1_000_000}", "(1000000 characters)"),
        (f"seed: {'9' * 4000}", "got an integer of more than 80 digits"),
        (f"? {'k' * 100_000}\n: 1", "unknown key 'kkkk"),  # an explicit key: any length
    ):
        rules.write_text(f"{text}\nrules:\n  - init: zeros\n")
        result = runner.invoke(app, ["rules", "validate", str(rules)])
        assert result.exit_code == 2, result.output[-500:]
        line = _one_error_line(result.stderr)
        assert says in line and len(line) < 500, line[:600]


# -- YAML bombs and nesting -----------------------------------------------------------------


def _list_bomb() -> str:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        name, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"{name}: &{name} [" + ",".join(["*" + prev] * 9) + "]")
    return "\n".join(lines) + "\nrules:\n  - param: bias\n    init: zeros\n    bomb: *i\n"


def _duplicate_key_bomb() -> str:
    # Each level repeats one key nine times over an alias of the level below: the walk that
    # locates every value met 9^11 of them at the same few paths, and the count of distinct
    # paths never grew past the limit (minutes, 4 GB).
    lines = ["l0: &l0 {k: x}"]
    for i in range(1, 12):
        lines.append(f"l{i}: &l{i} {{" + ", ".join([f"k: *l{i - 1}"] * 9) + "}")
    return "\n".join(lines) + "\nrules:\n  - init: zeros\n"


def _complex_key_bomb() -> str:
    # Keys are never walked, and a list used as a key was named by str(): the repr of a
    # node spells out every alias inside it, 9^9 nodes (minutes, 5 GB).
    lines = ['? &a ["x","x","x","x","x","x","x","x","x"]\n: 1']
    for i in range(1, 9):
        name, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"? &{name} [" + ",".join(["*" + prev] * 9) + "]\n: 1")
    return "\n".join(lines) + "\nrules:\n  - init: zeros\n"


def _deep() -> str:
    return "rules: " + "[" * 100_000 + "]" * 100_000 + "\n"


YAML_BOMBS = {
    "list-bomb": (_list_bomb, "expands to more than 100000 values"),
    "duplicate-key-bomb": (_duplicate_key_bomb, "expands to more than 100000 values"),
    "complex-key-bomb": (_complex_key_bomb, ":1:3: a key is a list or a mapping"),
    "deep": (_deep, "nested too deeply"),
}


def test_alias_bombs_and_deep_nesting_are_one_line(runner: CliRunner, tmp_path: Path) -> None:
    target = _model(tmp_path / "m.safetensors")
    for case, (write, says) in YAML_BOMBS.items():
        path = tmp_path / f"{case}.yaml"
        path.write_text(write())
        for args in (
            ["rules", "validate", str(path)],
            ["check", str(target), "--rules", str(path)],
            ["check", str(target), "--expect", str(path)],
            ["report", str(path)],  # as a spec
        ):
            with _within(20):
                result = runner.invoke(app, args)
            assert result.exit_code == 2, (case, args, result.output[-500:])
            assert says in _one_error_line(result.stderr), (case, args)


# -- expectations ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_follows_text_with_many_spaces_is_read_in_linear_time(tmp_path: Path) -> None:
    # `follows:` was read by a regex with \s* on both sides of an optional group: a name,
    # 200,000 spaces and one stray character took time quadratic in the spaces (minutes).
    target = _model(tmp_path / "m.safetensors")
    expect = tmp_path / "e.yaml"
    expect.write_text(f"checks:\n  - param: weight\n    follows: 'normal{' ' * 200_000}x'\n")
    done = _initscope("check", str(target), "--expect", str(expect), timeout=30)
    assert done.returncode == 2, done.stderr[-500:]
    assert "Traceback" not in done.stderr
    assert "as an init" in done.stderr


# -- code ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_type_path_never_imports_a_module_from_the_working_folder(tmp_path: Path) -> None:
    # `type: evil.Block` imported ./evil.py (the working folder was on the search path); an
    # installed package's name (hypothesis) took ./hypothesis.py over the installed one.
    marker = tmp_path / "MARKER"
    payload = f"open({str(marker)!r}, 'w').write('ran')\nclass Block: pass\n"
    (tmp_path / "evil.py").write_text(payload)
    (tmp_path / "hypothesis.py").write_text(payload)
    for ref, says in (
        ("evil.Block", "evil is not an installed package"),
        ("evil:Block", "evil is not an installed package"),
        ("hypothesis.Block", "hypothesis has no attribute 'Block'"),
    ):
        rules = tmp_path / "r.yaml"
        rules.write_text(f"rules:\n  - type: '{ref}'\n    init: zeros\n")
        done = _initscope("rules", "validate", "r.yaml", timeout=60, cwd=tmp_path)
        assert not marker.exists(), ref
        assert done.returncode == 2, (ref, done.stdout, done.stderr[-500:])
        line = _one_error_line(done.stderr)
        assert line.startswith(f"initscope: error: r.yaml:2:5: rules[0].type: type '{ref}'")
        assert says in line, line
    # A class of an imported module, by its dotted path, is what type paths are for.
    rules.write_text("rules:\n  - type: torch.nn.Linear\n    init: zeros\n")
    assert load_rules(str(rules), {}).rules[0].type_classes == (torch.nn.Linear,)


def crafted_inputs(folder: Path) -> dict[str, Path]:
    """A checkpoint whose names are the subject of catastrophic patterns, and YAML specs
    (a TARGET may be a spec) that are alias bombs or nested past the recursion limit."""
    out = {"names-for-catastrophic-regex": _model(folder / "aaaa.safetensors")}
    for case, (write, _) in YAML_BOMBS.items():
        path = folder / f"spec-{case}.yaml"
        path.write_text("model: torch.nn:Linear\nargs: [4, 4]\n" + write().replace("rules", "x"))
        out[f"yaml-{case}"] = path
    return out
