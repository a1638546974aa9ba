"""The public Python API: a small ``initscope.__all__``, old names still resolving, and the
one Format enum every command shares."""

from __future__ import annotations

import importlib

import pytest
from typer.testing import CliRunner

import initscope
from initscope.cli import app
from initscope.render.common import FORMATS, Format


def test_the_api_is_what_a_user_calls() -> None:
    assert 15 <= len(initscope.__all__) <= 25
    assert {
        "report", "explain", "identify", "apply", "apply_rules", "check", "diff", "plot",
        "render_html", "load_rules", "Report", "CheckResult", "DiffResult", "ApplyResult",
        "Explanation", "Identification", "TargetOptions", "InitScopeError",
    } <= set(initscope.__all__)  # fmt: skip
    for name in initscope.__all__:
        assert getattr(initscope, name) is not None, name
    assert initscope.report.__name__ == "build_report"
    assert initscope.check.__name__ == "check_target"


def test_every_public_name_of_every_module_imports() -> None:
    # "the rest importable from their modules": each module's __all__ is real.
    import pkgutil

    for info in pkgutil.walk_packages(initscope.__path__, "initscope."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            assert hasattr(module, name), f"{info.name}.{name}"


def test_an_old_top_level_name_resolves_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"initscope\.render\.report"):
        from_old = initscope.report_to_dict
    from initscope.render.report import report_to_dict

    assert from_old is report_to_dict
    with pytest.raises(AttributeError):
        _ = initscope.no_such_name


def test_text_and_table_are_one_format(runner: CliRunner) -> None:
    text = runner.invoke(
        app,
        ["check", "nn.Linear", "-a", "in_features=4", "-a", "out_features=3", "--format", "text"],
    )
    table = runner.invoke(
        app,
        ["check", "nn.Linear", "-a", "in_features=4", "-a", "out_features=3", "--format", "table"],
    )
    assert text.exit_code == 0, text.output
    assert table.exit_code == 0, table.output
    assert text.stdout == table.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["report", "nn.Linear", "--format", "junit"],
            "report has no junit format; use --format table, json, markdown or csv",
        ),
        (
            ["explain", "nn.Linear", "--format", "csv"],
            "explain has no csv format; use --format table, markdown or json",
        ),
        (
            ["diff", "a.pt", "b.pt", "--format", "markdown"],
            "diff has no markdown format; use --format table or json",
        ),
    ],
)
def test_a_format_a_command_cannot_write_is_a_usage_error(
    runner: CliRunner, argv: list[str], message: str
) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_every_command_writes_json_and_a_table() -> None:
    for command, formats in FORMATS.items():
        assert Format.JSON in formats, command
        assert Format.TABLE in formats, command
        assert Format.TEXT.plain is Format.TABLE
