"""The fused statistics kernel's library: found, loaded and checked, without importing torch.

The kernel (``kernel.c``) is built when initscope is installed, as the optional extension
module ``initscope.stats._kernel`` (see setup.py); where no C compiler worked, the install
went on without it. Python imports the module only to learn its file, and ctypes loads that
file: its statistics functions are plain C. Nothing is compiled at run time.

This module holds no torch import, so that ``initscope --version`` can say which path
computes statistics (``describe``) within the CLI's start-up budget; ``fused`` calls the
library with torch tensors.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["VERSION", "describe", "library", "loaded_library"]

VERSION = 8  # fused_version() in kernel.c: the layout and signatures fused.py expects
_BUILD = "installing initscope where a C compiler works builds it"


class _Loaded(NamedTuple):
    lib: ctypes.CDLL | None
    path: str  # the library's file, where it was found
    why: str  # why it is not used, when lib is None


_LOCK = threading.Lock()
_LOADED: list[_Loaded] = []  # loaded once per process, on first use


def _load() -> _Loaded:
    if sys.byteorder != "little":
        return _Loaded(None, "", "the C kernel reads little-endian values only")
    if importlib.util.find_spec("initscope.stats._kernel") is None:
        # no C compiler worked when initscope was installed, or it runs from a source tree
        return _Loaded(None, "", f"the C kernel is not built; {_BUILD}")
    try:
        from initscope.stats import _kernel
    except ImportError as exc:  # built, but not loadable here (another platform, a bad file)
        return _Loaded(None, "", f"the C kernel cannot be imported ({exc}); {_BUILD}")
    path = str(_kernel.__file__)
    try:
        lib = ctypes.CDLL(path)
        version = lib.fused_version()
        if version != VERSION:  # a module built from another kernel.c, left in place
            why = f"the C kernel at {path} is version {version}, not {VERSION}; reinstall initscope"
            return _Loaded(None, path, why)
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.fused_scan.argtypes = [ptr, i64, i64]
        lib.fused_row_test.argtypes = [ptr, i64, i64, ptr]
        lib.fused_row_test.restype = ctypes.c_int
        lib.fused_samples.argtypes = [ptr, ptr, i64, ptr, ptr]
        lib.fused_samples.restype = ctypes.c_int
        d = ctypes.c_double
        lib.fused_ks.argtypes = [ptr, i64, ctypes.c_int, d, d, d, d]
        lib.fused_ks.restype = d
        lib.fused_gammainc.argtypes = [d, d, ctypes.c_int]
        lib.fused_gammainc.restype = d
        lib.fused_positions.argtypes = [ctypes.c_uint64, i64, i64, ptr]
        lib.fused_positions.restype = None
        lib.fused_kolmogorov_sf.argtypes = [d]
        lib.fused_kolmogorov_sf.restype = d
        lib.fused_isa.restype = ctypes.c_char_p
        lib.fused_prefer_portable.argtypes = [ctypes.c_int]
        lib.fused_prefer_portable.restype = ctypes.c_char_p
    except (OSError, AttributeError) as exc:  # unloadable, or without our symbols
        return _Loaded(None, path, f"the C kernel at {path} cannot be used: {exc}")
    return _Loaded(lib, path, "")


def _loaded() -> _Loaded:
    if _LOADED:  # set once, never changed: no lock needed to read it
        return _LOADED[0]
    with _LOCK:
        if not _LOADED:
            try:
                _LOADED.append(_load())
            except Exception as exc:  # an accelerator: whatever goes wrong, torch works
                _LOADED.append(_Loaded(None, "", f"the C kernel cannot be used: {exc}"))
        return _LOADED[0]


def _c_getenv() -> Callable[[bytes], bytes | None] | None:
    """The C library's getenv where there is one (POSIX): the process environment, which
    ``os.environ`` keeps in step (putenv, unsetenv) as it changes, read in 0.17 µs where
    ``os.environ.get`` takes 0.7 µs (its key and value encoded and decoded in Python): a
    tensor's statistics ask several times."""
    if os.name != "posix":
        return None
    try:
        getenv = ctypes.CDLL(None).getenv
    except (OSError, AttributeError):
        return None
    getenv.argtypes = [ctypes.c_char_p]
    getenv.restype = ctypes.c_char_p
    return getenv


_GETENV = _c_getenv()


def _disabled() -> bool:
    """``INITSCOPE_FUSED=0`` forces the torch path; read at each call, so a test or a
    caller can set it at any time."""
    if _GETENV is not None:
        return _GETENV(b"INITSCOPE_FUSED") == b"0"
    return os.environ.get("INITSCOPE_FUSED", "1") == "0"


def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None when statistics are to be computed with torch."""
    return None if _disabled() else _loaded().lib


def loaded_library() -> ctypes.CDLL | None:
    """The loaded kernel whatever ``INITSCOPE_FUSED`` says: for the calls of a caller that
    has asked :func:`library` already (reading the environment costs microseconds, and a
    tensor's statistics make several calls)."""
    return _loaded().lib


def describe() -> str:
    """Which path computes statistics, in words: the kernel with its instruction set and
    file, or torch and why."""
    if _disabled():
        return "torch (INITSCOPE_FUSED=0)"
    loaded = _loaded()
    if loaded.lib is None:
        return f"torch ({loaded.why})"
    isa = loaded.lib.fused_isa().decode()
    return f"fused C kernel ({isa}) at {loaded.path}"
