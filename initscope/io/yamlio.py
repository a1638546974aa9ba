"""YAML reading that remembers where each value came from, for errors that say file:line:col.

PyYAML's ``compose`` keeps a ``start_mark`` on every node; :func:`load_yaml` builds the plain
Python value and a table from each path in the document (``("kwargs", "depth")``) to its
line and column, so validation can point at the exact spot.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from initscope.errors import SpecError

__all__ = [
    "Located",
    "did_you_mean",
    "load_yaml",
    "parse_scalar",
    "read_small_text",
    "shorten",
]

DocPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Located:
    """A parsed YAML document and the location of every node in it."""

    file: str
    data: Any
    marks: dict[DocPath, tuple[int, int]]
    # A key given twice in one mapping: (its path, line of the first, line:col of the second).
    # PyYAML keeps the last value silently; rules and expectations report it.
    duplicates: tuple[tuple[DocPath, int, tuple[int, int]], ...] = ()
    text: str = ""  # the file's content as parsed

    def where(self, path: DocPath) -> str:
        """``file:line:col`` of ``path``, or of its nearest located ancestor."""
        p = path
        while p not in self.marks and p:
            p = p[:-1]
        line, col = self.marks.get(p, (1, 1))
        return f"{self.file}:{line}:{col}"

    def error(self, path: DocPath, problem: str, hint: str | None = None) -> SpecError:
        at = ".".join(str(x) for x in path)
        where = self.where(path)
        return SpecError(f"{where}: {at + ': ' if at else ''}{problem}", hint)


# A configuration file a person writes has at most a few thousand nodes; YAML aliases can
# make a few hundred bytes expand to billions ("billion laughs"), which every later walk over
# the document would pay for. Past this many nodes (counted as the walk meets them, so a
# mapping that repeats one key over an alias counts every repeat) the file is refused.
MAX_NODES = 100_000
# Rules, expectations and spec files are a few kilobytes; 100,000 values take about 2 MB.
# PyYAML parses about a megabyte a second (16 MB of one plain scalar: 18 s), so a larger
# file is refused before it is parsed.
MAX_BYTES = 4 * 2**20


class _Walk:
    """The walk over the composed nodes that records each path's line and column."""

    def __init__(self) -> None:
        self.marks: dict[DocPath, tuple[int, int]] = {}
        self.duplicates: list[tuple[DocPath, int, tuple[int, int]]] = []
        self.nodes = 0

    def __call__(self, node: yaml.Node, path: DocPath) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                here = (key.start_mark.line + 1, key.start_mark.column + 1)
                if not isinstance(key, yaml.ScalarNode):
                    # Never str(key): a node's repr spells out every alias it holds.
                    raise _ComplexKey(here)
                k = str(key.value)
                sub = (*path, k)
                if k in seen:
                    self.duplicates.append((sub, seen[k], here))
                seen.setdefault(k, here[0])
                self(value, sub)
                # The key's own location, which is where "unknown key" errors should point.
                self.marks[sub] = here
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self(item, (*path, i))


class _TooLarge(Exception):
    pass


class _ComplexKey(Exception):
    def __init__(self, where: tuple[int, int]) -> None:
        super().__init__(where)
        self.where = where


def read_small_text(path: Path, limit: int) -> str:
    """The UTF-8 text of the regular file ``path``, of at most ``limit`` bytes; anything else
    raises :class:`SpecError`. The file is opened without blocking and checked by ``fstat``
    before a byte is read: a FIFO would block until a writer came, and a device such as
    /dev/zero never ends."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SpecError(f"no such file: {path}", "check the path") from None
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror or exc}", "check the file") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise SpecError(
                f"{path} is {kind}", "give a .yaml file (a FIFO, socket or device is never read)"
            )
        try:
            data = fh.read(limit + 1)  # one byte more tells a file that grew past the limit
        except OSError as exc:
            why = exc.strerror or exc
            raise SpecError(f"cannot read {path}: {why}", "check the file") from None
    if len(data) > limit:
        raise SpecError(
            f"{path} is larger than {limit // 2**20} MiB; initscope's YAML files are a few KB",
            "check that this is the file you meant",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"cannot read {path}: {exc}", "save the file as UTF-8") from None


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for echoing file content in a one-line
    error: a 1 MB string or a 5000-digit integer is named, not printed."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of more than {limit} digits"
    if isinstance(value, str) and len(value) > limit:
        return f"{value[: limit - 10]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e7`` and ``5e-3`` as floats. YAML 1.1 (PyYAML) insists
    on a dot in the mantissa (``1.0e7``) and reads these as strings; YAML 1.2 and every
    person writing ``std: 2e-2`` read a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: str | Path, display: str | None = None) -> Located:
    """Parse ``path``; a missing file or a syntax error raises :class:`SpecError`.
    ``display`` is the name messages use for the file (default: the path as given)."""
    p = Path(path)
    shown = display or str(p)
    text = read_small_text(p, MAX_BYTES)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            walk = _Walk()
            if node is not None:
                walk(node, ())
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except _ComplexKey as exc:
        line, col = exc.where
        raise SpecError(
            f"{shown}:{line}:{col}: a key is a list or a mapping",
            "write keys as plain names",
        ) from None
    except _TooLarge:
        raise SpecError(
            f"{shown}: the document expands to more than {MAX_NODES} values (YAML aliases?)",
            "write the values out; initscope files are small",
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
        raise SpecError(
            f"{where}: invalid YAML: {exc.problem or exc}",
            "fix the syntax at that spot; check the indentation (spaces, not tabs) and quote "
            "values that contain ': ' or start with a special character",
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{shown}: invalid YAML: {exc}", "fix the syntax") from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors raise these on explicitly tagged bad scalars (!!float abc,
        # !!int '', !!timestamp x) instead of a YAMLError.
        why = " ".join(str(exc).split())[:120]
        raise SpecError(
            f"{shown}: invalid YAML value: {type(exc).__name__}: {why}",
            "check explicitly tagged values (!!float, !!int, !!timestamp)",
        ) from None
    except RecursionError:
        raise SpecError(f"{shown}: the document is nested too deeply", "flatten it") from None
    return Located(shown, data, walk.marks, tuple(walk.duplicates), text)


def parse_scalar(text: str) -> Any:
    """A command-line value read as YAML: ``3`` → 3, ``[3,5]`` → [3, 5], ``false`` → False."""
    try:
        # _Loader is a SafeLoader: no Python objects are built from the text.
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError:
        return text


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or the empty string. Case is
    ignored when comparing (``linear`` finds ``Linear``)."""
    by_lower: dict[str, str] = {}
    for c in choices:
        by_lower.setdefault(c.lower(), c)
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
