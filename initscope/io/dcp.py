"""Reading a ``torch.distributed.checkpoint`` folder's ``.metadata`` without running its code.

torch's ``FileSystemReader.read_metadata`` calls ``pickle.load`` on the file
(torch/distributed/checkpoint/filesystem.py), so a crafted ``.metadata`` runs whatever it
names. Here the file is read by an unpickler that admits only the classes genuine DCP metadata
is made of (what ``dcp.save`` writes: metadata.py's dataclasses, filesystem.py's
``_StorageInfo``, ``torch.Size``, dtypes and layouts, ``pathlib`` paths), the way torch's own
weights-only unpickler (torch/_weights_only_unpickler.py) admits only tensors' building blocks.
Each admitted callable only stores its arguments: none opens a file, imports or evaluates.

The parsed metadata is then checked against the folder: every storage file it names must be a
regular file inside the folder, every tensor's chunks must lie inside it and cover it, and
each chunk's declared size must fit in the bytes that hold it, so a small file cannot ask for
a huge allocation. Before a tensor is read, the torch.save archive of each of its chunks must
store its records uncompressed (:func:`check_archives`): torch's reader would inflate a
deflated record to whatever size its zip header claims.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from initscope.errors import CheckpointError, UnsafeLoadRequired
from initscope.io.checkpoints import bounded_numel, open_regular, read_regular
from initscope.io.yamlio import shorten

__all__ = [
    "MAX_METADATA_BYTES",
    "check_archives",
    "read_metadata",
    "safe_reader",
    "storage_by_tensor",
]

# A DCP .metadata holds a few hundred bytes per tensor chunk: 256 MiB is millions of chunks.
MAX_METADATA_BYTES = 256 * 2**20

_DCP = "torch.distributed.checkpoint"
_ALLOWED: dict[str, frozenset[str]] = {
    f"{_DCP}.metadata": frozenset(
        {
            "Metadata",
            "MetadataIndex",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "TensorProperties",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        }
    ),
    f"{_DCP}.filesystem": frozenset({"_StorageInfo"}),
    # torch.serialization._get_layout looks a layout up by name in a table of torch.layout
    # objects (torch/serialization.py); torch.Size builds a tuple of ints.
    "torch.serialization": frozenset({"_get_layout"}),
    "pathlib": frozenset({"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}),
    "collections": frozenset({"OrderedDict"}),
    "builtins": frozenset({"set", "frozenset", "tuple", "list", "dict", "slice"}),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch":
            # dtypes, layouts and memory formats are pickled as module attributes. Looked up
            # in torch's namespace, not by getattr: torch.__getattr__ imports submodules.
            value = vars(torch).get(name)
            if name == "Size" or isinstance(
                value, torch.dtype | torch.layout | torch.memory_format
            ):
                return value if name != "Size" else torch.Size
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not DCP metadata")


def _not_dcp(p: Path, why: str) -> UnsafeLoadRequired:
    return UnsafeLoadRequired(
        f"{p} is not a DCP checkpoint initscope can read safely: {why}",
        "a genuine torch.distributed.checkpoint .metadata holds only DCP's metadata "
        "classes; if you trust the folder, rerun with --unsafe-load",
    )


def read_metadata(folder: Path, *, unsafe_load: bool = False) -> Any:
    """The ``Metadata`` of the DCP checkpoint in ``folder``, read without running code (or
    with ``pickle.load`` under ``unsafe_load``), and checked against the folder's files."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = folder / ".metadata"
    data = read_regular(path, MAX_METADATA_BYTES)  # never blocks on a FIFO
    if len(data) > MAX_METADATA_BYTES:
        raise CheckpointError(
            f"{path} is larger than DCP metadata ever is ({MAX_METADATA_BYTES // 2**20} MiB)",
            "the folder is not a torch.distributed.checkpoint; point at its model files",
        )
    try:
        if unsafe_load:
            metadata = pickle.loads(data)  # the user trusts the file (--unsafe-load)
        else:
            metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise _not_dcp(path, str(exc)) from None
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {path} as DCP metadata: {type(exc).__name__}: {exc}"[:300],
            "the .metadata file is damaged; re-save the checkpoint",
        ) from None
    if not isinstance(metadata, Metadata):
        raise _not_dcp(path, f"it holds a {type(metadata).__name__}, not DCP Metadata")
    try:
        _validate(folder, metadata, unsafe_load)
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        # The admitted classes can be built with any fields (pickle's BUILD sets them).
        raise CheckpointError(
            f"{path} is damaged: {type(exc).__name__}: {exc}"[:300], "re-save the checkpoint"
        ) from None
    return metadata


def _validate(folder: Path, metadata: Any, unsafe_load: bool) -> None:
    """Types, storage files inside the folder, chunks that lie inside their tensor and cover
    it, and declared sizes that fit their bytes."""
    where = folder / ".metadata"
    sd = metadata.state_dict_metadata
    storage = metadata.storage_data
    if not isinstance(sd, dict) or not isinstance(storage, dict):
        raise _damaged(where, "state_dict_metadata and storage_data must be mappings")
    lengths = _stored_lengths(folder, storage, unsafe_load)
    for key, md in sd.items():
        _check_tensor(where, key, md, lengths)


def _damaged(where: Path, why: str) -> CheckpointError:
    """The error for metadata that no genuine ``dcp.save`` writes."""
    return CheckpointError(f"{where} is damaged: {why}", "re-save the checkpoint")


def _stored_lengths(
    folder: Path, storage: dict[Any, Any], unsafe_load: bool
) -> dict[tuple[str, tuple[int, ...]], int]:
    """The stored byte length of each tensor chunk, by (fqn, chunk offsets), once every
    storage entry is checked: well typed, stored plainly (unless ``unsafe_load``), in a
    storage file inside the folder whose bytes hold it.

    torch's planner finds a chunk's storage by (fqn, chunk offsets): MetadataIndex's
    ``index`` is only a hint, left out of its equality (torch/distributed/checkpoint/
    metadata.py)."""
    where = folder / ".metadata"
    sizes: dict[str, int] = {}
    lengths: dict[tuple[str, tuple[int, ...]], int] = {}
    for index, info in storage.items():
        _check_storage_entry(where, index, info, unsafe_load)
        fqn, rel = shorten(index.fqn), info.relative_path
        if rel not in sizes:
            sizes[rel] = _storage_file_size(folder, rel)
        if info.offset + info.length > sizes[rel]:
            raise CheckpointError(
                f"{folder / rel} is truncated: {where} places {fqn} at bytes "
                f"{info.offset}..{info.offset + info.length}, the file holds {sizes[rel]}",
                "re-copy the checkpoint folder",
            )
        if index.offset is not None:
            lengths[(index.fqn, tuple(index.offset))] = info.length
    return lengths


