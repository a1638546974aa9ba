"""``initscope apply`` and the ``initscope rules`` commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    pass
from initscope.cli.app import app, rules_app
from initscope.cli.options import (
    MAX_SEED,
    DebugOpt,
    QuietOpt,
    RulesOpt,
    StrictOpt,
    TargetArgs,
    UnmatchedOptT,
    VarOpt,
    format_option,
    target_options,
)
from initscope.cli.runtime import boundary, debug_mode, emit, progress_bar, warn
from initscope.io.parsing import parse_vars
from initscope.render.common import FORMATS, Format

__all__ = [
    "apply",
    "rules_presets",
    "rules_schema",
    "rules_validate",
]


@app.command()
@target_options
def apply(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="pkg.module:Class (with --arg), a .yaml spec, or a checkpoint "
            "(with --model/--spec, or bare for rules that match by name/param/ndim)."
        ),
    ],
    rules: RulesOpt,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the result here (.safetensors, .pt, .pth)."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            min=0,
            max=MAX_SEED,
            help="Seed (overrides the rules file's seed:; default 0).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change and write nothing.")
    ] = False,
    strict: StrictOpt = False,
    unmatched: UnmatchedOptT = None,
    var: VarOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    in_place: Annotated[
        bool,
        typer.Option("--in-place", help="Allow replacing the input checkpoint (atomically)."),
    ] = False,
    fmt: Annotated[Format, format_option("apply", "table (text) or json.")] = Format.TABLE,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
) -> None:
    """Re-initialize TARGET's parameters by a YAML rules file and save the result."""
    debug = debug_mode(ctx, debug)
    with boundary(debug):
        fmt = fmt.require("apply", FORMATS["apply"])  # before any work
        from initscope.render.apply import render_apply
        from initscope.rules.apply import ApplyOptions, apply_target
        from initscope.rules.language import Unmatched, load_rules

        rule_set = load_rules(rules, parse_vars(var))
        how = targets.how(
            seed=seed if seed is not None else (rule_set.seed or 0),
        )
        options = ApplyOptions(
            output=output,
            seed=seed,
            unmatched=Unmatched(unmatched.value) if unmatched else None,
            strict=strict,
            dry_run=dry_run,
            force=force,
            in_place=in_place,
        )
        with progress_bar(not quiet and not dry_run, "initializing") as progress:
            result = apply_target(target, rule_set, how, options, progress)
        warn(result.plan.warnings())
        text = render_apply(result, fmt.value)
    emit(text, None, debug)


@rules_app.command("validate")
@target_options
def rules_validate(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="Rules file (.yaml) or preset name.")],
    target: Annotated[
        str | None,
        typer.Argument(help="Also check the rules against this model or checkpoint."),
    ] = None,
    strict: StrictOpt = False,
    unmatched: UnmatchedOptT = None,
    var: VarOpt = None,
    fmt: Annotated[Format, format_option("rules validate", "table (text) or json.")] = Format.TABLE,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
) -> None:
    """Check a rules file (and, given TARGET, how it matches that model); change nothing."""
    import json

    debug = debug_mode(ctx, debug)
    with boundary(debug):
        fmt = fmt.require("rules validate", FORMATS["rules validate"])  # before any work
        from initscope.render.apply import apply_to_dict, summary_lines
        from initscope.rules.apply import ApplyOptions, plan_target
        from initscope.rules.language import Unmatched, load_rules

        rule_set = load_rules(file, parse_vars(var))
        if target is None:
            if fmt is Format.JSON:
                text = (
                    json.dumps(
                        {"rules_file": rule_set.source, "ok": True, "rules": len(rule_set.rules)}
                    )
                    + "\n"
                )
            else:
                n = len(rule_set.rules)
                text = f"{rule_set.source}: ok, {n} rule{'s' if n != 1 else ''}\n"
        else:
            how = targets.how(
                seed=rule_set.seed or 0,
            )
            options = ApplyOptions(
                unmatched=Unmatched(unmatched.value) if unmatched else None, strict=strict
            )
            result = plan_target(target, rule_set, how, options)
            warn(result.plan.warnings())
            if fmt is Format.JSON:
                text = json.dumps({**apply_to_dict(result), "ok": True}, indent=2) + "\n"
            else:
                lines = [f"{rule_set.source}: ok against {target}", *summary_lines(result.plan)]
                text = "\n".join(lines) + "\n"
    emit(text, None, debug)


@rules_app.command("schema")
def rules_schema() -> None:
    """Print the JSON Schema of rules files (configs/rules.schema.json)."""
    import json

    from initscope.rules.schema import RULES_SCHEMA

    sys.stdout.write(json.dumps(RULES_SCHEMA, indent=2) + "\n")


@rules_app.command("presets")
def rules_presets() -> None:
    """List the bundled presets, usable as --rules NAME."""
    from initscope.rules.language import preset_names, presets_dir

    for name in preset_names():
        first = ""
        for line in (presets_dir() / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
            if line.startswith("# ") and "yaml-language-server" not in line:
                first = line[2:].strip()
                break
        sys.stdout.write(f"{name:<18} {first}\n")
