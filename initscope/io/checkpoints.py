"""Safe reading of checkpoint files, and atomic writing of outputs.

Every byte of a checkpoint is data from a stranger: nothing in it may run code, block, or
make initscope allocate more than the tensors the file really holds.

- ``.pt``/``.pth``/``.bin``/``.ckpt`` (torch.save zips): the pickle is read by torch's
  weights-only unpickler with tensors on the meta device, so only structure is read; each
  tensor's bytes are then read with ``pread`` from its storage's place in the file, when
  asked for. Nothing is mapped (a file truncated while read is an error, not SIGBUS).
- ``.safetensors``: the header is parsed and checked here, tensors read with ``pread``.
- Folders, ``*.index.json`` and DCP folders: see the functions below and initscope.io.dcp.

Loading a pickled ``nn.Module`` executes code from the file, so it needs
``unsafe_load=True`` (``--unsafe-load``).
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import re
import stat
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from initscope.errors import CheckpointError, UnsafeLoadRequired
from initscope.io.hub import in_cache_blobs
from initscope.io.saving import METADATA_KEY, PROVENANCE_KEY, Provenance
from initscope.io.torchfile import (
    ZIP_MAGIC,
    NeedsGlobal,
    PickleRefused,
    TorchZip,
    load_legacy,
)
from initscope.io.yamlio import shorten

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "Checkpoint",
    "StoredTensor",
    "TensorInfo",
    "bounded_numel",
    "checkpoint_files",
    "open_checkpoint",
    "open_regular",
]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
CHECKPOINT_SUFFIXES = PICKLE_SUFFIXES + SAFETENSORS_SUFFIXES
# Keys under which training scripts nest the state dict (as timm's _helpers.load_state_dict
# and Lightning do), unwrapped outermost first.
_CONTAINER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "net",
    "state",
    "weights",
    "params",
)
# DataParallel/DDP save under "module.", torch.compile under "_orig_mod.".
_PREFIXES = ("module.", "_orig_mod.")
# How deep containers and wrappers are unwrapped: {"model": {"state_dict": ...}} is two.
_MAX_NESTING = 5
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorInfo:
    """A checkpoint entry's name and metadata, known without reading its values."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @functools.cached_property
    def numel(self) -> int:  # asked several times per tensor read
        return math.prod(self.shape)


@dataclass(frozen=True)
class StoredTensor:
    """Where a tensor's values lie, uncompressed and contiguous, in an open file: what the
    fused kernel reads directly (see initscope.stats.fused), without loading the tensor."""

    info: TensorInfo
    path: Path  # the file (a shard's own, in a sharded checkpoint), for error messages
    fd: int
    offset: int

    def error(self, exc: BaseException) -> CheckpointError:
        return read_error(self.path, self.info.name, exc)


class Checkpoint:
    """An open checkpoint: names and metadata up front, values read one tensor at a time.

    ``infos`` is keyed by the names as saved (after unwrapping containers such as
    ``{"state_dict": ...}``); :meth:`keyed` gives the names to show or to match a model by.
    """

    def __init__(
        self,
        path: Path,
        infos: Mapping[str, TensorInfo],
        loader: Callable[[str], torch.Tensor],
        *,
        module: torch.nn.Module | None = None,
        aliases: Mapping[str, str] | None = None,
        closer: Callable[[], None] | None = None,
        provenance: Provenance | None = None,
        extra: tuple[str, ...] = (),
        rows: Callable[[str, int, int], torch.Tensor] | None = None,
        stored: Callable[[str], StoredTensor | None] | None = None,
        files: tuple[Path, ...] | None = None,
    ) -> None:
        self.path = path
        # Every file this checkpoint reads (default: the one at path).
        self.files = files if files is not None else (path,)
        # Where a tensor's bytes are in the file (safetensors); None: only through load.
        self._stored = stored
        # Reads rows [start, stop) of a tensor without the rest (safetensors slices, views
        # on a mapped .pt); None: only whole tensors can be read.
        self._rows = rows
        # What the file holds besides the state dict (a training checkpoint's "epoch",
        # "optimizer", ...): a rewrite of the state dict alone would lose them.
        self.extra = extra
        # What made the file, when initscope wrote it (see initscope.io.saving).
        self.provenance = provenance
        self.infos = dict(infos)
        self.module = module
        # name -> the first name sharing its storage (torch.save keeps tied tensors shared).
        self.aliases = dict(aliases or {})
        self._loader = loader
        self._closer = closer

    def keyed(self, expected: Collection[str] | None = None) -> dict[str, str]:
        """Map names to the saved keys: as saved, or with the DDP ``module.`` and
        torch.compile ``_orig_mod.`` prefixes stripped, whichever matches ``expected`` (a
        model's state-dict keys) better; stripped when there is no model to match."""
        saved = list(self.infos)
        stripped = _strip_prefixes(saved)
        if stripped is None:
            return {k: k for k in saved}
        if expected is not None:
            want = set(expected)
            if len(want & set(stripped)) <= len(want & set(saved)):
                return {k: k for k in saved}
        return dict(zip(stripped, saved, strict=True))

    def load(self, name: str) -> torch.Tensor:
        try:
            return self._loader(name)
        except CheckpointError:
            raise  # already says what is wrong, and where
        except Exception as exc:
            raise self.read_error(name, exc) from exc

    def stored(self, name: str) -> StoredTensor | None:
        """Where ``name``'s values are in the file, when the format stores them plainly."""
        return self._stored(name) if self._stored is not None else None

    def read_error(self, name: str, exc: BaseException) -> CheckpointError:
        return read_error(self.path, name, exc)

    @property
    def reads_rows(self) -> bool:
        """Whether :meth:`read_rows` reads only those rows (else it loads the whole tensor)."""
        return self._rows is not None

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of ``name``: only those when the format allows it."""
        if self._rows is not None:
            return self._rows(name, start, stop)
        return self.load(name)[start:stop]

    def chunks(self, name: str, budget: int) -> Iterator[tuple[int, torch.Tensor]]:
        """The tensor ``name`` as flat pieces of at most about ``budget`` bytes, each with
        its flat offset: the whole tensor at once when it fits, else blocks of rows."""
        info = self.infos[name]
        nbytes = info.numel * info.dtype.itemsize
        if nbytes <= budget or self._rows is None or len(info.shape) == 0 or info.numel == 0:
            yield 0, self.load(name).reshape(-1)
            return
        per_row = info.numel // info.shape[0]
        step = max(1, budget // max(per_row * info.dtype.itemsize, 1))
        for start in range(0, info.shape[0], step):
            stop = min(start + step, info.shape[0])
            try:
                block = self._rows(name, start, stop)
            except Exception as exc:
                raise self.read_error(name, exc) from exc
            yield start * per_row, block.reshape(-1)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_error(path: Path, name: str, exc: BaseException) -> CheckpointError:
    """The error for a tensor that could not be read, whatever read it."""
    return CheckpointError(
        f"cannot read tensor {name!r} from {path}: {_reason(exc)}",
        "the file is truncated or corrupt; re-save or re-download it",
    )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # torch's own messages run to paragraphs; the first sentence names the problem.
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0][:200]
    # A bare KeyError('99') or IndexError says nothing without its type.
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def open_checkpoint(
    path: str | os.PathLike[str],
    *,
    unsafe_load: bool = False,
    allow_outside: bool = False,
    key: str | None = None,
) -> Checkpoint:
    """Open ``path`` for reading, or raise :class:`CheckpointError` saying what is wrong.

    ``allow_outside`` lets an index name shards outside its own folder (absolute paths,
    ``..``, symlinks that leave it); an index is data from the file, so by default it may not.
    ``key`` (``a.b``) selects the entry of a torch.save file that holds the state dict, where
    the usual containers (``state_dict``, ``model``, ...) are not what the file uses.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such file: {p}", "check the path")
    if key is not None:
        if p.is_dir() or p.suffix.lower() not in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"--key {shorten(key)} selects an entry of a torch.save file, and {p} is not one",
                f"drop --key, or point at a {', '.join(PICKLE_SUFFIXES)} file",
            )
        _require_regular(p)
        return _open_pickle(p, unsafe_load, key)
    if p.is_dir():
        return _open_directory(p, unsafe_load, allow_outside)
    _require_regular(p)
    if p.name.lower().endswith(".index.json"):
        return _open_index(p, unsafe_load, allow_outside)
    return _open_file(p, unsafe_load)


