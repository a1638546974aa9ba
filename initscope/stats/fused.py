"""The fused statistics kernel (``kernel.c``): built on first use, cached, called via ctypes.

One pass over a tensor's values gives every statistic initscope reports (count, mean, M2,
extremes, zero/NaN/inf counts) and copies out the sample and the rows the identification
needs, where torch ops need four passes or more; it reads checkpoint files in small chunks
that stay in cache, with no page faults and no copy to fresh memory (see ``kernel.c``). It is an
accelerator only: every caller has a torch path that gives the same results (to float
rounding), taken when the kernel is not there.

The library is compiled with the system's C compiler (``$CC``, else ``cc``) the first time
statistics are computed on a machine, about 1 s, and kept in ``$INITSCOPE_CACHE`` (default
``~/.cache/initscope``, else a per-user temp folder) under a hash of the source, compiler and
CPU, so later runs load it in a millisecond. No compiler, no usable cache folder or
``INITSCOPE_FUSED=0`` means the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "DTYPES",
    "SEGMENT",
    "Accumulator",
    "FileChangedError",
    "Lines",
    "Scanned",
    "available",
    "row_sums",
    "scan",
]

# The values one accumulator covers: results depend on this split and never on the thread
# count, so a report is the same bytes on any machine (torchrun sets OMP_NUM_THREADS=1).
# 256 Ki values, so that a 1024 x 1024 matrix still splits over cores (at 1 Mi, the 684
# attention matrices of the bench's bf16 file ran on one thread each).
SEGMENT = 1 << 18
# dtype codes, as kernel.c's DT_* enum
DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_STATUS_SHORT = 1
_VERSION = 4  # fused_version() in kernel.c
# No -march=native: kernel.c picks its AVX2 code at load time, so the library is the same on
# every CPU. No fused multiply-add (-ffp-contract=off): a*b+c rounded once gives other bits on
# CPUs with FMA, and a report must be the same bytes on every machine. -Wno-psabi: GCC notes
# that 32-byte vectors pass differently with AVX; the helpers taking them are inlined.
_FLAGS = [
    "-O3",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=off",
    "-Wno-psabi",
    "-fPIC",
    "-shared",
]


class FileChangedError(OSError):
    """A file ended before the data its header promised (truncated, or rewritten while it
    was read)."""


class Accumulator(ctypes.Structure):
    """acc_t in kernel.c: one segment's statistics (moments over finite values)."""

    _fields_ = (
        ("count", ctypes.c_int64),
        ("zeros", ctypes.c_int64),
        ("nans", ctypes.c_int64),
        ("infs", ctypes.c_int64),
        ("mean", ctypes.c_double),
        ("m2", ctypes.c_double),
        ("lo", ctypes.c_double),
        ("hi", ctypes.c_double),
    )


_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def _cache_dirs() -> list[Path]:
    """Where the built library may live: the user's cache, else a per-user temp folder."""
    if os.environ.get("INITSCOPE_CACHE"):
        return [Path(os.environ["INITSCOPE_CACHE"])]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folders = [Path(tempfile.gettempdir()) / f"initscope-{uid}"]
    try:  # no HOME and no passwd entry (docker --user, env -i): only the temp folder
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folders.insert(0, base / "initscope")
    except (RuntimeError, KeyError):
        pass
    return folders


def _owned(path: Path, kind: int) -> bool:
    """``path`` is itself (not through a link) of ``kind`` (stat.S_IFDIR/S_IFREG), owned by
    this user and writable by nobody else."""
    st = os.lstat(path)
    uid = os.getuid() if hasattr(os, "getuid") else st.st_uid
    return stat.S_IFMT(st.st_mode) == kind and st.st_uid == uid and not st.st_mode & 0o022


def _private(folder: Path) -> bool:
    """Create ``folder`` (0700) if needed; True only if it is a real folder this user owns
    and nobody else can write to. A library is loaded from here, so a folder (or a link)
    someone else made in /tmp, with a library planted under the predictable name, must not
    be used; in sticky /tmp nobody else can then rename it or what it holds."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _owned(folder, stat.S_IFDIR)


def _cpu_id() -> str:
    """The CPU's model and features (x86's "model name" and "flags", ARM's "CPU
    implementer/part" and "Features", ...)."""
    keys = ("model name", "flags", "features", "cpu implementer", "cpu part", "isa", "uarch")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    seen: dict[str, str] = {}
    for line in text.splitlines():
        name = line.split(":", 1)[0].strip().lower()
        if name in keys:
            seen.setdefault(name, line)
    return "\n".join([platform.machine(), platform.processor(), *seen.values()])


