"""Regressions from the review of apply/check/diff: each test is a reproduction that failed
before its fix (crafted files, data loss, false violations, exit 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from initscope.io.saving import METADATA_KEY, Provenance, write_safetensors
from initscope.measure.report import build_report

pytestmark = pytest.mark.usefixtures("one_thread")


def run(runner: CliRunner, *args: str) -> object:
    return runner.invoke(app, list(args))


# -- provenance is data from a file ------------------------------------------------------------


def test_a_record_naming_a_module_beside_the_file_does_not_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "evilmod.py").write_text(
        f"open({str(tmp_path / 'PWNED')!r}, 'w').write('ran')\n"
        "import torch\nclass M(torch.nn.Module):\n    pass\n"
    )
    record = Provenance("0", model={"ref": "evilmod:M", "base_dir": str(tmp_path)})
    path = tmp_path / "crafted.safetensors"
    write_safetensors(path, {"w": torch.zeros(2, 2)}, {METADATA_KEY: record.to_json()})
    monkeypatch.chdir(tmp_path)  # the module is importable from here, too
    with pytest.warns(UserWarning, match="a module in the working folder; initscope does not"):
        report = build_report(str(path))
    assert not report.has_model
    assert not (tmp_path / "PWNED").exists()


def test_a_record_asking_for_a_huge_model_is_not_built(tmp_path: Path) -> None:
    record = Provenance(
        "0",
        model={"ref": "torch.nn:Linear", "kwargs": {"in_features": 10**6, "out_features": 10**6}},
    )
    path = tmp_path / "huge.safetensors"
    write_safetensors(path, {"weight": torch.zeros(2, 2)}, {METADATA_KEY: record.to_json()})
    with pytest.warns(UserWarning, match="names or shapes do not match"):
        report = build_report(str(path))  # built on meta only: no 4 TB allocation
    assert not report.has_model


# -- outputs never replace inputs, and never lose data -----------------------------------------


def test_check_and_diff_refuse_an_output_that_is_an_input(
    runner: CliRunner, linear_pt: Path
) -> None:
    before = linear_pt.read_bytes()
    for args in (["check", str(linear_pt)], ["diff", str(linear_pt), str(linear_pt)]):
        result = runner.invoke(app, [*args, "-o", str(linear_pt)])
        assert result.exit_code == 2, result.output
        assert "is one of the inputs" in result.stderr
    assert linear_pt.read_bytes() == before


def test_in_place_refuses_a_training_checkpoint(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "train.pt"
    lin = torch.nn.Linear(4, 3)
    torch.save({"epoch": 7, "optimizer": {"lr": 0.1}, "state_dict": lin.state_dict()}, path)
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - param: bias\n    init: zeros\n")
    before = path.read_bytes()
    result = runner.invoke(app, ["apply", "--rules", str(rules), str(path), "--in-place"])
    assert result.exit_code == 2
    assert "holds more than a state dict (epoch, optimizer)" in result.stderr
    assert path.read_bytes() == before


def test_a_model_keeps_the_checkpoints_dtype(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bf.pt"
    torch.save(torch.nn.Linear(4, 3).to(torch.bfloat16).state_dict(), path)
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - param: bias\n    init: zeros\n")
    out = tmp_path / "out.pt"
    args = ["--model", "torch.nn:Linear", "--arg", "in_features=4", "--arg", "out_features=3"]
    result = runner.invoke(app, ["apply", "--rules", str(rules), str(path), *args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    state = torch.load(out, weights_only=True)
    assert state["weight"].dtype == state["bias"].dtype == torch.bfloat16
    assert torch.equal(state["weight"], torch.load(path, weights_only=True)["weight"])


def test_a_transposed_view_is_not_a_tie(runner: CliRunner, tmp_path: Path) -> None:
    w = torch.randn(8, 8)
    path = tmp_path / "views.pt"
    torch.save({"a.weight": w, "b.weight": w.t()}, path)
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - name: a\n    init: zeros\n  - init: keep\n")
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["apply", "--rules", str(rules), str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    got = load_file(str(out))
    assert got["a.weight"].eq(0).all() and torch.equal(got["b.weight"], w.t())


def test_reserved_safetensors_name_is_an_error_not_a_broken_file(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"__metadata__": torch.zeros(2)}, path)
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - init: keep\n")
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["apply", "--rules", str(rules), str(path), "-o", str(out)])
    assert result.exit_code == 2
    assert "reserved" in result.stderr and not out.exists()


# -- check: what apply writes, check accepts ---------------------------------------------------

STRUCTURED = """rules:
  - name: a
    param: weight
    init: sparse
    sparsity: 0.5
  - name: b
    param: weight
    init: eye
  - name: c
    param: weight
    init: dirac
  - name: d
    param: weight
    init: normal
    std: 0
  - name: e
    param: weight
    init: uniform
    a: 0.5
    b: 0.5
  - init: keep