def _open_file(p: Path, unsafe_load: bool) -> Checkpoint:
    """One checkpoint file, by its suffix (never an index or a folder: shards are files)."""
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _open_safetensors(p)
    if suffix in PICKLE_SUFFIXES:
        return _open_pickle(p, unsafe_load)
    raise CheckpointError(
        f"unsupported file type {p.suffix or '(none)'!r} for {p}",
        f"initscope reads {', '.join(CHECKPOINT_SUFFIXES)} checkpoints and .yaml specs",
    )


def _require_regular(p: Path, label: str | None = None) -> None:
    """Refuse a FIFO, socket, device or folder where a file is read: opening a FIFO blocks
    until a writer comes, and a device can be endless. ``stat`` never opens the path.
    ``label`` names the file in messages (default: its path)."""
    name = label or str(p)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{name} is missing", "download or copy every shard") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in a name from a file
        why = getattr(exc, "strerror", None) or exc
        raise CheckpointError(f"cannot read {name}: {why}", "check the path") from None
    _refuse_irregular(mode, name)


def _refuse_irregular(mode: int, name: str) -> None:
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise CheckpointError(
            f"{name} is {kind}",
            "point at a checkpoint file (a FIFO, socket or device is never read)",
        )


def open_regular(p: Path, label: str | None = None) -> int:
    """A read-only descriptor of the regular file ``p``, or :class:`CheckpointError`. The
    path is checked by ``stat`` first, then opened without blocking and checked again by
    ``fstat`` (it may have been swapped for a FIFO in between): nothing waits for a writer."""
    _require_regular(p, label)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        why = exc.strerror or exc
        raise CheckpointError(f"cannot read {label or p}: {why}", "check the path") from None
    try:
        _refuse_irregular(os.fstat(fd).st_mode, label or str(p))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(p: Path, limit: int, label: str | None = None) -> bytes:
    """At most ``limit + 1`` bytes of the regular file ``p`` (opened as :func:`open_regular`
    opens it): one byte more than ``limit`` tells the caller the file is over its cap."""
    with os.fdopen(open_regular(p, label), "rb") as fh:
        return fh.read(limit + 1)


def checkpoint_files(
    path: str | os.PathLike[str], *, unsafe_load: bool = False, allow_outside: bool = False
) -> tuple[Path, ...]:
    """Every file that reading the checkpoint at ``path`` reads (the index and each shard,
    a DCP folder's ``.metadata`` and ``.distcp`` files): what an output must never replace."""
    with open_checkpoint(path, unsafe_load=unsafe_load, allow_outside=allow_outside) as ckpt:
        return ckpt.files


# -- sharded checkpoints: a folder of shards, an index, a DCP folder -------------------------