def _compiler() -> list[str] | None:
    """``$CC`` split as a shell would ("ccache gcc" is two words), else cc or gcc."""
    cc = os.environ.get("CC")
    if cc:
        words = shlex.split(cc)
        found = shutil.which(words[0]) if words else None
        return [found, *words[1:]] if found else None
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def _compile(cc: list[str], source: Path, target: Path) -> bool:
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run(
            [*cc, *_FLAGS, "-o", tmp, str(source)], capture_output=True, timeout=120, check=False
        )
        if done.returncode == 0:
            os.replace(tmp, target)  # atomic: a concurrent run loads one or the other
            return True
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open(target: Path, fresh: bool = False) -> ctypes.CDLL:
    """The built library, checked: ours (a regular file of this user's, writable by nobody
    else), with the symbols and the version this module calls. OSError otherwise. ``fresh``:
    load it under a new name, since dlopen returns what it loaded before under a name (the
    damaged file this process already opened) even when the file there is new."""
    if not _owned(target, stat.S_IFREG):
        raise OSError(f"{target} is not a file of this user's alone")
    if fresh:
        link = target.with_name(f".{target.stem}-{os.getpid()}-{os.urandom(4).hex()}.so")
        os.link(target, link)
        try:
            lib = ctypes.CDLL(str(link))
        finally:
            link.unlink()
    else:
        lib = ctypes.CDLL(str(target))
    try:
        lib.fused_scan.argtypes = [ctypes.POINTER(_Job), ctypes.c_int64, ctypes.c_int64]
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.fused_rows.argtypes = [ptr, i64, i64, ptr, ptr, ptr]
        lib.fused_isa.restype = ctypes.c_char_p
        lib.fused_prefer_portable.argtypes = [ctypes.c_int]
        lib.fused_prefer_portable.restype = ctypes.c_char_p
        version = lib.fused_version()
    except AttributeError as exc:  # a library without our symbols
        raise OSError(str(exc)) from exc
    if version != _VERSION:
        raise OSError(f"{target} is version {version}, not {_VERSION}")
    return lib


def _load() -> ctypes.CDLL | None:
    if os.environ.get("INITSCOPE_FUSED", "1") == "0" or sys.byteorder != "little":
        return None
    cc = _compiler()
    if cc is None:
        return None
    source = Path(__file__).with_name("kernel.c")
    compiler = Path(cc[0]).resolve()
    key = hashlib.sha256(
        b"\0".join(
            [
                source.read_bytes(),
                " ".join(cc).encode(),
                # a compiler upgraded in place is another compiler
                f"{compiler}:{compiler.stat().st_mtime_ns}".encode(),
                " ".join(_FLAGS).encode(),
                _cpu_id().encode(),
            ]
        )
    ).hexdigest()[:16]
    for folder in _cache_dirs():
        target = folder / f"fused-{key}.so"
        try:
            if not _private(folder):
                continue
            tried = target.exists() or os.path.islink(target)
            if tried:
                try:
                    return _open(target)
                except OSError:  # damaged, foreign or stale: build it again, once
                    target.unlink()
            if _compile(cc, source, target):
                return _open(target, fresh=tried)
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def _lib() -> ctypes.CDLL | None:
    with _LOCK:
        if "lib" not in _STATE:
            try:
                _STATE["lib"] = _load()
            except Exception:  # an accelerator: whatever goes wrong, the torch path works
                _STATE["lib"] = None
        lib = _STATE["lib"]
    return lib if isinstance(lib, ctypes.CDLL) else None


def available() -> bool:
    """Whether the kernel is built and loaded (compiling it on the first call)."""
    return _lib() is not None


def _pool() -> ThreadPoolExecutor:
    """Threads for the kernel (ctypes releases the GIL): one per torch thread. A pool made
    before a fork is useless in the child, so each process makes its own."""
    with _LOCK:
        pool = _STATE.get("pool")
        if not isinstance(pool, ThreadPoolExecutor) or _STATE.get("pid") != os.getpid():
            pool = ThreadPoolExecutor(max(1, torch.get_num_threads()), "initscope-fused")
            _STATE["pool"], _STATE["pid"] = pool, os.getpid()
    return pool


