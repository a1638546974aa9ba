"""Writing output files atomically: a reader never sees a half-written file, and a failure
leaves whatever was at the path before untouched."""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
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
    "refuse_input_files",
    "remove_stale_temps",
    "same_file",
    "temp_prefix",
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


def refuse_input_files(
    output: Path, inputs: Iterable[Path], *, allowed: Path | None = None
) -> None:
    """Refuse an output that is one of the files a command reads (a shard, an index, a DCP
    storage file), whatever its spelling; ``allowed`` is an input the user asked to
    replace (``apply --in-place``)."""
    if allowed is not None and same_file(output, allowed):
        return
    for path in inputs:
        if same_file(output, path):
            raise OutputError(
                f"--output {output} is one of the files the command reads ({path})",
                "write the result to another file",
            )


def output_mode(target: Path) -> int:
    """The permissions an output gets: the replaced file's, or what ``open()`` would give a
    new file under the umask (mkstemp's 0600 would hide outputs from the group)."""
    try:
        return os.stat(target).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# When this process started: a temporary file of a dead initscope run older than this is
# a leftover (a run killed by SIGKILL cannot clean up after itself).
_STARTED = time.time()
_TEMP = re.compile(r"\.(?P<name>.+)\.initscope-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp")


def temp_prefix(target: Path) -> str:
    """Temporary files for ``target`` are ``.NAME.initscope-PID-XXXXXXXX.tmp`` beside it:
    hidden, and recognisably initscope's, with the process that writes them."""
    return f".{target.name}.initscope-{os.getpid()}-"


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temporary files of ``target`` left by initscope runs that died (their
    process is gone, and the file is older than this run); never anything else."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        found = _TEMP.fullmatch(entry.name)
        if found is None or found["name"] != target.name or int(found["pid"]) == os.getpid():
            continue
        try:
            os.kill(int(found["pid"]), 0)
            continue  # still running: its file, not ours to touch
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue  # someone else's live process (or no such pid at all)
        with suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < _STARTED:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path``, moved to ``path`` when the block succeeds and
    removed when it fails (or is interrupted).

    ``replace=False`` refuses an existing ``path`` atomically: the temporary file is hard-
    linked to ``path``, which fails if anything is there, so of several runs racing to
    create one output exactly one wins."""
    target = check_writable(path)
    remove_stale_temps(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent)
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
        if replace:
            os.replace(tmp, target)
        else:
            _create(Path(tmp), target)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, FileExistsError):
            raise OutputError(f"{target} already exists", "pass --force to replace it") from None
        if isinstance(exc, OSError):
            raise OutputError(
                f"cannot write {target}: {exc.strerror or exc}",
                "check the path, its permissions and free space",
            ) from exc
        raise


def _create(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target`` only if nothing is there (FileExistsError otherwise)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:
        # A filesystem without hard links (EPERM, ENOTSUP: vfat, some FUSE and SMB mounts):
        # claim the name with O_EXCL, then rename over the (empty) claim; a reader may see
        # the empty file for that instant, and a failed rename takes the claim back.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            os.replace(tmp, target)
        except BaseException:
            with suppress(OSError):
                os.unlink(target)
            raise
        return
    os.unlink(tmp)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` on success."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