def _open_directory(p: Path, unsafe_load: bool, allow_outside: bool) -> Checkpoint:
    # An index or checkpoint files first: a stray .metadata (another tool's) in a model folder
    # does not make it a DCP checkpoint.
    indexes = sorted(p.glob("*.index.json"), key=lambda f: "safetensors" not in f.name)
    if indexes:
        return _open_index(indexes[0], unsafe_load, allow_outside)
    files = [f for f in p.iterdir() if f.suffix.lower() in CHECKPOINT_SUFFIXES]
    # A model folder (config.json) is never DCP, whatever else lies in it.
    if not files and (p / ".metadata").exists() and not (p / "config.json").exists():
        return _open_dcp(p, unsafe_load)
    # A Hugging Face folder often holds the same weights twice (.safetensors and .bin).
    safetensors = [f for f in files if f.suffix.lower() in SAFETENSORS_SUFFIXES]
    files = sorted(safetensors or files, key=lambda f: _natural_key(f.name))
    if not files:
        raise CheckpointError(
            f"{p} holds no checkpoint files",
            f"point at a folder of {', '.join(CHECKPOINT_SUFFIXES)} shards, a *.index.json, "
            "or a torch.distributed.checkpoint folder (with .metadata)",
        )
    return _open_shards(p, files, unsafe_load)


# An index lists a few hundred bytes per tensor: 64 MiB is hundreds of thousands of tensors.
MAX_INDEX_BYTES = 64 * 2**20


