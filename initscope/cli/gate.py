"""``initscope check`` and ``initscope diff``: the CI gate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from initscope.errors import (
    EXIT_VIOLATIONS,
)

if TYPE_CHECKING:
    pass
from initscope.cli.app import app
from initscope.cli.options import (
    DebugOpt,
    RunArgs,
    SeedOpt,
    TargetArgs,
    VarOpt,
    format_option,
    shared_options,
)
from initscope.cli.runtime import boundary, debug_mode, emit, leads, progress_bar, warn
from initscope.io.parsing import parse_vars
from initscope.render.common import FORMATS, Format

__all__ = [
    "check",
    "diff",
]


@app.command()
@shared_options("targets", "run")
def check(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="A checkpoint (with --model/--spec for type-based checks, or bare), or a "
            "model target built fresh."
        ),
    ],
    rules: Annotated[
        str | None,
        typer.Option(
            "--rules",
            "-r",
            help="Check that every parameter a rule covers follows it (file or preset name).",
        ),
    ] = None,
    expect: Annotated[
        Path | None,
        typer.Option("--expect", "-e", help="Expectations file (checks: and health:)."),
    ] = None,
    no_default_check: Annotated[
        bool,
        typer.Option(
            "--no-default-check",
            help="With --rules: do not require uncovered parameters to follow their default.",
        ),
    ] = False,
    fmt: Annotated[Format, format_option("check", "text, json, junit or github.")] = Format.TEXT,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the result here (atomically), e.g. a JUnit file."
        ),
    ] = None,
    var: VarOpt = None,
    seed: SeedOpt = 0,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
    run: RunArgs = RunArgs(),
) -> None:
    """Check TARGET's statistics: health always, --rules and --expect when given. Exit 0 if
    every check passes, 1 on violations, 2 on bad input."""
    debug = debug_mode(ctx, debug)
    with boundary(debug):
        fmt = fmt.require("check", FORMATS["check"])  # before any work
        from initscope.gate.check import CheckOptions, check_target
        from initscope.gate.expectations import load_expectations
        from initscope.render.check import render_check
        from initscope.rules.language import load_rules, nothing_was

        if output is not None:
            targets.check_output(output, target, rules, expect)
        variables = parse_vars(var)
        with nothing_was("checked"):
            rule_set = load_rules(rules, variables) if rules is not None else None
        expectations = load_expectations(expect) if expect is not None else None
        how = targets.how(seed=seed, max_memory=run.memory)
        options = CheckOptions(
            rule_set, expectations, not no_default_check, run.memory, run.workers, run.group()
        )
        leader = leads(options.group)
        with progress_bar(not run.quiet and leader, "checking") as progress:
            result = check_target(target, how, options, progress)
        text = None
        if leader:  # under torchrun, rank 0 renders and writes
            warn(list(result.notes))
            text = render_check(result, fmt.value)
    if text is not None:
        emit(text, output, debug)
    if not result.ok:
        raise typer.Exit(EXIT_VIOLATIONS)


@app.command()
@shared_options("targets", "run")
def diff(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="Before: a checkpoint or a model target.")],
    b: Annotated[str, typer.Argument(help="After: a checkpoint or a model target.")],
    fmt: Annotated[Format, format_option("diff", "table (text) or json.")] = Format.TABLE,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (atomically)."),
    ] = None,
    seed: SeedOpt = 0,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
    run: RunArgs = RunArgs(),
) -> None:
    """Compare two checkpoints (or a checkpoint and a fresh model), parameter by parameter."""
    debug = debug_mode(ctx, debug)
    with boundary(debug):
        fmt = fmt.require("diff", FORMATS["diff"])  # before any work
        from initscope.gate.diff import diff_targets
        from initscope.render.diff import render_diff

        if output is not None:
            targets.check_output(output, a, b)
        how_a, how_b = targets.pair(a, b, seed=seed, max_memory=run.memory)
        group = run.group()
        leader = leads(group)
        with progress_bar(not run.quiet and leader, "comparing") as progress:
            result = diff_targets(a, b, how_a, how_b, progress, run.memory, run.workers, group)
        if not leader:  # under torchrun, rank 0 renders and writes
            return
        text = render_diff(result, fmt.value)
    emit(text, output, debug)
