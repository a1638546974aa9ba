"""The structure of a ``torch.save`` file, read as data from a stranger.

``torch.load(weights_only=True)`` runs no code from the file, but the functions its unpickler
may call (torch/_weights_only_unpickler.py ``_get_allowed_globals``) still let a pickle of a
few bytes cost unbounded time or memory: ``bytearray(2**40)`` fills memory with zeros,
``set(t)`` of a tensor declared with 2**40 elements makes a view per element,
``_codecs.encode(text, "punycode")`` takes time quadratic in the text, and dict keys can be
made to collide (int, float and tuple hashes are not randomized) or to hash a tuple that
nests itself exponentially. So before anything is unpickled, :func:`scan_pickle` runs the
pickle's opcodes on stand-in values and refuses those calls; only then are the same bytes
unpickled by torch's weights-only unpickler.

In a zip (what ``torch.save`` writes since 1.6) tensors land on the meta device, as under
``torch.load(map_location="meta")`` (torch/serialization.py ``load_tensor``): each storage
records its record's offset in the file (``_checkpoint_offset``) and holds nothing, once the
record is known to be stored uncompressed, inside the file, and as large as the pickle
declares. Values are then read from there one tensor at a time (initscope.io.checkpoints).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import sys
import zipfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ZIP_MAGIC",
    "NeedsGlobal",
    "PickleRefused",
    "TorchZip",
    "load_legacy",
    "needed_global",
    "scan_pickle",
]

# torch.load tells a zip from the legacy format by the first four bytes alone
# (torch/serialization.py _is_zipfile); zipfile.is_zipfile looks for a directory at the
# end, so a legacy file with a zip appended would pass for one there.
ZIP_MAGIC = b"PK\x03\x04"
# Dict keys and set members whose hashes a file can choose (ints of at least the hash
# modulus, floats, complex numbers, tuples, counted by the nodes a hash of them visits):
# n keys that collide cost n**2 / 2 comparisons, about 0.5 s at this many.
MAX_HASHED_KEYS = 8192
# Codecs linear in their input; bytes pickle as _codecs.encode(text, "latin1").
_LINEAR_CODECS = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "ascii", "utf-8"})
# The local file header before each record's name (APPNOTE.TXT 4.3.7).
_LOCAL_HEADER = 30


class NeedsGlobal(pickle.UnpicklingError):
    """The pickle imports ``name``, which torch's weights-only unpickler refuses."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the pickle needs {name}")
        self.name = name


class PickleRefused(pickle.UnpicklingError):
    """The pickle asks for work out of proportion to its size, or holds a kind of tensor
    initscope does not read; the message says which, as "the pickle ..."."""


# -- the scan --------------------------------------------------------------------------------


class _Stand:
    """A stand-in for a value the scan does not follow."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return self.what


_TENSOR = _Stand("a tensor")
_STORAGE = _Stand("a storage")
_BYTES = _Stand("bytes")
_COMPLEX = _Stand("a complex number")
_OBJECT = _Stand("an object")


@dataclass(frozen=True)
class _Global:
    name: str


class _Keys:
    """What hashing the keys seen so far costs, in nodes a hash visits (see
    MAX_HASHED_KEYS); tuples are sized when built, so no nesting is walked twice."""

    def __init__(self) -> None:
        self.used = 0
        self.tuples: dict[int, tuple[tuple[Any, ...], int]] = {}  # id -> (kept alive, nodes)

    def tuple(self, items: tuple[Any, ...]) -> tuple[Any, ...]:
        nodes = 1 + sum(self.weight(item) or 1 for item in items)
        self.tuples[id(items)] = (items, min(nodes, MAX_HASHED_KEYS + 1))
        return items

    def weight(self, value: Any) -> int:
        if isinstance(value, tuple):
            return self.tuples[id(value)][1] if id(value) in self.tuples else 1 + len(value)
        if isinstance(value, bool):
            return 0
        if isinstance(value, int):
            return 1 if abs(value) >= sys.hash_info.modulus else 0
        return 1 if isinstance(value, float) or value is _COMPLEX else 0

    def add(self, key: Any) -> None:
        self.used += self.weight(key)
        if self.used > MAX_HASHED_KEYS:
            raise PickleRefused(
                f"uses more than {MAX_HASHED_KEYS} int, float or tuple dict keys or set "
                "members whose hashes it can choose (colliding, they make loading take "
                "hours)"
            )


def _plain(value: Any, where: str) -> None:
    """Refuse a tensor or storage where the callee iterates or unpacks its argument: that
    walks every element the file declares, which costs nothing to declare."""
    if value is _TENSOR or value is _STORAGE:
        raise PickleRefused(f"passes {value} to {where}, which would iterate over its elements")


def _shape(value: Any, where: str) -> None:
    if not isinstance(value, (list, tuple)):
        raise PickleRefused(f"gives {where} a shape that is {_describe(value)}, not a tuple")


def _describe(value: Any) -> str:
    if isinstance(value, _Global):
        return value.name
    if isinstance(value, _Stand):
        return value.what
    return f"a {type(value).__name__}"


def _codec(args: list[Any], at: int, where: str) -> None:
    if len(args) > at and not (
        isinstance(args[at], str) and args[at].lower().replace("_", "-") in _LINEAR_CODECS
    ):
        raise PickleRefused(
            f"calls {where} with codec {args[at]!r} (only latin-1, ASCII and UTF-8 are read: "
            "other codecs, such as punycode, take time quadratic in the text)"
        )


def _collection(args: list[Any], keys: _Keys, name: str, pairs: bool) -> Any:
    for arg in args:
        _plain(arg, name)
    if args and isinstance(args[0], (list, tuple)):
        for item in args[0]:
            keys.add(item[0] if pairs and isinstance(item, tuple) and item else item)
    return _OBJECT


def _storage_tensor(args: list[Any], name: str, tensors_at: tuple[int, ...] = (0,)) -> Any:
    """_rebuild_tensor(_v2, _v3) and _rebuild_qtensor: (storage, offset, size, stride, ...)."""
    for i, arg in enumerate(args):
        if i not in tensors_at:
            _plain(arg, name)
    for i in (2, 3):
        if len(args) > i:
            _shape(args[i], name)
    return _TENSOR


def _from_tensor(args: list[Any], name: str) -> Any:
    """Parameter and _rebuild_parameter(_with_state): the tensor first."""
    for arg in args[1:]:
        _plain(arg, name)
    return _TENSOR


def _meta_tensor(args: list[Any], name: str) -> Any:
    for arg in args:
        _plain(arg, name)
    for i in (1, 2):
        if len(args) > i:
            _shape(args[i], name)
    return _TENSOR


_TENSOR_MAKERS: dict[str, Callable[[list[Any], str], Any]] = {
    "torch._utils._rebuild_tensor": _storage_tensor,
    "torch._utils._rebuild_tensor_v2": _storage_tensor,
    "torch._utils._rebuild_tensor_v3": _storage_tensor,
    # quantizer parameters hold per-channel scales and zero points as tensors
    "torch._utils._rebuild_qtensor": lambda a, n: _storage_tensor(a, n, (0, 4)),
    "torch._utils._rebuild_parameter": _from_tensor,
    "torch._utils._rebuild_parameter_with_state": _from_tensor,
    "torch.nn.parameter.Parameter": _from_tensor,
    "torch._utils._rebuild_meta_tensor_no_storage": _meta_tensor,
}
# Allowed by torch, but never what initscope reads: refused with the kind of tensor named.
_UNREAD = {
    "torch._utils._rebuild_sparse_tensor": "a sparse tensor (save it dense: tensor.to_dense())",
    "torch._utils._rebuild_nested_tensor": "a nested tensor",
    "torch._utils._rebuild_wrapper_subclass": "a tensor subclass without storage (a DTensor?)",
    "torch._utils._rebuild_device_tensor_from_numpy": "a tensor of a device without storage",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "a tensor of a device without storage",
}


def _call(func: Any, args: Any, keys: _Keys) -> Any:
    """What calling ``func(*args)`` gives, or PickleRefused."""
    if not isinstance(func, _Global):
        raise PickleRefused(f"calls {_describe(func)}, which is not a function")
    name = func.name
    if name in _UNREAD:
        raise PickleRefused(f"holds {_UNREAD[name]}, which initscope does not read")
    if not isinstance(args, (tuple, list)):
        raise PickleRefused(f"calls {name} with {_describe(args)} as its arguments")
    a = list(args)
    if name in _TENSOR_MAKERS:
        return _TENSOR_MAKERS[name](a, name)
    if name == "torch._tensor._rebuild_from_type_v2":  # (func, new_type, args, state)
        inner = a[0] if a else None
        if not (isinstance(inner, _Global) and inner.name in _TENSOR_MAKERS):
            raise PickleRefused(f"rebuilds a tensor subclass through {_describe(inner)}")
        for arg in a[1:2] + a[3:]:
            _plain(arg, name)
        return _call(inner, a[2] if len(a) > 2 else (), keys)
    if name in ("collections.OrderedDict", "collections.Counter", "builtins.set"):
        return _collection(a, keys, name, pairs=name == "collections.OrderedDict")
    for arg in a:
        _plain(arg, name)
    if name == "torch.Size":
        return keys.tuple(tuple(a[0])) if a and isinstance(a[0], (list, tuple)) else _OBJECT
    if name == "_codecs.encode":
        _codec(a, 1, name)
        return _BYTES
    if name == "builtins.bytearray":
        if a and isinstance(a[0], int):
            raise PickleRefused(f"calls bytearray({a[0]}), which allocates bytes it does not hold")
        if a and isinstance(a[0], str):
            _codec(a, 1, name)  # bytearray(text) without a codec is a TypeError
        return _BYTES
    if name == "builtins.complex":
        return _COMPLEX
    if name in ("torch.device", "torch.serialization._get_layout"):
        return _OBJECT
    # Tensor and storage classes: called, they allocate the size the file names.
    raise PickleRefused(f"calls {name} (it builds its own data rather than load it from the file)")


def _new(cls: Any, args: Any, keys: _Keys) -> Any:
    """NEWOBJ: torch calls ``Parameter(*args)`` or ``cls.__new__(cls, *args)``."""
    if isinstance(cls, _Global) and cls.name in (
        "torch.nn.parameter.Parameter",
        "collections.OrderedDict",
        "collections.Counter",
        "builtins.set",
        "builtins.bytearray",
        "builtins.complex",
        "torch.Size",
        "torch.device",
    ):
        return _call(cls, args, keys)
    raise PickleRefused(f"creates {_describe(cls)} (it builds its own data)")


def _build(inst: Any, state: Any) -> None:
    """BUILD: ``tensor.set_(*state)``, or ``__setstate__``/``__dict__.update`` of the state."""
    _plain(state, "BUILD")
    if isinstance(state, (tuple, list)):
        for i, item in enumerate(state):
            if not (inst is _TENSOR and i == 0):
                _plain(item, "BUILD")
        if inst is _TENSOR:
            for i in (2, 3):
                if len(state) > i:
                    _shape(state[i], "Tensor.set_")


def _allowed_globals() -> Collection[str]:
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed: Collection[str] = _get_allowed_globals()
    return allowed


# The opcodes torch's weights-only unpickler runs (torch/_weights_only_unpickler.py load);
# any other makes it raise, so the scan stops there too.
_LITERALS = frozenset(
    {"BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING"}
)


def scan_pickle(data: bytes, start: int = 0) -> int:
    """Run the pickle at ``data[start:]`` on stand-in values; return where it ends. Raises
    :class:`NeedsGlobal` for a global torch's weights-only unpickler refuses,
    :class:`PickleRefused` for a call that would cost more than the file holds, and
    ``pickle.UnpicklingError`` for what that unpickler cannot read."""
    fh = io.BytesIO(data)
    fh.seek(start)
    machine = _Machine(_allowed_globals())
    try:
        for op, arg, _ in pickletools.genops(fh):
            name = op.name
            if name == "STOP":
                return fh.tell()
            if name == "PROTO":
                continue
            machine.step(name, arg)
    except (NeedsGlobal, PickleRefused):
        raise
    except pickle.UnpicklingError:
        found = needed_global(data[start:])
        if found is not None:
            raise NeedsGlobal(found) from None
        raise
    except (ValueError, IndexError, KeyError) as exc:  # a damaged pickle
        raise pickle.UnpicklingError(f"damaged pickle: {exc}") from None
    raise pickle.UnpicklingError("the pickle ends before its STOP opcode")


# The opcodes each handler of _Machine runs; together, every opcode besides PROTO and STOP
# that torch's weights-only unpickler reads.
_PUSH_OPS = _LITERALS | {
    "GLOBAL",
    "NONE",
    "NEWTRUE",
    "NEWFALSE",
    "EMPTY_TUPLE",
    "EMPTY_LIST",
    "EMPTY_DICT",
    "EMPTY_SET",
}
_CONTAINER_OPS = frozenset(
    {"MARK", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "APPEND", "APPENDS", "SETITEM", "SETITEMS"}
)
_MEMO_OPS = frozenset({"BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT"})
_CALL_OPS = frozenset({"BINPERSID", "REDUCE", "NEWOBJ", "BUILD"})


class _Machine:
    """The pickle machine :func:`scan_pickle` runs: the stack, marks and memo of torch's
    weights-only unpickler, holding plain values and stand-ins (:class:`_Stand`,
    :class:`_Global`) where that unpickler would hold objects, and the cost of the dict
    keys and set members hashed so far. Each opcode that unpickler reads has one handler
    here (a method per kind of opcode); any other is refused, as that unpickler refuses
    it. A damaged pickle (an empty stack, a missing memo entry) raises IndexError or
    KeyError, which the scan reports as damage."""

    def __init__(self, allowed: Collection[str]) -> None:
        self.allowed = allowed
        self.keys = _Keys()
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.handlers: dict[str, Callable[[str, Any], None]] = {
            **dict.fromkeys(_PUSH_OPS, self.push),
            **dict.fromkeys(_CONTAINER_OPS, self.container),
            **dict.fromkeys(_MEMO_OPS, self.memo_op),
            **dict.fromkeys(_CALL_OPS, self.call),
        }

    def step(self, name: str, arg: Any) -> None:
        """Run one opcode (any but PROTO and STOP, which the scan handles itself)."""
        handler = self.handlers.get(name)
        if handler is None:
            raise pickle.UnpicklingError(
                f"opcode {name}, which torch's weights-only unpickler does not read"
            )
        handler(name, arg)

    def pop_mark(self) -> list[Any]:
        """The items pushed since the last MARK; the stack before it is the stack again."""
        items, self.stack = self.stack, self.marks.pop()
        return items

    def push(self, name: str, arg: Any) -> None:
        """Opcodes that push one value: a literal, a global torch allows (any other is
        refused here, before anything calls it), a constant or an empty container."""
        if name in _LITERALS:
            self.stack.append(arg)
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            if f"{module}.{attr}" not in self.allowed:
                raise NeedsGlobal(f"{module}.{attr}")
            self.stack.append(_Global(f"{module}.{attr}"))
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            self.stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name == "EMPTY_TUPLE":
            self.stack.append(self.keys.tuple(()))
        elif name == "EMPTY_LIST":
            self.stack.append([])
        else:  # EMPTY_DICT, EMPTY_SET: their items are only counted (see container)
            self.stack.append(_OBJECT)

    def container(self, name: str, arg: Any) -> None:
        """Opcodes that build tuples and fill lists and dicts. Tuples are sized as they are
        built and every dict key is counted (:class:`_Keys`), so that hashing them cannot
        cost more than MAX_HASHED_KEYS; lists are kept, as REDUCE reads its arguments."""
        if name == "MARK":
            self.marks.append(self.stack)
            self.stack = []
        elif name == "TUPLE":
            items = self.pop_mark()
            self.stack.append(self.keys.tuple(tuple(items)))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(self.stack) < n:
                raise IndexError("stack underflow")
            self.stack[-n:] = [self.keys.tuple(tuple(self.stack[-n:]))]
        elif name == "APPEND":
            item = self.stack.pop()
            if isinstance(self.stack[-1], list):
                self.stack[-1].append(item)
        elif name == "APPENDS":
            items = self.pop_mark()
            if isinstance(self.stack[-1], list):
                self.stack[-1].extend(items)
        elif name == "SETITEM":
            self.stack.pop()
            self.keys.add(self.stack.pop())
            if not self.stack:  # no dict to set the item in
                raise IndexError("stack underflow")
        else:  # SETITEMS
            items = self.pop_mark()
            for key in items[::2]:
                self.keys.add(key)
            if not self.stack:
                raise IndexError("stack underflow")

    def memo_op(self, name: str, arg: Any) -> None:
        """BINGET and LONG_BINGET push a memo entry; BINPUT and LONG_BINPUT store the top
        of the stack in the memo."""
        if name in ("BINGET", "LONG_BINGET"):
            self.stack.append(self.memo[int(arg or 0)])
        else:  # BINPUT, LONG_BINPUT
            self.memo[int(arg or 0)] = self.stack[-1]

    def call(self, name: str, arg: Any) -> None:
        """Opcodes that call into torch: a persistent id (a storage of the zip), REDUCE and
        NEWOBJ (each call checked by :func:`_call` and :func:`_new`) and BUILD."""
        if name == "BINPERSID":
            self.stack[-1] = _STORAGE
        elif name == "REDUCE":
            args = self.stack.pop()
            self.stack[-1] = _call(self.stack[-1], args, self.keys)
        elif name == "NEWOBJ":
            args = self.stack.pop()
            self.stack[-1] = _new(self.stack[-1], args, self.keys)
        else:  # BUILD
            state = self.stack.pop()
            _build(self.stack[-1], state)


def needed_global(data: bytes) -> str | None:
    """The first class or function the pickle ``data`` imports in any protocol (GLOBAL,
    INST, or STACK_GLOBAL of the strings before it), or None when it names none or cannot
    be parsed (then it is damaged, not unsafe)."""
    strings: list[str] = []
    memo: dict[int, str | None] = {}
    pushed: str | None = None  # the string the previous opcode pushed, if it pushed one
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                return arg.replace(" ", ".")
            if op.name == "STACK_GLOBAL":
                return ".".join(strings[-2:]) if len(strings) >= 2 else "a global"
            string = arg if isinstance(arg, str) and "UNICODE" in op.name else None
            if op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int):
                string = memo.get(arg)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = pushed
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and isinstance(arg, int):
                memo[arg] = pushed
            if string is not None:
                strings.append(string)
            pushed = string
    except Exception:
        return None
    return None


# -- the zip ---------------------------------------------------------------------------------


class TorchZip:
    """A torch.save zip open as ``fd`` (not owned: the caller closes it), its records
    checked as they are used: stored, not compressed or encrypted, inside the file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size
        with os.fdopen(fd, "rb", closefd=False) as fh:
            self.records: dict[str, zipfile.ZipInfo] = {}
            with zipfile.ZipFile(fh) as zf:
                for info in zf.infolist():
                    if info.filename in self.records:
                        raise ValueError(f"the zip holds {info.filename!r} twice")
                    self.records[info.filename] = info
        # Records are looked up under the archive's folder, named by the first record
        # (caffe2/serialize/inline_container.cc, PyTorchStreamReader::init).
        first = next(iter(self.records), "")
        if "/" not in first:
            raise ValueError("the zip's records are not in one folder, as torch.save's are")
        self.prefix = first.split("/", 1)[0] + "/"
        self._spans: dict[str, tuple[int, int]] = {}

    def span(self, name: str) -> tuple[int, int]:
        """Where record ``name`` (under the archive's folder) lies: (offset, size)."""
        if name in self._spans:
            return self._spans[name]
        info = self.records.get(self.prefix + name)
        if info is None:
            raise ValueError(f"the zip has no record {name}")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
            raise ValueError(
                f"record {name} is compressed or encrypted (torch.save stores records as they are)"
            )
        header = os.pread(self.fd, _LOCAL_HEADER, info.header_offset)
        if len(header) < _LOCAL_HEADER or header[:4] != ZIP_MAGIC:
            raise ValueError(f"record {name} has no local header where the directory says")
        start = (
            info.header_offset
            + _LOCAL_HEADER
            + int.from_bytes(header[26:28], "little")
            + int.from_bytes(header[28:30], "little")
        )
        if info.file_size != info.compress_size or start + info.file_size > self.size:
            raise ValueError(f"record {name} ends past the end of the file")
        self._spans[name] = (start, info.file_size)
        return start, info.file_size

    def read(self, name: str) -> bytes:
        start, size = self.span(name)
        data = os.pread(self.fd, size, start)
        while len(data) < size:
            more = os.pread(self.fd, size - len(data), start + len(data))
            if not more:
                raise ValueError(f"the file ends inside record {name}")
            data += more
        return data

    def byteswap(self) -> bool:
        """Whether tensors were saved in the other byte order (torch/serialization.py
        ``_load``: the ``byteorder`` record, native when absent)."""
        if self.prefix + "byteorder" not in self.records:
            return False
        order = self.read("byteorder")
        if order not in (b"little", b"big"):
            raise ValueError(f"unknown byte order {order[:16]!r}")
        return order.decode() != sys.byteorder

    def load(self) -> Any:
        """The pickled object, scanned then unpickled by torch's weights-only unpickler,
        every storage on the meta device at its record's place in the file."""
        from torch._weights_only_unpickler import Unpickler

        data = self.read("data.pkl")
        scan_pickle(data)
        storages: dict[tuple[str, int], torch.UntypedStorage] = {}

        def persistent_load(saved_id: Any) -> torch.storage.TypedStorage:
            if not (isinstance(saved_id, tuple) and len(saved_id) == 5):
                raise pickle.UnpicklingError(f"unexpected persistent id {saved_id!r:.80}")
            typename, storage_type, key, _location, numel = saved_id
            dtype = torch.uint8 if storage_type is torch.UntypedStorage else None
            dtype = dtype or getattr(storage_type, "dtype", None)
            if isinstance(key, bytes):
                key = key.decode("ascii")
            if (
                _ascii(typename) != "storage"
                or not isinstance(dtype, torch.dtype)
                or not isinstance(key, str)
                or type(numel) is not int
                or numel < 0
            ):
                raise pickle.UnpicklingError(f"unexpected persistent id {saved_id!r:.80}")
            nbytes = numel * dtype.itemsize
            if (key, nbytes) not in storages:
                offset, size = self.span(f"data/{key}")
                if nbytes > size:
                    raise ValueError(
                        f"storage data/{key} is declared as {nbytes} bytes, its record holds {size}"
                    )
                storage = torch.UntypedStorage(nbytes, device="meta")  # type: ignore[no-untyped-call]
                storage._checkpoint_offset = offset
                storages[key, nbytes] = storage
            return torch.storage.TypedStorage(  # type: ignore[no-untyped-call]
                wrap_storage=storages[key, nbytes], dtype=dtype, _internal=True
            )

        unpickler = Unpickler(io.BytesIO(data), encoding="utf-8")
        unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
        return unpickler.load()  # type: ignore[no-untyped-call]


def _ascii(value: Any) -> Any:
    return value.decode("ascii") if isinstance(value, bytes) else value


# torch.save's legacy format is five pickles in a row (magic number, protocol version,
# system info, the object, its storage keys), then the storages' bytes.
_LEGACY_PICKLES = 5


def load_legacy(data: bytes) -> Any:
    """A legacy (pre-zip) file's object from its bytes, read whole (the format keeps no
    offsets), each of its pickles scanned before torch reads it."""
    at = 0
    for _ in range(_LEGACY_PICKLES):
        at = scan_pickle(data, at)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