def _check_storage_entry(where: Path, index: Any, info: Any, unsafe_load: bool) -> None:
    """One ``storage_data`` entry: a MetadataIndex naming a tensor chunk (or, offset None, a
    non-tensor entry) mapped to a ``_StorageInfo`` with a file name and a non-negative
    offset and length. A transformed (compressed) stream needs ``unsafe_load``."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import MetadataIndex

    if not isinstance(index, MetadataIndex) or not isinstance(info, _StorageInfo):
        raise _damaged(where, "storage_data maps something other than chunks to storage")
    # offset None: a non-tensor entry (BytesStorageMetadata)
    if not isinstance(index.fqn, str) or not (index.offset is None or _dims(index.offset)):
        raise _damaged(where, "a storage entry names no tensor chunk")
    fqn, rel = shorten(index.fqn), info.relative_path
    if not isinstance(rel, str) or type(info.offset) is not int:
        raise _damaged(where, f"the storage entry for {fqn} has no file name or offset")
    if type(info.length) is not int or info.offset < 0 or info.length < 0:
        raise _damaged(where, f"the storage entry for {fqn} has a negative offset or length")
    if getattr(info, "transform_descriptors", None) and not unsafe_load:
        # torch's reader inflates such a stream whole, whatever size it reaches
        # (FileSystemReader.read_data reads transform_from.read(-1)).
        raise UnsafeLoadRequired(
            f"{where} stores {fqn} through {shorten(info.transform_descriptors)}: "
            "initscope does not expand compressed DCP storage, a small file could "
            "inflate without bound",
            "if you trust the folder, rerun with --unsafe-load",
        )


def _storage_file_size(folder: Path, rel: str) -> int:
    """The size of the storage file ``rel`` the metadata names, which must be a plain name
    of a regular file beside the .metadata (never a path out of the folder, never a FIFO)."""
    where = folder / ".metadata"
    if Path(rel).name != rel or rel in ("", ".", ".."):
        raise CheckpointError(
            f"{where} names storage file {shorten(rel)}, which is not a file in {folder}",
            "a DCP checkpoint's storage files lie beside its .metadata; re-save it",
        )
    shown = rel if len(rel) <= 200 and rel.isprintable() else shorten(rel)
    fd = open_regular(folder / rel, f"storage file {shown} named by {where}")
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _check_tensor(
    where: Path, key: Any, md: Any, lengths: dict[tuple[str, tuple[int, ...]], int]
) -> None:
    """One ``state_dict_metadata`` entry: a string key with bytes, or a tensor of a dtype
    and size whose chunks each fit their stored bytes and together fill it."""
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        TensorStorageMetadata,
    )

    if not isinstance(key, str):
        raise _damaged(where, "a state-dict key is not a string")
    if isinstance(md, BytesStorageMetadata):
        return
    fqn = shorten(key)
    if not isinstance(md, TensorStorageMetadata):
        raise _damaged(where, f"{fqn} has metadata of type {type(md).__name__}")
    dtype = getattr(md.properties, "dtype", None)
    if not isinstance(dtype, torch.dtype) or not _dims(md.size):
        raise _damaged(where, f"{fqn} has no valid dtype and size")
    if not isinstance(md.chunks, list):
        raise _damaged(where, f"{fqn} has no list of chunks")
    shape = md.size
    total = 0
    for i, chunk in enumerate(md.chunks):
        total += _chunk_numel(where, key, i, chunk, shape, dtype, lengths)
    # Chunks inside the tensor whose elements add up to it: the tensor read is filled
    # (a gap would show uninitialized memory as weights).
    if bounded_numel(shape, total) != total:
        raise _damaged(
            where,
            f"the chunks of {fqn} hold {total} elements, not the "
            f"{shorten(list(shape))} it declares",
        )


def _chunk_numel(
    where: Path,
    key: str,
    i: int,
    chunk: Any,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    lengths: dict[tuple[str, tuple[int, ...]], int],
) -> int:
    """The element count of chunk ``i`` of tensor ``key``, once it is checked to lie inside
    the tensor and to fit the bytes stored for it: each chunk is stored as one torch.save
    record of at least its raw bytes, so a small file cannot declare a huge chunk."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    fqn = shorten(key)
    if (
        not isinstance(chunk, ChunkStorageMetadata)
        or not _dims(chunk.sizes)
        or not _dims(chunk.offsets)
        or not len(chunk.sizes) == len(chunk.offsets) == len(shape)
    ):
        raise _damaged(where, f"chunk {i} of {fqn} has no valid size")
    if any(o + n > d for o, n, d in zip(chunk.offsets, chunk.sizes, shape, strict=True)):
        raise _damaged(where, f"chunk {i} of {fqn} lies outside its {shorten(list(shape))} tensor")
    have = lengths.get((key, tuple(chunk.offsets)))
    numel = bounded_numel(chunk.sizes, (have or 0) // dtype.itemsize)
    if have is None or numel is None:
        raise CheckpointError(
            f"{where} declares {fqn} chunk {i} as {shorten(list(chunk.sizes))} {dtype} "
            f"but stores {have or 0} bytes for it",
            "the metadata does not match the storage files; re-save the checkpoint",
        )
    return numel


def _dims(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(d, int) and d >= 0 for d in value)


def storage_by_tensor(metadata: Any) -> dict[str, list[Any]]:
    """Each tensor's storage entries (``_StorageInfo``: file, offset, length) by name."""
    found: dict[str, list[Any]] = {}
    for index, info in metadata.storage_data.items():
        found.setdefault(index.fqn, []).append(info)
    return found


class _Slice(io.RawIOBase):
    """Bytes ``[start, start + length)`` of an open file, as a seekable read-only file."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self._fd, self._start, self._length, self._pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._length - self._pos))
        data = os.pread(self._fd, n, self._start + self._pos) if n else b""
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


# Zip's end records (PKWARE APPNOTE.TXT 4.3.14-4.3.16): end of central directory, zip64
# locator, zip64 end of central directory.
_END = struct.Struct("<4s4H2LH")
_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
# A chunk's archive holds one tensor: a handful of records, a central directory of about
# 500 bytes.
MAX_CENTRAL_DIRECTORY = 2**20


def _central_directory(fd: int, start: int, length: int) -> None:
    """Check that the archive in bytes ``[start, start + length)`` of ``fd`` ends the way
    torch.save ends one: an end record with no comment, the zip64 records (if any) right
    before it, its central directory right before those, of at most
    ``MAX_CENTRAL_DIRECTORY`` bytes. Then torch's reader, which follows the zip64 locator,
    and Python's zipfile, which looks just before the end record, find the same directory,
    and a huge one is never read."""

    def at(offset: int, size: int) -> bytes:
        if offset < 0:
            raise ValueError("too short for a zip archive")
        data = os.pread(fd, size, start + offset)
        if len(data) != size:
            raise ValueError("the file ends early")
        return data

    end = length - _END.size
    sig, _, _, _, _, size, offset, comment = _END.unpack(at(end, _END.size))
    if sig != b"PK\x05\x06" or comment:
        raise ValueError("no end-of-archive record at its end")
    if end >= _LOCATOR.size + _END64.size:
        lsig, _, where, _ = _LOCATOR.unpack(at(end - _LOCATOR.size, _LOCATOR.size))
        if lsig == b"PK\x06\x07":
            if where != end - _LOCATOR.size - _END64.size:
                raise ValueError("its zip64 record is not before its end record")
            fields = _END64.unpack(at(where, _END64.size))
            if fields[0] != b"PK\x06\x06":
                raise ValueError("its zip64 locator points at no zip64 record")
            size, offset, end = fields[8], fields[9], where
    if offset + size != end:
        raise ValueError("its central directory is not before its end records")
    if size > MAX_CENTRAL_DIRECTORY:
        raise ValueError(f"its central directory is {size} bytes, not one tensor's")


def check_archives(folder: Path, entries: Iterable[Any]) -> None:
    """Refuse a chunk whose torch.save archive would expand past its own bytes: torch's zip
    reader (caffe2/serialize/inline_container.cc) inflates a deflated record, allocating the
    size its header claims, and several records may point at the same bytes. ``torch.save``
    stores records uncompressed, so a genuine chunk's records fit in it."""
    fds: dict[str, int] = {}
    try:
        for info in entries:
            if getattr(info, "transform_descriptors", None):
                continue  # compressed by a DCP extension: admitted under --unsafe-load only
            rel = info.relative_path
            if rel not in fds:
                fds[rel] = open_regular(folder / rel)
            try:
                _central_directory(fds[rel], info.offset, info.length)
                with zipfile.ZipFile(_Slice(fds[rel], info.offset, info.length)) as archive:
                    records = archive.infolist()
            except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
                raise CheckpointError(
                    f"{folder / rel} holds no torch.save record at bytes {info.offset}.."
                    f"{info.offset + info.length}: {exc}"[:300],
                    "the storage file is damaged; re-copy the checkpoint folder",
                ) from None
            stored = all(
                r.compress_type == zipfile.ZIP_STORED and r.compress_size == r.file_size
                for r in records
            )
            if not stored or sum(r.file_size for r in records) > info.length:
                raise CheckpointError(
                    f"{folder / rel} at bytes {info.offset}..{info.offset + info.length} "
                    "holds compressed or overlapping records, which torch.save never writes",
                    "the storage file is damaged or crafted; re-save the checkpoint",
                )
    finally:
        for fd in fds.values():
            os.close(fd)


def _reader_class() -> type[Any]:
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    class Reader(FileSystemReader):
        """torch's reader, handed metadata already read safely: its own read_metadata would
        ``pickle.load`` the file again."""

        def __init__(self, path: Path, metadata: Any) -> None:
            super().__init__(str(path))
            self._safe_metadata = metadata

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            if getattr(self._safe_metadata, "storage_meta", None) is None:
                self._safe_metadata.storage_meta = StorageMeta()
            self._safe_metadata.storage_meta.load_id = self.load_id
            return self._safe_metadata

    return Reader


def safe_reader(path: Path, metadata: Any) -> Any:
    """A ``FileSystemReader`` for ``path`` that uses ``metadata`` (from :func:`read_metadata`)
    instead of unpickling ``.metadata`` itself."""
    return _reader_class()(path, metadata)