"""


class Structured(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(32, 32)
        self.b = torch.nn.Linear(16, 16)
        self.c = torch.nn.Conv2d(8, 8, 3)
        self.d = torch.nn.Linear(32, 32)
        self.e = torch.nn.Linear(32, 32)


def test_check_accepts_structured_and_degenerate_inits_apply_wrote(
    runner: CliRunner, tmp_path: Path
) -> None:
    rules = tmp_path / "s.yaml"
    rules.write_text(STRUCTURED)
    out = tmp_path / "s.safetensors"
    target = "tests.test_hardening:Structured"
    applied = runner.invoke(app, ["apply", "--rules", str(rules), target, "-o", str(out)])
    assert applied.exit_code == 0, applied.output
    checked = runner.invoke(app, ["check", str(out), "--rules", str(rules), "-q"])
    assert checked.exit_code == 0, checked.output
    # and the exact structures are really compared: eye/dirac on fresh weights fail
    fresh = runner.invoke(app, ["check", target, "--rules", str(rules), "-q", "-f", "json"])
    assert fresh.exit_code == 1
    failed = {v["parameter"] for v in json.loads(fresh.stdout)["violations"]}
    assert {"b.weight", "c.weight", "d.weight", "e.weight"} <= failed
    assert "a.weight" not in failed  # sparse: no distribution to test against


def test_tied_weights_in_a_safetensors_output_are_not_identical_copies(
    runner: CliRunner, tmp_path: Path
) -> None:
    from initscope.examples import TinyTransformer

    torch.manual_seed(0)
    model = TinyTransformer()
    for layer in model.encoder.layers:  # no deep-copied layers: only the tie is equal
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else None
    src = tmp_path / "tt.pt"
    torch.save(model.state_dict(), src)  # torch.save keeps the tie as shared storage
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - param: bias\n    init: zeros\n  - init: keep\n")
    out = tmp_path / "tt.safetensors"
    done = runner.invoke(app, ["apply", "--rules", str(rules), str(src), "-o", str(out)])
    assert done.exit_code == 0, done.output
    # safetensors stores lm_head.weight in full; the file's record says it is tied
    checked = runner.invoke(app, ["check", str(out), "-q", "-f", "json"])
    assert checked.exit_code == 0, checked.output


# -- expectations files: exit 2 with a place, never exit 3 -------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("checks: [{param: weight, std: [a, 1]}]\n", "checks[0].std[0]: expected a number"),
        ("health: {abs_max: abc}\n", "health.abs_max: expected a number"),
        (
            'checks: [{param: bias, follows: "normal(std=1/sqrt(fan_in))"}]\n',
            "checks[0].follows.std: unknown name 'fan_in' for stem.bias",
        ),
        (
            "vars: {x: -1}\nchecks: [{param: weight, follows: {init: trunc_normal, std: x}}]\n",
            "checks[0].follows.std: trunc_normal needs std > 0, got -1",
        ),
        (f"vars: {{x: {'9' * 400}}}\n", "vars.x: 'x' is too large a number"),
    ],
)
def test_expectation_mistakes_exit_2(
    runner: CliRunner, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["check", "initscope.examples:UNet", "--expect", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr


def test_values_beyond_the_parameters_dtype_are_refused(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("rules:\n  - init: constant\n    val: 70000\n")
    result = runner.invoke(app, ["rules", "validate", str(path), "tests.test_hardening:HalfLinear"])
    assert result.exit_code == 2
    assert "beyond float16's 6.55e+04" in result.stderr


class HalfLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(4, 4).half()


def test_diff_sees_the_imaginary_part() -> None:
    from initscope.gate.diff import Status, diff_tensors

    a = torch.tensor([1 + 1j, 2 + 2j], dtype=torch.complex64)
    b = torch.tensor([1 + 5j, 2 + 2j], dtype=torch.complex64)
    entry = diff_tensors("z", a, b)
    assert entry.status is Status.CHANGED
    assert entry.max_abs_diff == pytest.approx(4.0)


def test_a_rules_error_raised_in_a_worker_keeps_its_problems(
    runner: CliRunner, tmp_path: Path
) -> None:
    # Errors cross the process boundary pickled; RulesError's constructor takes problems,
    # not a message, and rebuilding it from its message crashed with a traceback.
    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    write_safetensors(ckpt, {"w": torch.randn(64, 64), "v": torch.randn(64, 64)})
    expect = tmp_path / "e.yaml"
    expect.write_text(
        "checks:\n  - {param: w, follows: {init: normal, std: 1 / (fan_in - fan_in)}}\n"
    )
    result = runner.invoke(app, ["check", str(ckpt), "--expect", str(expect), "--workers", "2"])
    assert result.exit_code == 2, result.output
    assert "divides by zero" in result.stderr and "Traceback" not in result.output


def test_errors_pickle_whole() -> None:
    import pickle

    from initscope.errors import CheckpointError
    from initscope.rules.language import Problem, RulesError

    err = RulesError([Problem("e.yaml:3:29", "checks[0]", "divides by zero", "fix it")], "in e")
    back = pickle.loads(pickle.dumps(err))
    assert back.lines() == err.lines() and back.summary == "in e"
    hinted = pickle.loads(pickle.dumps(CheckpointError("bad", "re-save it")))
    assert hinted.one_line() == "bad; re-save it"
