"""The console-script entry point: every way a run can end becomes one line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

import typer

from initscope.environment import end_of_cli, hold_collector
from initscope.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)
from initscope.render.common import escape_text

if TYPE_CHECKING:
    pass
from initscope.cli.app import app

__all__ = [
    "main",
    "run",
]


def _is(exc: BaseException, name: str) -> bool:
    # Typer ≥ 0.16 vendors click as typer._click; match click's exception classes by name so
    # this works with either.
    return any(c.__name__ == name for c in type(exc).__mro__)


def _leave_the_job() -> None:
    """Under torchrun, every rank waits for the others and closes its process group before
    it exits (see distributed.finish); elsewhere nothing happens."""
    from initscope.parallel.distributed import finish

    with suppress(Exception):  # a peer that died already: nothing left to wait for
        finish()


def _terminate_as_interrupt() -> Callable[[], None]:
    """SIGTERM (a CI job cancelled, a ``timeout``, ``kill``) ends a run as Ctrl-C does: the
    temporary file of an output being written is removed, one line says so, exit 130. Only
    where nobody installed a handler already. Forked children (``--workers``) get the
    default back: a pool ends its workers with SIGTERM, which must end them silently, not
    print a KeyboardInterrupt traceback from each. Returns what puts the default back when
    the command is done (main may be called again in one process, as tests do)."""
    import os
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def default_in_child() -> None:
        if signal.getsignal(signal.SIGTERM) is interrupt:
            with suppress(ValueError):  # not the child's main thread: nothing to undo
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)
        os.register_at_fork(after_in_child=default_in_child)

        def restore() -> None:
            if signal.getsignal(signal.SIGTERM) is interrupt:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

        return restore
    return lambda: None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: click's usage errors become one line too."""
    hold_collector()  # until the command opens its TARGET (initscope.environment)
    restore_sigterm = _terminate_as_interrupt()
    command = typer.main.get_command(app)
    try:
        try:
            code = command.main(args=argv, prog_name="initscope", standalone_mode=False)
        finally:
            _leave_the_job()
            restore_sigterm()
            end_of_cli()
    except KeyboardInterrupt:
        sys.stderr.write("initscope: interrupted\n")
        code = EXIT_INTERRUPTED
    except Exception as exc:
        if _is(exc, "NoArgsIsHelpError"):
            sys.stdout.write(exc.format_message() + "\n")  # type: ignore[attr-defined]
            code = EXIT_OK
        elif _is(exc, "UsageError"):
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "initscope"
            message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
            sys.stderr.write(f"initscope: error: {escape_text(message)}; see '{where} --help'\n")
            code = EXIT_USAGE
        elif _is(exc, "ClickException"):
            message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
            sys.stderr.write(f"initscope: error: {escape_text(message)}\n")
            code = getattr(exc, "exit_code", EXIT_USAGE)
        elif _is(exc, "Abort"):
            sys.stderr.write("initscope: interrupted\n")
            code = EXIT_INTERRUPTED
        else:
            raise
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def run() -> None:
    """The ``initscope`` console script: :func:`main`, then the process ends at once.

    Python's own shutdown after torch has been imported tears down its modules and some
    170,000 objects: 0.4-0.7 s in a plain script (`python -c "import torch"` took
    1.44-1.92 s, and 1.06-1.28 s ending in ``os._exit``), 0.05-0.1 s in the CLI, whose
    start-up objects are frozen (median of 6 one-tensor reports). Nothing of initscope's is
    left for that shutdown: outputs are written and renamed, worker pools joined and process
    groups closed before :func:`main` returns, and the standard streams are flushed here. A
    stream that cannot be flushed (a closed pipe, a full disk) leaves the exit to Python,
    which says so as it always did. ``main`` stays the entry for callers in a process of
    their own (tests call it many times)."""
    import os

    try:
        main()
    except SystemExit as done:
        if done.code is not None and not isinstance(done.code, int):
            raise
        code = done.code or 0
    else:
        code = 0
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # ValueError: a stream closed by someone else
        sys.exit(code)
    os._exit(code)
