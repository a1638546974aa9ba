"""The ``initscope`` command line: parse, call the library, render, map errors to exit codes.

Nothing here computes anything. One module per group of commands (``report``, ``explain``,
``apply``, ``gate``); the options they share live in :mod:`initscope.cli.options`, what they
do around the library call in :mod:`initscope.cli.runtime`. Library modules are imported
inside the commands so that ``--help`` and argument errors do not pay for importing torch.
"""

from __future__ import annotations

from initscope.cli import apply, explain, gate, report  # noqa: F401 - registers the commands
from initscope.cli.app import app
from initscope.cli.main import main, run
from initscope.cli.options import complete_signatures

__all__ = [
    "app",
    "main",
    "run",
]

complete_signatures()
