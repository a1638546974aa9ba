"""Run initscope commands in one process, each under a time limit, and print what each did
as JSON: ``python -m tests.untrusted.driver SPEC.json``.

SPEC is ``{"limit": seconds, "runs": [[name, [argv...]], ...]}``. Each run calls
:func:`initscope.cli.main` in this process (torch is imported once for all of them) with its
stdout and stderr captured; a run past the limit is stopped by SIGALRM and reported as
``"timeout"``. A crash of the process itself (SIGBUS, SIGSEGV, an abort) shows to the caller as
a negative return code, which is why this runs in a subprocess of the test.
"""

from __future__ import annotations

import io
import json
import signal
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from types import FrameType


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` swallows it."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Timeout


def run(argv: list[str], limit: float) -> dict[str, object]:
    from initscope.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: object = None
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except _Timeout:
        code = "timeout"
    except BaseException as exc:  # reported, not hidden: the test fails on it
        code = f"raised {type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return {
        "code": code,
        "seconds": round(time.monotonic() - start, 3),
        "stdout": out.getvalue()[-2000:],
        "stderr": err.getvalue()[-4000:],
    }


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        spec = json.load(fh)
    results = {name: run(argv, float(spec["limit"])) for name, argv in spec["runs"]}
    sys.__stdout__.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