def _open_index(p: Path, unsafe_load: bool, allow_outside: bool) -> Checkpoint:
    """A transformers ``*.index.json``: ``{"weight_map": {name: shard file}}``. The index is
    data from a file: its shards must be checkpoint files (never another index or a folder,
    so there is no cycle to follow) inside its own folder unless ``allow_outside``; in a
    Hugging Face cache snapshot, a shard's link may resolve into the repo's ``blobs``."""
    text = read_regular(p, MAX_INDEX_BYTES)  # an index found in a folder may be a FIFO
    try:
        if len(text) > MAX_INDEX_BYTES:
            raise ValueError(f"over {MAX_INDEX_BYTES // 2**20} MiB")
        weight_map = json.loads(text.decode("utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in weight_map.items()
        ):
            raise TypeError("weight_map must map tensor names to shard file names")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CheckpointError(
            f"cannot read {p} as a shard index: {_reason(exc)}",
            'an index is JSON with a "weight_map" of tensor name to shard file',
        ) from None
    folder = p.parent.resolve()
    files: list[Path] = []
    for name in dict.fromkeys(weight_map.values()):
        f = p.parent / name
        shown = name if len(name) <= 200 and name.isprintable() else shorten(name)
        label = f"shard {shown} listed in {p.name}"
        if not f.name.lower().endswith(CHECKPOINT_SUFFIXES) or f.name.lower().endswith(
            ".index.json"
        ):
            raise CheckpointError(
                f"{p.name} names {shorten(name)} as a shard, which is not a checkpoint file",
                f"shards are {', '.join(CHECKPOINT_SUFFIXES)} files; fix or re-download the index",
            )
        if not allow_outside:
            try:
                inside = f.resolve().is_relative_to(folder)
            except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
                _require_regular(f, label)  # names what is wrong with the path
                inside = False
            if not inside and not in_cache_blobs(f, p.parent):
                raise CheckpointError(
                    f"{p.name} names shard {shorten(name)}, which lies outside {p.parent}",
                    "an index may only name files in its own folder; pass --allow-outside if "
                    "you trust the index",
                )
        _require_regular(f, label)
        files.append(f)
    ckpt = _open_shards(p, files, unsafe_load)
    missing = [k for k in weight_map if k not in ckpt.infos]
    if missing:
        ckpt.close()
        raise CheckpointError(
            f"{p.name} lists {len(missing)} tensor(s) its shards lack ({shorten(missing[0])} "
            f"in {shorten(weight_map[missing[0]])})",
            "the index and the shards come from different saves; re-download them",
        )
    return ckpt


def _open_shards(p: Path, files: list[Path], unsafe_load: bool) -> Checkpoint:
    """One checkpoint over several files; each shard stays open, read tensor by tensor."""
    parts: list[Checkpoint] = []
    try:
        for f in files:
            _require_regular(f, f"shard {f}")
            parts.append(_open_file(f, unsafe_load))
    except BaseException:
        for part in parts:
            part.close()
        raise
    infos: dict[str, TensorInfo] = {}
    owner: dict[str, Checkpoint] = {}
    aliases: dict[str, str] = {}
    for part in parts:
        for name, info in part.infos.items():
            if name in owner:
                for q in parts:
                    q.close()
                raise CheckpointError(
                    f"tensor {name!r} is in both {owner[name].path.name} and {part.path.name}",
                    "the folder mixes two checkpoints; keep one set of shards",
                )
            infos[name] = info
            owner[name] = part
        aliases.update(part.aliases)

    def close() -> None:
        for part in parts:
            part.close()

    infos = dict(sorted(infos.items(), key=lambda kv: _natural_key(kv[0])))
    return Checkpoint(
        p,
        infos,
        lambda name: owner[name].load(name),
        aliases=aliases,
        closer=close,
        provenance=parts[0].provenance if parts else None,
        extra=tuple(e for part in parts for e in part.extra),
        rows=lambda name, start, stop: owner[name].read_rows(name, start, stop),
        stored=lambda name: owner[name].stored(name),
        # p is the index (read too) or the folder of shards (not a file)
        files=(*([p] if p.is_file() else []), *(f for part in parts for f in part.files)),
    )


def _open_dcp(p: Path, unsafe_load: bool) -> Checkpoint:
    """A ``torch.distributed.checkpoint`` folder, read with its own reader and no process
    group (``no_dist=True``), one tensor per ``load`` call so only its chunks are read. Its
    ``.metadata`` pickle is read by initscope.io.dcp, which runs no code from it."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    from initscope.io.dcp import check_archives, read_metadata, safe_reader, storage_by_tensor

    metadata = read_metadata(p, unsafe_load=unsafe_load)
    infos: dict[str, TensorInfo] = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            infos[fqn] = TensorInfo(fqn, tuple(int(x) for x in md.size), md.properties.dtype)
    # Training loops save {"model": ..., "optim": ...}: the model's tensors are the report.
    extra: tuple[str, ...] = ()
    saved = {fqn: fqn for fqn in infos}
    everything = list(metadata.state_dict_metadata)
    if any(k.startswith("model.") for k in infos) and not all(
        k.startswith("model.") for k in everything
    ):
        extra = tuple(sorted({k.split(".")[0] for k in everything if not k.startswith("model.")}))
        saved = {k.removeprefix("model."): k for k in infos if k.startswith("model.")}
        infos = {n: TensorInfo(n, infos[k].shape, infos[k].dtype) for n, k in saved.items()}
    if not infos:
        raise CheckpointError(f"{p} holds no tensors", "point at a model checkpoint")

    chunks = storage_by_tensor(metadata)
    checked: set[str] = set()

    def load(name: str) -> torch.Tensor:
        info, fqn = infos[name], saved[name]
        if fqn not in checked:
            check_archives(p, chunks.get(fqn, ()))
            checked.add(fqn)
        # One chunk that fits the tensor and holds as many elements fills it; several (in a
        # crafted file) may overlap and leave a gap, which then reads as zeros, not as
        # uninitialized memory.
        fill = torch.empty if len(metadata.state_dict_metadata[fqn].chunks) == 1 else torch.zeros
        tensor = fill(info.shape, dtype=info.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dcp_load({fqn: tensor}, storage_reader=safe_reader(p, metadata), no_dist=True)
            except (KeyboardInterrupt, SystemExit, GeneratorExit):
                raise
            except BaseException as exc:
                # torch's CheckpointException (a failed read) derives from BaseException and
                # prints each rank's traceback: the first rank's own error says what failed.
                failures = getattr(exc, "failures", None)
                cause = next(iter(failures.values()))[0] if failures else exc
                if isinstance(cause, Exception):
                    raise cause from None
                raise RuntimeError(type(cause).__name__) from None
        return tensor

    infos = dict(sorted(infos.items(), key=lambda kv: _natural_key(kv[0])))
    storage = sorted({info.relative_path for info in metadata.storage_data.values()})
    files = (p / ".metadata", *(p / rel for rel in storage))
    return Checkpoint(p, infos, load, extra=extra, files=files)


# -- safetensors ---------------------------------------------------------------------------


def _read_into(fd: int, size: int, offset: int) -> torch.Tensor:
    """``size`` bytes of the file at ``offset``, read straight into a fresh uint8 tensor: one
    copy from the page cache (``bytearray(os.pread(...))`` would make two).

    Not a memory map of the range, though that is faster: a mapped file truncated or
    rewritten in place while it is read (a trainer saving over the checkpoint) kills the
    process with SIGBUS and no message, and each mapping holds a file descriptor while its
    tensor lives (a kept state dict of thousands of tensors ran out of them). Most of the
    cost of a read is the page faults of fresh memory, which the CLI cuts by letting torch's
    allocator ask for transparent huge pages (THP_MEM_ALLOC_ENABLE, see cli.main; figures in
    docs/performance.md)."""
    data = torch.empty(size, dtype=torch.uint8)
    view = (ctypes.c_char * size).from_address(data.data_ptr())
    done = 0
    while done < size:  # preadv may return short counts (signals, huge reads)
        got = os.preadv(fd, [memoryview(view)[done:]], offset + done)
        if got <= 0:
            raise OSError(f"read {done} of {size} bytes: the file ends early")
        done += got
    return data


# The safetensors crate refuses headers over 100 MB (safetensors/src/tensor.rs,
# MAX_HEADER_SIZE); so does initscope, before reading one.
MAX_SAFETENSORS_HEADER = 100_000_000


def _safetensors_header(
    p: Path, fh: IO[bytes]
) -> tuple[dict[str, TensorInfo], dict[str, tuple[int, int]], dict[str, str]]:
    """The header of the safetensors file open as ``fh``, validated as the safetensors crate
    validates it (tensor.rs ``validate``), against the file's real size: (tensor infos,
    absolute byte range of each tensor, metadata). Read here rather than by ``safe_open``,
    which maps the whole file: the header is all that is needed up front."""
    size = os.fstat(fh.fileno()).st_size
    n, header = _header_json(fh, size)
    raw_meta = _header_metadata(header)
    infos: dict[str, TensorInfo] = {}
    ranges: dict[str, tuple[int, int]] = {}
    data = size - 8 - n
    for key, entry in header.items():
        info, (begin, end) = _header_entry(p, key, entry, data)
        infos[key] = info
        ranges[key] = (8 + n + begin, 8 + n + end)
    _refuse_overlaps(ranges)
    return infos, ranges, raw_meta


def _header_json(fh: IO[bytes], size: int) -> tuple[int, dict[str, Any]]:
    """The header's length and its JSON object. The length is checked against the file's
    size and :data:`MAX_SAFETENSORS_HEADER` before anything that long is read."""
    n = int.from_bytes(fh.read(8), "little")
    if n > MAX_SAFETENSORS_HEADER or n > size - 8:
        raise ValueError(f"header length {n} is past the file's {size} bytes or over 100 MB")
    try:
        header = json.loads(fh.read(n))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return n, header


def _header_metadata(header: dict[str, Any]) -> dict[str, str]:
    """The header's ``__metadata__`` (taken out of it, so that the rest are tensor entries),
    which the format allows only as a mapping of names to strings."""
    raw_meta = header.pop("__metadata__", None) or {}
    if not isinstance(raw_meta, dict) or not all(isinstance(v, str) for v in raw_meta.values()):
        raise ValueError("__metadata__ must map names to strings")
    return raw_meta


def _header_entry(p: Path, key: str, entry: Any, data: int) -> tuple[TensorInfo, tuple[int, int]]:
    """One tensor entry of the header, and its byte range within the data section (``data``
    bytes long): a dtype initscope reads, a shape of non-negative ints, and offsets that
    span exactly the tensor's bytes and lie inside the file."""
    if not isinstance(entry, dict):
        raise ValueError(f"entry {shorten(key)} is not an object")
    code, shape, span = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    dtype = _entry_dtype(p, key, code)
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"tensor {shorten(key)} has no valid shape")
    if (
        not isinstance(span, list)
        or len(span) != 2
        or not all(type(o) is int for o in span)
        or not 0 <= span[0] <= span[1]
    ):
        raise ValueError(f"tensor {shorten(key)} has no valid data_offsets")
    spans = span[1] - span[0]
    numel = bounded_numel(shape, spans // dtype.itemsize)
    if numel is None or numel * dtype.itemsize != spans:
        need = f"{numel * dtype.itemsize}" if numel is not None else f"over {spans}"
        raise ValueError(
            f"tensor {shorten(key)} is {need} bytes ({code}, shape {shorten(shape, 40)}) but "
            f"spans {spans} bytes"
        )
    if span[1] > data:
        raise CheckpointError(
            f"{p} is truncated: its header places tensor {shorten(key)} at bytes "
            f"{span[0]}..{span[1]} of the data, the file holds {max(data, 0)}",
            "re-save or re-download it",
        )
    return TensorInfo(key, tuple(shape), dtype), (span[0], span[1])


def _entry_dtype(p: Path, key: str, code: Any) -> torch.dtype:
    """The torch dtype of an entry's dtype code; a code initscope cannot read is its own
    error (the file may be fine), shown as written only when short and printable."""
    dtype = _SAFETENSORS_DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        plain = isinstance(code, str) and len(code) <= 20 and code.isprintable()
        shown = code if plain else shorten(code)
        raise CheckpointError(
            f"{p}: tensor {shorten(key)} has dtype {shown}, which initscope cannot read",
            f"initscope reads {', '.join(_SAFETENSORS_DTYPES)}; convert that tensor",
        )
    return dtype


def _refuse_overlaps(ranges: Mapping[str, tuple[int, int]]) -> None:
    """Refuse entries that share bytes: one stored range read as two tensors. The
    safetensors crate refuses them too (tensor.rs validate, which also requires them to tile
    the data section)."""
    previous: tuple[int, str] = (0, "")
    for key, (begin, end) in sorted(ranges.items(), key=lambda kv: kv[1]):
        if end == begin:  # an empty tensor holds no bytes to share
            continue
        if begin < previous[0]:
            raise ValueError(f"tensors {shorten(previous[1])} and {shorten(key)} overlap")
        previous = (end, key)


def bounded_numel(shape: Collection[int], limit: int) -> int | None:
    """The product of ``shape``, or None once it passes ``limit``: a shape from a file can
    have millions of dimensions, and their full product would be an integer of millions of
    digits. The caller has checked that every dimension is a non-negative int."""
    if 0 in shape:
        return 0
    numel = 1
    for d in shape:
        numel *= d
        if numel > limit:
            return None
    return numel


def _open_safetensors(p: Path) -> Checkpoint:
    """A safetensors file as a :class:`Checkpoint`: its header checked, tied names read back
    as aliases, each tensor read when asked for. The file stays open, closed by the
    Checkpoint (or here, when anything fails before it is made)."""
    fh = os.fdopen(open_regular(p), "rb")  # closed by the Checkpoint
    infos, offsets, metadata = _checked_header(p, fh)
    # Data is read per tensor (see _read_into), not through a memory map of the whole file:
    # mapped pages stay resident (and count in RSS) until the file is closed, so a 4 GB file
    # would cost 4 GB; a read costs one tensor (or one block of rows), freed after use.
    aliases = _saved_aliases(metadata, infos)
    for alias, kept in aliases.items():
        infos[alias] = TensorInfo(alias, infos[kept].shape, infos[kept].dtype)
    infos = dict(sorted(infos.items(), key=lambda kv: _natural_key(kv[0])))
    reader = _SafetensorsReader(p, fh, infos, offsets, aliases)
    try:
        record = metadata.get(METADATA_KEY)
        provenance = Provenance.from_json(record) if isinstance(record, str) else None
        aliases.update(_recorded_ties(p, fh, provenance, infos, offsets, aliases))
    except BaseException:
        fh.close()
        raise
    return Checkpoint(
        p,
        infos,
        reader.load,
        aliases=aliases,
        provenance=provenance,
        rows=reader.rows,
        closer=fh.close,
        stored=reader.stored,
    )


def _checked_header(
    p: Path, fh: IO[bytes]
) -> tuple[dict[str, TensorInfo], dict[str, tuple[int, int]], dict[str, str]]:
    """:func:`_safetensors_header`, with any failure but a :class:`CheckpointError` (which
    says what is wrong already) reported as an unreadable file, and a file of no tensors
    refused; ``fh`` is closed on every refusal."""
    try:
        infos, offsets, metadata = _safetensors_header(p, fh)
    except CheckpointError:
        fh.close()
        raise
    except Exception as exc:
        fh.close()
        raise CheckpointError(
            f"cannot read {p} as safetensors: {_reason(exc)}",
            "the file is truncated or corrupt, or not a safetensors file; "
            "re-save or re-download it",
        ) from exc
    if not infos:
        fh.close()
        raise CheckpointError(f"{p} holds no tensors", "point at a model checkpoint")
    return infos, offsets, metadata


def _saved_aliases(metadata: Mapping[str, str], infos: Mapping[str, TensorInfo]) -> dict[str, str]:
    """The tied names safetensors.torch.save_model dropped: it stores a tied tensor once
    and records each dropped name in the metadata as {dropped: kept}; they are read back as
    aliases of the kept one."""
    return {
        k: v
        for k, v in metadata.items()
        if isinstance(v, str) and k not in infos and v in infos and k != METADATA_KEY
    }


@dataclass(frozen=True)
class _SafetensorsReader:
    """Reads a safetensors file's tensors, whole or by rows, from its byte ranges, an
    alias's from the range of the name it is tied to. ``aliases`` is the Checkpoint's own
    mapping, which gains the recorded ties after this reader is made."""

    p: Path
    fh: IO[bytes]
    infos: Mapping[str, TensorInfo]
    offsets: Mapping[str, tuple[int, int]]
    aliases: Mapping[str, str]

    def read(self, name: str, first_row: int, last_row: int | None) -> torch.Tensor:
        """Rows [first_row, last_row) of ``name``, or the whole tensor for last_row None."""
        info = self.infos[name]
        begin, end = self.offsets[self.aliases.get(name, name)]
        shape = list(info.shape)
        if last_row is not None and shape:
            row_bytes = (end - begin) // max(shape[0], 1)
            last_row = min(last_row, shape[0])
            begin, end = begin + first_row * row_bytes, begin + last_row * row_bytes
            shape[0] = max(last_row - first_row, 0)
        if end <= begin:
            return torch.empty(shape, dtype=info.dtype)
        data = _read_into(self.fh.fileno(), end - begin, begin)
        return data.view(info.dtype).reshape(shape)

    def load(self, name: str) -> torch.Tensor:
        """The whole tensor ``name`` (the Checkpoint's loader)."""
        return self.read(name, 0, None)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of ``name``, reading only their bytes."""
        return self.read(name, start, stop)

    def stored(self, name: str) -> StoredTensor:
        """Where ``name``'s values lie in the open file, for the fused kernel."""
        offset = self.offsets[self.aliases.get(name, name)][0]
        return StoredTensor(self.infos[name], self.p, self.fh.fileno(), offset)


def _recorded_ties(
    p: Path,
    fh: IO[bytes],
    provenance: Provenance | None,
    infos: Mapping[str, TensorInfo],
    offsets: Mapping[str, tuple[int, int]],
    aliases: Mapping[str, str],
) -> dict[str, str]:
    """The ties a file initscope wrote lists in its record (it stores tied tensors under
    each name). The record is data from the file: a tie is taken only where the two tensors
    hold the same bytes, else an all-NaN tensor "tied" to a healthy one would pass as its
    healthy partner."""
    ties = provenance.extra.get("ties") if provenance is not None else None
    found: dict[str, str] = {}
    if not isinstance(ties, dict):
        return found
    for alias, kept in ties.items():
        if (
            isinstance(alias, str)
            and isinstance(kept, str)
            and alias in offsets
            and kept in offsets
            and alias != kept
            and alias not in aliases
            and infos[alias].shape == infos[kept].shape
            and infos[alias].dtype == infos[kept].dtype
            and _same_bytes(p, fh.fileno(), offsets[alias], offsets[kept])
        ):
            found[alias] = kept
    return found


def _same_bytes(
    p: Path, fd: int, a: tuple[int, int], b: tuple[int, int], block: int = 2**20
) -> bool:
    """Whether byte ranges ``a`` and ``b`` of the file ``p`` (open as ``fd``) hold the same
    bytes, read in blocks of ``block`` bytes: a tied pair of large tensors costs two blocks
    of memory, not two tensors."""
    if a[1] - a[0] != b[1] - b[0]:
        return False
    try:
        for start in range(0, a[1] - a[0], block):
            n = min(block, a[1] - a[0] - start)
            if os.pread(fd, n, a[0] + start) != os.pread(fd, n, b[0] + start):
                return False
    except OSError as exc:
        raise CheckpointError(
            f"cannot read {p}: {_reason(exc)}", "the file is damaged; re-save or re-download it"
        ) from None
    return True


# Within one module, the order torch.nn layers create their parameters in.
_PARAM_ORDER = {"weight": 0, "bias": 1}


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """safetensors keeps no insertion order (it sorts by dtype and name), so order names
    as a model lists them: numbers numerically (layers.2 before layers.10), and within a
    module weight before bias."""
    parts = name.split(".")
    key: list[tuple[int, int | str]] = [(0, int(p)) if p.isdigit() else (1, p) for p in parts[:-1]]
    key.append((0, _PARAM_ORDER[parts[-1]]) if parts[-1] in _PARAM_ORDER else (1, parts[-1]))
    return tuple(key)


# -- torch.save pickles ---------------------------------------------------------------------


def _torch_load(p: Path, unsafe_load: bool) -> tuple[Any, _StorageReader]:
    """The file's object, and what reads its tensors' values. Safely (the default), a zip's
    pickle is scanned and unpickled by initscope.io.torchfile onto the meta device, each
    storage at its record in the file, its values read later one tensor at a time from the
    descriptor opened here (so from the file that was checked). Nothing is mapped, so a file
    truncated while it is read is an error, not a SIGBUS, and nothing is allocated for what
    the pickle merely declares. The legacy (pre-1.6) format keeps no offsets: it is read
    whole, its pickles scanned the same way."""
    # torch.load warns about odd pickle protocols and the like on its way to failing on a
    # damaged file; the error we raise says it better, in one line.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if unsafe_load:
            try:
                obj = torch.load(p, map_location="cpu", weights_only=False, mmap=True)
            except RuntimeError as exc:
                if "mmap can only be used" not in str(exc):
                    raise
                obj = torch.load(p, map_location="cpu", weights_only=False)
            return obj, _StorageReader(p, None, None)
        fd = open_regular(p)
        try:
            if os.pread(fd, len(ZIP_MAGIC), 0) == ZIP_MAGIC:
                archive = TorchZip(fd)
                return archive.load(), _StorageReader(p, fd, archive.size, archive.byteswap())
            size = os.fstat(fd).st_size
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(size)
            os.close(fd)
            fd = -1
            return load_legacy(data), _StorageReader(p, None, size)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise


def _open_pickle(p: Path, unsafe_load: bool, key: str | None = None) -> Checkpoint:
    try:
        obj, reader = _torch_load(p, unsafe_load)
    except NeedsGlobal as exc:
        raise UnsafeLoadRequired(
            f"{p} is a pickle that needs {exc.name} to load, and loading it "
            "would run code from the file",
            "if you trust the file, rerun with --unsafe-load; better, re-save it with "
            "torch.save(model.state_dict(), path) or as .safetensors",
        ) from None
    except PickleRefused as exc:
        raise CheckpointError(
            f"{p} is refused: the pickle {exc}",
            "initscope reads state dicts of dense tensors; re-save it with "
            "torch.save(model.state_dict(), path) or as .safetensors",
        ) from None
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {p}: {_reason(exc)}",
            "the file is truncated or corrupt, or not a PyTorch checkpoint; re-save it",
        ) from exc
    try:
        return _pickle_checkpoint(p, obj, reader, key)
    except BaseException:
        reader.close()
        raise


