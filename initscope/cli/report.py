"""``initscope report`` and ``initscope plot``: a TARGET's parameters, as a table (or JSON,
Markdown, CSV, HTML) and as histogram panels."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from initscope.errors import (
    InitScopeError,
)
from initscope.render.common import FORMATS, TABLE_WIDTH, Format, escape_text

if TYPE_CHECKING:
    pass
from initscope.cli.app import app
from initscope.cli.options import (
    AgainstOpt,
    BuffersOpt,
    DebugOpt,
    MaxMemoryOpt,
    NameOpt,
    QuietOpt,
    RunArgs,
    SeedOpt,
    TargetArgs,
    TypeOpt,
    VarOpt,
    format_option,
    shared_options,
    target_options,
)
from initscope.cli.runtime import (
    against_rules,
    boundary,
    debug_mode,
    emit,
    leads,
    progress_bar,
    width,
)
from initscope.io.parsing import parse_size

__all__ = [
    "plot",
    "report",
]


@app.command()
@shared_options("targets", "run")
def report(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="pkg.module:Class (with --arg), a .yaml spec, or a checkpoint "
            "(.pt/.pth/.bin/.safetensors)."
        ),
    ],
    fmt: Annotated[Format, format_option("report", "table, json, markdown or csv.")] = Format.TABLE,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (atomically) instead of stdout."),
    ] = None,
    buffers: BuffersOpt = False,
    type_: TypeOpt = None,
    name: NameOpt = None,
    seed: SeedOpt = 0,
    meta: Annotated[
        bool,
        typer.Option(
            "--meta", help="Build on the meta device: defaults only, no memory for weights."
        ),
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write the report as one self-contained HTML page (summary, table, a "
            "histogram panel per parameter), atomically.",
        ),
    ] = None,
    hist: Annotated[
        bool,
        typer.Option("--hist", help="Add a one-line histogram of each parameter's values (table)."),
    ] = False,
    against: AgainstOpt = "default",
    var: VarOpt = None,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
    run: RunArgs = RunArgs(),
) -> None:
    """Show every parameter's default init (traced from torch), next to its actual statistics."""
    debug = debug_mode(ctx, debug)
    with boundary(debug):
        fmt = fmt.require("report", FORMATS["report"])  # before any work
        from initscope.measure.report import ReportOptions, build_report
        from initscope.render.report import render_report

        if hist and fmt is not Format.TABLE:
            raise InitScopeError(
                f"--hist adds a column to the table format, not to {fmt.value}",
                "drop --hist or use --format table",
            )
        if output is not None:
            targets.check_output(output, target)  # before the model is built
        if html is not None:
            targets.check_output(html, target, against)
            if output is not None and html.resolve() == output.resolve():
                raise InitScopeError(
                    f"--html and --output are the same file ({html}); the report would "
                    "replace the page",
                    "give them different names",
                )
        if against != "default" and html is None:
            raise InitScopeError(
                "--against sets what the --html panels compare with", "add --html FILE"
            )
        rule_set = against_rules(against, var)
        options = ReportOptions(
            buffers=buffers,
            types=tuple(type_ or ()),
            names=tuple(name or ()),
            max_memory=run.memory,
            workers=run.workers,
            group=run.group(),
            samples=hist or html is not None,  # what draws them
        )
        leader = leads(options.group)
        with progress_bar(not run.quiet and leader) as progress:
            how = targets.how(
                meta=meta,
                seed=seed,
                max_memory=options.max_memory,
            )
            result = build_report(target, how, options, progress)
        if not leader:  # under torchrun, rank 0 renders and writes
            return
        text = render_report(result, fmt, width() if output is None else TABLE_WIDTH, hist)
        page = None
        if html is not None:
            from initscope.render.html import render_html

            page = render_html(result, rule_set)
    if html is not None and page is not None:
        emit(page, html, debug)
    emit(text, output, debug)


@app.command()
@target_options
def plot(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="pkg.module:Class (with --arg), a .yaml spec, or a checkpoint "
            "(.pt/.pth/.bin/.safetensors)."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Image to write: .png, .svg or .pdf (paged when large)."
        ),
    ],
    name: NameOpt = None,
    type_: TypeOpt = None,
    against: AgainstOpt = "default",
    var: VarOpt = None,
    max_panels: Annotated[
        int,
        typer.Option(
            "--max-panels",
            min=1,
            help="Panels per file; more go to OUT-1.png, OUT-2.png, ... (names on stderr).",
        ),
    ] = 48,
    columns: Annotated[int, typer.Option("--columns", min=1, help="Panels per row.")] = 6,
    dpi: Annotated[int, typer.Option("--dpi", min=10, max=600, help="PNG resolution.")] = 100,
    buffers: BuffersOpt = False,
    seed: SeedOpt = 0,
    max_memory: MaxMemoryOpt = "2GiB",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
) -> None:
    """Draw each parameter's histogram with the density it should follow (its default, or
    --against rules.yaml) over it: a grid of panels, marked where the values differ."""
    debug = debug_mode(ctx, debug)
    with boundary(debug):
        from initscope.measure.report import ReportOptions, build_report
        from initscope.render.panels import make_panels
        from initscope.render.plot import (
            image_format,
            page_paths,
            require_matplotlib,
            save_pages,
            title_for,
        )

        image_format(output)  # a bad extension, and a missing matplotlib, before any work
        require_matplotlib()
        targets.check_output(output, target, against)
        rule_set = against_rules(against, var)
        options = ReportOptions(
            buffers=buffers,
            types=tuple(type_ or ()),
            names=tuple(name or ()),
            max_memory=parse_size(max_memory),
        )
        with progress_bar(not quiet) as progress:
            how = targets.how(
                seed=seed,
                max_memory=options.max_memory,
            )
            result = build_report(target, how, options, progress)
        panels = make_panels(result, rule_set)
        if not panels:
            raise InitScopeError(
                f"nothing to plot: {target} has no parameter selected by --name/--type",
                "widen the selection",
            )
        # A paged plot writes OUT-1.png, OUT-2.png, ...: none of them may be an input.
        for page in page_paths(output, len(panels), max_panels):
            targets.check_output(page.path, target, against)
        label = "default" if rule_set is None else rule_set.source
        pages = save_pages(
            panels,
            output,
            title=title_for(result, panels, label),
            max_panels=max_panels,
            columns=columns,
            dpi=dpi,
        )
    for page in pages:
        shown = escape_text(str(page.path))
        sys.stderr.write(f"wrote {shown}: panels {page.first + 1}-{page.end} of {len(panels)}\n")
