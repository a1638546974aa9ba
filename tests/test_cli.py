"""The CLI shell: version, help, exit codes, and start-up that does not import torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from initscope import __version__
from initscope.cli import app, main
from initscope.stats import native


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"initscope {__version__}",
        f"statistics: {native.describe()}",
    ]


def test_version_names_the_statistics_path(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INITSCOPE_FUSED", "0")
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == "statistics: torch (INITSCOPE_FUSED=0)"
    monkeypatch.delenv("INITSCOPE_FUSED")
    line = runner.invoke(app, ["--version"]).stdout.splitlines()[1]
    if native.library() is not None:
        assert re.fullmatch(r"statistics: fused C kernel \((avx2|portable)\) at .*_kernel.*", line)
    else:
        assert line.startswith("statistics: torch (the C kernel ")


def test_help_lists_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "report" in result.stdout and "explain" in result.stdout


def test_unknown_option_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", "nn.Linear", "--frobnicate"])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["report", "--help"],
        ["check", "--help"],
        ["diff", "--help"],
        ["apply", "--help"],
        ["plot", "--help"],
        ["report", "nn.Linear", "--frobnicate"],  # an unknown option
        ["diff", "only-one.safetensors"],  # a missing argument
        ["report", "x.pt", "--workers", "0"],  # a value out of range
        ["report", "x.pt", "--format", "yaml"],  # a bad choice
    ],
)
@pytest.mark.slow
def test_help_version_and_usage_errors_do_not_import_torch(argv: list[str]) -> None:
    # Issue 6: start-up under 0.3 s, which torch's 1.5 s import alone would break.
    code = (
        "import sys\n"
        "from initscope.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        "print('torch' in sys.modules, 'pydantic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    exit_line, heavy = out.stdout.strip().splitlines()[-2:]
    assert exit_line in ("exit 0", "exit 2", "exit None"), out.stdout
    # neither torch (1.5 s and more) nor pydantic (0.2 s, which typer 0.29 imports)
    assert heavy == "False False", argv


@pytest.mark.slow
def test_python_dash_m(tmp_path: object) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "initscope", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout.splitlines()[0] == f"initscope {__version__}"
    assert out.stdout.splitlines()[1].startswith("statistics: ")


@pytest.mark.slow
def test_the_console_script_ends_at_once_with_every_byte_written(tmp_path: Path) -> None:
    """The command line ends in os._exit after main (cli.run: Python's shutdown after torch
    costs 0.4 s and more): what it printed arrives whole, through a pipe bigger than the
    pipe's buffer, and each way of ending keeps its exit code and its one line."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {f"layer{i}.weight": torch.randn(16, 16, generator=g) for i in range(300)}
    save_file(tensors, str(tmp_path / "many.safetensors"))
    cmd = [sys.executable, "-m", "initscope"]
    out = subprocess.run(
        [*cmd, "report", str(tmp_path / "many.safetensors"), "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) > 2**16  # more than a pipe holds: written while the reader reads
    assert len(json.loads(out.stdout)["parameters"]) == 300
    missing = subprocess.run(
        [*cmd, "report", str(tmp_path / "missing.pt")], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and missing.stdout == ""


def test_debug_shows_traceback(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--debug", "report", "no/such/file.pt"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    result = runner.invoke(app, ["report", "no/such/file.pt"])
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1


def test_public_api_all_resolves() -> None:
    import initscope

    for name in initscope.__all__:
        assert getattr(initscope, name) is not None, name


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["report"], "Missing argument 'target'"),
        (["report", "nn.Linear", "--format", "xml"], "'xml' is not one of"),
        (["report", "nn.Linear", "--bogus"], "No such option: --bogus"),
        (["frobnicate"], "No such command"),
    ],
)
def test_click_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("initscope: error: ") and err.count("\n") == 1, err
    assert needle in err and "--help'" in err


def test_no_arguments_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 0
    assert "report" in capsys.readouterr().out


def test_file_like_target_that_does_not_exist(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", "model.onnx"])
    assert result.exit_code == 2, result.output
    assert result.stderr == "initscope: error: no such file: model.onnx; check the path\n"


def test_api_functions_stay_functions_after_their_modules_load() -> None:
    # A submodule named like the function it exports (initscope.identify) replaced the
    # function on the package as soon as anything imported it.
    import initscope

    initscope.report(
        "torch.nn:Linear", initscope.TargetOptions(kwargs={"in_features": 3, "out_features": 4})
    )
    initscope.explain("nn.Linear")
    for name in ("identify", "explain", "plot", "diff_targets", "check_target", "render_html"):
        assert callable(getattr(initscope, name)), name


def test_the_collector_is_held_through_start_up_only() -> None:
    """The CLI holds the cycle collector off while it imports, and gives it back once the
    TARGET is opened (or at its end); a program that turned it off itself keeps it off."""
    import gc

    from initscope.environment import hold_collector, release_collector
    from initscope.io.models import open_target
    from initscope.io.targets import TargetOptions

    assert gc.isenabled()
    release_collector()  # not held: nothing to give back
    assert gc.isenabled()
    hold_collector()
    assert not gc.isenabled()
    with open_target(
        "torch.nn:Linear", TargetOptions(kwargs={"in_features": 4, "out_features": 2})
    ):
        assert gc.isenabled()
    gc.disable()
    try:
        hold_collector()
        release_collector()
        assert not gc.isenabled()  # the program's own choice
    finally:
        gc.enable()
    with pytest.raises(SystemExit):
        main(["explain", "Linear"])
    assert gc.isenabled()


def test_in_the_cli_a_run_leaves_the_start_up_objects_frozen() -> None:
    """A run freezes what exists before it; a library caller gets it all back at the run's
    end, the CLI does not (giving back ~170,000 objects cost a full collection while the
    report rendered, 0.4 s), and after the CLI's command the library rule holds again."""
    import gc

    from initscope.environment import collector_held_by_cli, end_of_cli, hold_collector
    from initscope.parallel.workers import parallel_map

    hold_collector()
    try:
        assert collector_held_by_cli()
        assert parallel_map(lambda i: i, [1, 1], workers=1) == [0, 1]
        assert gc.isenabled() and gc.get_freeze_count() > 1000
    finally:
        end_of_cli()
    assert gc.isenabled() and not collector_held_by_cli()
    parallel_map(lambda i: i, [1, 1], workers=1)
    assert gc.get_freeze_count() == 0


def test_a_report_renders_with_the_collector_paused_and_gives_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rendering makes many dicts and strings and no cycles: the collector is off while it
    runs (its full passes over a 20,000-tensor report were a third of the JSON's time), and
    as it was afterwards, on or off."""
    import gc

    import initscope.render.report as render
    from initscope.environment import collector_paused
    from initscope.measure.report import Report

    seen: list[bool] = []
    real = render.report_to_dict
    monkeypatch.setattr(render, "report_to_dict", lambda r: seen.append(gc.isenabled()) or real(r))
    report = Report(target="t", parameters=())
    assert gc.isenabled()
    render.render_report(report, "json")
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # off before: off after
    finally:
        gc.enable()