def _pickle_checkpoint(
    p: Path, obj: Any, reader: _StorageReader, key: str | None = None
) -> Checkpoint:
    module: torch.nn.Module | None = None
    state = _select(p, obj, key) if key is not None else _unwrap(obj)
    if isinstance(state, torch.nn.Module):
        module = _unwrap_module(state)
        state = module.state_dict()
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{p} holds a {type(obj).__name__}, not a state dict",
            "save the model with torch.save(model.state_dict(), path)",
        )
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        where = f"keys of {key}" if key is not None else "top-level keys"
        if not _holds_tensors(obj):
            raise CheckpointError(
                f"{p} contains no tensors ({where}: {_keys_text(state)})",
                "point initscope at the file that holds the model's state dict",
            )
        raise CheckpointError(
            f"{p} holds no state dict that initscope recognises ({where}: {_keys_text(state)})",
            "select the entry that holds the tensors with --key, e.g. --key model.weights",
        )
    for name, t in tensors.items():
        _check_fits_storage(p, name, t, reader.limit)
    infos = {k: TensorInfo(k, tuple(v.shape), v.dtype) for k, v in tensors.items()}
    record = state.get(PROVENANCE_KEY)
    extra = [str(k) for k, v in state.items() if k != PROVENANCE_KEY and k not in tensors]
    if isinstance(obj, Mapping) and obj is not state:
        extra += [str(k) for k, v in obj.items() if v is not state and k not in tensors]

    def rows(name: str, start: int, stop: int) -> torch.Tensor:
        return reader.read(tensors[name][start:stop])

    return Checkpoint(
        p,
        infos,
        lambda name: reader.read(tensors[name]),
        module=module,
        aliases=_shared_storage_aliases(tensors),
        provenance=Provenance.from_json(record) if isinstance(record, str) else None,
        extra=tuple(extra),
        rows=rows,
        closer=reader.close,
        stored=lambda name: reader.stored(infos[name], tensors[name]),
    )


