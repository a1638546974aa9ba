"""The CLI shell: version, help, exit codes, and start-up that does not import torch."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from initscope import __version__
from initscope.cli import app


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"initscope {__version__}"


def test_help_lists_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "report" in result.stdout and "explain" in result.stdout


def test_unknown_option_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", "nn.Linear", "--frobnicate"])
    assert result.exit_code == 2


def test_help_and_usage_errors_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from initscope.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


def test_python_dash_m(tmp_path: object) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "initscope", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"initscope {__version__}"


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
