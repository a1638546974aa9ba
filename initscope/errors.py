"""The exceptions initscope raises for user mistakes, and the exit codes the CLI maps them to.

Every error a user can cause carries a one-line ``message`` (what is wrong, and where) and a
``hint`` (how to fix it). The CLI prints both on one line and exits with ``EXIT_USAGE``; the
library never prints and never exits.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_VIOLATIONS = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class InitScopeError(Exception):
    """A problem with the user's input: the message says what, the hint says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt whole when it crosses a process boundary (--workers): its class without
        # calling __init__ (whose parameters differ by subclass: RulesError takes its
        # problems), then its args and attributes.
        return (_rebuild, (type(self), self.args, self.__dict__))

    def one_line(self) -> str:
        text = self.message if self.hint is None else f"{self.message}; {self.hint}"
        return " ".join(text.split())

    def lines(self) -> list[str]:
        """One line per problem (errors that collect several problems override this)."""
        return [self.one_line()]


def _rebuild(cls: type[InitScopeError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class TargetError(InitScopeError):
    """TARGET names no importable model, or the model cannot be constructed."""


class CheckpointError(InitScopeError):
    """A checkpoint is missing, unsupported, corrupt, or does not fit the model."""


class UnsafeLoadRequired(CheckpointError):
    """The checkpoint is a pickle that only executing its code could load."""


class SpecError(InitScopeError):
    """A YAML spec or arguments file is malformed."""


class InitScopeWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI prints it as
    ``initscope: warning: ...`` on stderr."""