def _check_fits_storage(p: Path, name: str, t: torch.Tensor, limit: int | None) -> None:
    """Refuse a tensor whose elements overlap or lie outside its storage (a stride-0 view
    can declare 2**62 elements over 4 bytes, which no statistic should walk), or whose
    storage is larger than ``limit`` (the file's size: every storage read from a file is in
    it), or that has no values in the file at all."""
    if t.is_sparse or t.layout != torch.strided or t.is_nested:
        kind = "nested" if t.is_nested else t.layout
        raise CheckpointError(
            f"{p}: tensor {name!r} is {kind}, which initscope does not read",
            "save it dense: tensor.to_dense()",
        )
    storage = t.untyped_storage()
    place = getattr(storage, "_checkpoint_offset", None)
    if t.device.type == "meta" and not isinstance(place, int):
        raise CheckpointError(
            f"{p}: tensor {name!r} has no values in the file (it was saved from the meta device)",
            "save the model's real tensors",
        )
    have = storage.nbytes()
    if limit is not None and have > limit:
        raise CheckpointError(
            f"{p}: tensor {name!r} has a storage of {have} bytes, more than the file's {limit}",
            "the file is corrupt; re-save it",
        )
    itemsize = t.element_size()
    end = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    if t.numel() and (
        t.numel() * itemsize > have or (end + 1) * itemsize > have or min(t.stride(), default=0) < 0
    ):
        raise CheckpointError(
            f"{p}: tensor {name!r} is larger than its storage ({t.numel()} elements of "
            f"{itemsize} bytes over a storage of {have} bytes)",
            "re-save it from a real tensor: torch.save({k: v.contiguous().clone() ...})",
        )


