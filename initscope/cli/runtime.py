"""What every command does around the library call: errors to one line and an exit code,
warnings to stderr, the progress bar, and writing the rendered result."""

from __future__ import annotations

import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from initscope.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    InitScopeError,
)
from initscope.render.common import TABLE_WIDTH, escape_text

if TYPE_CHECKING:
    from initscope.parallel.distributed import Group
    from initscope.parallel.workers import Advance, ProgressFn
    from initscope.rules.language import RuleSet
from initscope.io.parsing import parse_vars

__all__ = [
    "PROGRESS_AFTER",
    "against_rules",
    "boundary",
    "debug_mode",
    "emit",
    "leads",
    "progress_bar",
    "warn",
    "warnings_to_stderr",
    "width",
]

# A run shorter than this shows no progress bar at all (a bar that flashes is noise).
PROGRESS_AFTER = 0.5


def debug_mode(ctx: typer.Context, debug: bool) -> bool:
    return debug or bool(ctx.find_root().params.get("debug"))


@contextmanager
def boundary(debug: bool) -> Iterator[None]:
    """Turn library exceptions into one line on stderr and an exit code. While the library
    runs, stdout goes to stderr: a model that prints while it is built must not corrupt
    ``--format json`` output, which is written after this block."""
    try:
        with redirect_stdout(sys.stderr), warnings_to_stderr():
            yield
    except InitScopeError as exc:
        if debug:
            traceback.print_exc()
        for text in exc.lines():
            sys.stderr.write(f"initscope: error: {escape_text(text)}\n")
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        sys.stderr.write("initscope: interrupted\n")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.Abort, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        # Exception, and what libraries raise outside it: torch.distributed.checkpoint's
        # CheckpointException derives from BaseException.
        if debug:
            traceback.print_exc()
        msg = escape_text(" ".join(str(exc).split())[:300])
        sys.stderr.write(
            f"initscope: internal error: {type(exc).__name__}: {msg}; "
            "rerun with --debug for the traceback and report it\n"
        )
        raise typer.Exit(EXIT_INTERNAL) from None


@contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """The library's InitScopeWarnings as ``initscope: warning: ...`` lines; other warnings
    keep Python's usual display."""
    import warnings

    from initscope.errors import InitScopeWarning

    original = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: object, **kw: object) -> None:
        if issubclass(category, InitScopeWarning):
            sys.stderr.write(f"initscope: warning: {escape_text(str(message))}\n")
        else:  # a library's warning can quote a name from a file too
            original(escape_text(str(message)), category, *args, **kw)  # type: ignore[arg-type]

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def warn(lines: list[str]) -> None:
    for text in lines:
        sys.stderr.write(f"initscope: warning: {escape_text(text)}\n")


def width() -> int:
    """The table's width: ``COLUMNS`` when set (also when stdout is piped, as ``less`` or a
    CI log wants), else the terminal's, else TABLE_WIDTH."""
    import os

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size((TABLE_WIDTH, 24)).columns
    return TABLE_WIDTH


@contextmanager
def progress_bar(enabled: bool, what: str = "statistics") -> Iterator[ProgressFn | None]:
    """A transient rich progress bar on stderr (bytes and tensors, rate and ETA), only when
    stderr is a terminal, and only once the work has run for PROGRESS_AFTER seconds: a quick
    run prints nothing."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn(what),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[tensors]} tensors"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    start = time.monotonic()
    task: TaskID | None = None

    def update(at: Advance) -> None:
        nonlocal task
        if task is None:
            if time.monotonic() - start < PROGRESS_AFTER or at.done_bytes >= at.total_bytes:
                return
            bar.start()
            # The bar's rate and ETA count from here; what was done before shows at once.
            task = bar.add_task(what, total=at.total_bytes, completed=at.done_bytes, tensors="")
        tensors = f"{at.done_tensors}/{at.total_tensors}"
        bar.update(task, completed=at.done_bytes, total=at.total_bytes, tensors=tensors)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


def leads(group: Group | None) -> bool:
    """Whether this process speaks: always alone; under torchrun, rank 0 only (the ranks
    share the terminal, so their progress bars and outputs would interleave)."""
    return group is None or group.leader


def emit(text: str, output: Path | None, debug: bool) -> None:
    """Write a rendered result. Renderers escape the names they print; this is the net for
    anything else from a file that reached the text (no control character passes)."""
    text = escape_text(text, keep="\n\t")
    if output is None:
        sys.stdout.write(text)
        return
    with boundary(debug):
        from initscope.io.output import atomic_write

        with atomic_write(output) as fh:
            fh.write(text)


def against_rules(against: str, var: list[str] | None) -> RuleSet | None:
    """``--against``: None for the traced default, else the rules file (its errors with
    file:line, as the rules loader gives them)."""
    if against == "default":
        return None
    from initscope.rules.language import load_rules, nothing_was

    with nothing_was("drawn"):
        return load_rules(against, parse_vars(var))
