"""The typer application and its global options (``--debug``, ``--version``)."""

from __future__ import annotations

from typing import Annotated

import typer

from initscope import __version__
from initscope.cli.options import DebugOpt

__all__ = [
    "app",
    "rules_app",
]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Inspect, explain and check how a PyTorch model's parameters are initialized.",
)


def _version(value: bool) -> None:
    if value:
        # native, not fused: it names the statistics path without importing torch
        from initscope.stats.native import describe

        typer.echo(f"initscope {__version__}")
        typer.echo(f"statistics: {describe()}")
        raise typer.Exit()


@app.callback()
def _main(
    # Read back by each command through the click context (see boundary), so
    # `initscope --debug report X` and `initscope report X --debug` both work.
    debug: DebugOpt = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and which code computes statistics.",
        ),
    ] = False,
) -> None:
    """Inspect, explain and check how a PyTorch model's parameters are initialized."""


rules_app = typer.Typer(
    no_args_is_help=True,
    help="Check rules files, list the presets, print the rules JSON Schema.",
)
app.add_typer(rules_app, name="rules")