class _StorageReader:
    """Reads a tensor whose storage is on the meta device (see _torch_load) from the open
    file ``fd`` (owned: closed by :meth:`close`): only the bytes its elements span, by
    ``pread`` into fresh memory, byte-swapped when the file was saved in the other order.
    ``limit`` bounds a storage's size (the file's; None: not checked)."""

    def __init__(self, path: Path, fd: int | None, limit: int | None, swap: bool = False) -> None:
        self.path = path
        self.limit = limit
        self.swap = swap
        self._fd = fd

    def read(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            return t.resolve_conj().resolve_neg()
        storage = t.untyped_storage()
        base = getattr(storage, "_checkpoint_offset", None)
        if not isinstance(base, int) or self._fd is None:
            raise OSError("the storage's place in the file is unknown")
        itemsize = t.element_size()
        shape, stride = tuple(t.shape), tuple(t.stride())
        if t.numel() == 0:
            return torch.empty(shape, dtype=t.dtype)
        first = t.storage_offset()
        last = first + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
        raw = _read_into(self._fd, int(last - first + 1) * itemsize, base + int(first) * itemsize)
        if self.swap:
            raw.untyped_storage().byteswap(t.dtype)  # type: ignore[no-untyped-call]
        out = raw.view(t.dtype).as_strided(shape, stride)
        if t.is_conj():
            out = out.conj()
        if t.is_neg():
            out = out.neg()
        return out.resolve_conj().resolve_neg()

    def stored(self, info: TensorInfo, t: torch.Tensor) -> StoredTensor | None:
        """Where ``t``'s values lie plainly in the file (for the fused kernel's own reads):
        only for a contiguous, unconjugated, unnegated tensor in this machine's byte order."""
        base = getattr(t.untyped_storage(), "_checkpoint_offset", None)
        if t.device.type != "meta" or not isinstance(base, int) or t.is_conj() or t.is_neg():
            return None
        if not t.is_contiguous() or t.numel() == 0 or self.swap or self._fd is None:
            return None
        return StoredTensor(
            info, self.path, self._fd, base + int(t.storage_offset()) * t.element_size()
        )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _unwrap_module(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside a pickled DataParallel/DDP (``.module``) or torch.compile wrapper
    (``._orig_mod``), so names and module types agree."""
    for _ in range(_MAX_NESTING):
        inner = getattr(module, "_orig_mod", None) or (
            module.module
            if type(module).__name__ in ("DataParallel", "DistributedDataParallel")
            else None
        )
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner
    return module


def _unwrap(obj: Any) -> Any:
    """The state dict inside what a training script saved: under a known container key
    (``state_dict``, ``model``, ``model_state``, ``state``, ``weights``, ``params``, ...,
    outermost first), or the one dict (or module) among the values when there is only one."""
    for _ in range(_MAX_NESTING):
        if not isinstance(obj, Mapping) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in _CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping | torch.nn.Module):
                obj = inner
                break
        else:
            nested = [v for v in obj.values() if isinstance(v, Mapping | torch.nn.Module)]
            if len(nested) != 1:
                return obj
            obj = nested[0]
    return obj


def _select(p: Path, obj: Any, key: str) -> Any:
    """The entry ``key`` (``a.b``: ``obj["a"]["b"]``) of what the file holds, or an error
    that lists the keys where the path leaves the file's structure."""
    for depth, part in enumerate(key.split(".")):
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping) or part not in obj:
            where = ".".join(key.split(".")[:depth]) or "the top level"
            keys = _keys_text(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(
                f"--key {key}: {p} has no {part} at {where} (keys there: {keys})",
                "give the dotted path of the entry that holds the tensors",
            )
        obj = obj[part]
    return obj


def _holds_tensors(obj: Any, depth: int = _MAX_NESTING) -> bool:
    """Whether a tensor is anywhere in ``obj`` within ``depth`` levels of dicts."""
    if isinstance(obj, torch.Tensor | torch.nn.Module):
        return True
    if depth and isinstance(obj, Mapping):
        return any(_holds_tensors(v, depth - 1) for v in obj.values())
    return False


def _keys_text(mapping: Mapping[Any, Any], most: int = 8) -> str:
    """The first keys of a mapping from a file, shortened, for an error line."""
    keys = [
        k if len(k) <= 40 and k.isprintable() else shorten(k, 40)
        for k in map(str, list(mapping)[: most + 1])
    ]
    more = ", ..." if len(keys) > most else ""
    return (", ".join(keys[:most]) or "none") + more


def _strip_prefixes(keys: list[str]) -> list[str] | None:
    """The keys without leading wrapper prefixes; None when nothing changes, or when
    stripping would merge two keys into one."""
    out: list[str] = []
    for key in keys:
        k = key
        while k.startswith(_PREFIXES):
            k = k.removeprefix("module.").removeprefix("_orig_mod.")
        out.append(k)
    if out == keys or len(set(out)) != len(out):
        return None
    return out


def _shared_storage_aliases(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    first: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors.items():
        try:
            storage = t.untyped_storage()
            # A storage read from a file is known by its place there (each load makes new
            # meta storages); one in memory by its address.
            place = getattr(storage, "_checkpoint_offset", None)
            key = (
                int(place if isinstance(place, int) else storage.data_ptr() or storage._cdata),
                int(t.storage_offset()),
                tuple(t.shape),
                tuple(t.stride()),  # w and w.t() share storage but are not one tensor
            )
        except Exception:
            continue
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases
