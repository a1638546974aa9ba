"""Writing output files atomically: a reader never sees a half-written file, and a failure
leaves whatever was at the path before untouched."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from initscope.errors import InitScopeError

__all__ = [
    "OutputError",
    "atomic_path",
    "atomic_write",
    "check_writable",
    "output_mode",
    "same_file",
]


class OutputError(InitScopeError):
    """An output path cannot be written."""


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, before any slow work, when ``path`` cannot be an output file."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(
            f"cannot write {target}: it is a directory", "give a file name, e.g. out/report.json"
        )
    if not target.parent.is_dir():
        raise OutputError(
            f"cannot write {target}: directory {target.parent} does not exist",
            "create it first or choose another output path",
        )
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write {target}: directory {target.parent} is not writable",
            "check its permissions or choose another output path",
        )
    return target


def same_file(a: Path, b: Path) -> bool:
    """Whether two existing paths are one file (through links, or another spelling)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def output_mode(target: Path) -> int:
    """The permissions an output gets: the replaced file's, or what ``open()`` would give a
    new file under the umask (mkstemp's 0600 would hide outputs from the group)."""
    try:
        return os.stat(target).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over it when the block succeeds and
    removed when it fails."""
    target = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(
            f"cannot write {target}: {exc.strerror or exc}",
            "check the directory's permissions and free space",
        ) from exc
    try:
        yield Path(tmp)
        # Flush to disk before the rename, so a crash cannot leave a renamed empty file.
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, output_mode(target))
        os.replace(tmp, target)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(
                f"cannot write {target}: {exc.strerror or exc}",
                "check the path, its permissions and free space",
            ) from exc
        raise


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` on success."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