@dataclass(frozen=True)
class Lines:
    """Lines of a matrix view to copy out during a scan: ``x[start + j * stride]`` for each
    start and ``j < length`` (rows: stride 1; columns: stride = the row length)."""

    starts: torch.Tensor
    length: int
    stride: int


@dataclass(frozen=True)
class Scanned:
    """A scan's result: one accumulator per SEGMENT values, the values at the positions asked
    for, and the lines asked for (count x length), both float64."""

    accumulators: list[Accumulator]
    sample: torch.Tensor
    lines: torch.Tensor | None


class _Job(ctypes.Structure):
    """scan_t in kernel.c."""

    _fields_ = (
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int64),
        ("file_offset", ctypes.c_int64),
        ("dtype", ctypes.c_int64),
        ("seg", ctypes.c_int64),
        ("out", ctypes.POINTER(Accumulator)),
        ("pos", ctypes.c_void_p),
        ("npos", ctypes.c_int64),
        ("sample", ctypes.c_void_p),
        ("line_start", ctypes.c_void_p),
        ("nlines", ctypes.c_int64),
        ("line_len", ctypes.c_int64),
        ("line_stride", ctypes.c_int64),
        ("lines", ctypes.c_void_p),
    )


def scan(
    dtype: torch.dtype,
    numel: int,
    *,
    address: int | None = None,
    fd: int | None = None,
    offset: int = 0,
    positions: torch.Tensor | None = None,
    lines: Lines | None = None,
) -> Scanned:
    """Statistics of ``numel`` values of ``dtype``, in memory at ``address`` or in file ``fd``
    at byte ``offset``, in one pass shared out over threads by segment; the values at
    ``positions`` (ascending flat positions) and the ``lines`` are copied out on the way.
    A file that ends early raises :class:`FileChangedError`."""
    lib = _lib()
    assert lib is not None
    count = -(-numel // SEGMENT)
    out = (Accumulator * count)()
    if positions is None:
        positions = torch.empty(0, dtype=torch.int64)
    pos = positions.to(torch.int64).contiguous()
    sample = torch.empty(pos.numel(), dtype=torch.float64)
    starts = torch.empty(0, dtype=torch.int64)
    copied = None
    if lines is not None:
        starts = lines.starts.to(torch.int64).contiguous()
        copied = torch.empty(starts.numel(), lines.length, dtype=torch.float64)
    job = _Job(
        mem=address,
        fd=-1 if fd is None else fd,
        file_offset=offset,
        dtype=DTYPES[dtype],
        seg=SEGMENT,
        out=out,
        pos=pos.data_ptr(),
        npos=pos.numel(),
        sample=sample.data_ptr(),
        line_start=starts.data_ptr(),
        nlines=starts.numel(),
        line_len=lines.length if lines is not None else 0,
        line_stride=lines.stride if lines is not None else 1,
        lines=copied.data_ptr() if copied is not None else None,
    )
    threads = min(max(1, torch.get_num_threads()), count)
    per = -(-count // threads)

    def part(j: int) -> int:
        start, stop = j * per * SEGMENT, min(numel, (j + 1) * per * SEGMENT)
        return int(lib.fused_scan(ctypes.byref(job), start, stop)) if start < stop else 0

    statuses = [part(0)] if threads == 1 else list(_pool().map(part, range(threads)))
    for status in statuses:
        if status == _STATUS_SHORT:
            raise FileChangedError("the file ends before the tensor's data does")
        if status < 0:
            raise OSError(-status, os.strerror(-status))
        if status != 0:
            raise MemoryError("the statistics kernel could not allocate its read buffer")
    return Scanned(list(out), sample, copied)


def row_sums(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """For a (k, len) float64 matrix: each row's mean, each row's sum of squares about the
    grand mean, the grand mean, and the sum of fourth powers about it (two passes in C)."""
    lib = _lib()
    assert lib is not None
    x = rows.to(torch.float64).contiguous()
    k, length = x.shape
    means = torch.empty(k, dtype=torch.float64)
    squares = torch.empty(k, dtype=torch.float64)
    out = torch.empty(2, dtype=torch.float64)
    lib.fused_rows(x.data_ptr(), k, length, means.data_ptr(), squares.data_ptr(), out.data_ptr())
    return means, squares, float(out[0]), float(out[1])
