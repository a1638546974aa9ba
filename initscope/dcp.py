"""Reading a ``torch.distributed.checkpoint`` folder's ``.metadata`` without running its code.

torch's ``FileSystemReader.read_metadata`` calls ``pickle.load`` on the file
(torch/distributed/checkpoint/filesystem.py), so a crafted ``.metadata`` runs whatever it
names. Here the file is read by an unpickler that admits only the classes genuine DCP metadata
is made of (what ``dcp.save`` writes: metadata.py's dataclasses, filesystem.py's
``_StorageInfo``, ``torch.Size``, dtypes and layouts, ``pathlib`` paths), the way torch's own
weights-only unpickler (torch/_weights_only_unpickler.py) admits only tensors' building blocks.
Each admitted callable only stores its arguments: none opens a file, imports or evaluates.

The parsed metadata is then checked against the folder: every storage file it names must be a
regular file inside the folder, and every tensor's declared size must fit in the bytes that
hold it, so a small file cannot ask for a huge allocation.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import torch

from initscope.errors import CheckpointError, UnsafeLoadRequired

__all__ = ["MAX_METADATA_BYTES", "read_metadata", "safe_reader"]

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
            # dtypes, layouts and memory formats are pickled as module attributes.
            value = getattr(torch, name, None)
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


def _regular_size(path: Path) -> int | None:
    """The size of ``path`` if it is a regular file (never opened: a FIFO would block)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def read_metadata(folder: Path, *, unsafe_load: bool = False) -> Any:
    """The ``Metadata`` of the DCP checkpoint in ``folder``, read without running code (or
    with ``pickle.load`` under ``unsafe_load``), and checked against the folder's files."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = folder / ".metadata"
    size = _regular_size(path)
    if size is None:
        raise CheckpointError(f"{path} is not a regular file", "point at a DCP checkpoint folder")
    if size > MAX_METADATA_BYTES:
        raise CheckpointError(
            f"{path} is {size} bytes, more than DCP metadata ever takes "
            f"({MAX_METADATA_BYTES // 2**20} MiB)",
            "the folder is not a torch.distributed.checkpoint; point at its model files",
        )
    with open(path, "rb") as fh:
        data = fh.read(MAX_METADATA_BYTES + 1)
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
    _validate(folder, metadata)
    return metadata


def _validate(folder: Path, metadata: Any) -> None:
    """Types, storage files inside the folder, and declared sizes that fit their bytes."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        MetadataIndex,
        TensorStorageMetadata,
    )

    where = folder / ".metadata"

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{where} is damaged: {why}", "re-save the checkpoint")

    sd = metadata.state_dict_metadata
    storage = metadata.storage_data
    if not isinstance(sd, dict) or not isinstance(storage, dict):
        raise bad("state_dict_metadata and storage_data must be mappings")
    sizes: dict[str, int] = {}
    lengths: dict[tuple[str, int], int] = {}
    for index, info in storage.items():
        if not isinstance(index, MetadataIndex) or not isinstance(info, _StorageInfo):
            raise bad("storage_data maps something other than chunks to storage")
        rel = info.relative_path
        if not isinstance(rel, str) or not isinstance(info.offset, int):
            raise bad("a storage entry has no file name or offset")
        if not isinstance(info.length, int) or info.offset < 0 or info.length < 0:
            raise bad(f"storage entry for {index.fqn!r} has a negative offset or length")
        if rel not in sizes:
            if Path(rel).name != rel or rel in ("", ".", ".."):
                raise CheckpointError(
                    f"{where} names storage file {rel!r}, which is not a file in {folder}",
                    "a DCP checkpoint's storage files lie beside its .metadata; re-save it",
                )
            found = _regular_size(folder / rel)
            if found is None:
                what = "missing" if not (folder / rel).exists() else "not a regular file"
                raise CheckpointError(
                    f"storage file {rel} named by {where} is {what}",
                    "copy the whole checkpoint folder (every .distcp file)",
                )
            sizes[rel] = found
        if info.offset + info.length > sizes[rel]:
            raise CheckpointError(
                f"{folder / rel} is truncated: {where} places {index.fqn!r} at bytes "
                f"{info.offset}..{info.offset + info.length}, the file holds {sizes[rel]}",
                "re-copy the checkpoint folder",
            )
        lengths[(str(index.fqn), int(index.index or 0))] = info.length
    for fqn, md in sd.items():
        if not isinstance(fqn, str):
            raise bad("a state-dict key is not a string")
        if isinstance(md, BytesStorageMetadata):
            continue
        if not isinstance(md, TensorStorageMetadata):
            raise bad(f"{fqn!r} has metadata of type {type(md).__name__}")
        dtype = getattr(md.properties, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not _dims(md.size):
            raise bad(f"{fqn!r} has no valid dtype and size")
        for i, chunk in enumerate(md.chunks):
            if not _dims(chunk.sizes) or not _dims(chunk.offsets):
                raise bad(f"a chunk of {fqn!r} has no valid size")
            # Each chunk is stored as one torch.save record of at least its raw bytes.
            need = math.prod(chunk.sizes) * dtype.itemsize
            have = lengths.get((fqn, i))
            if have is None or need > have:
                raise CheckpointError(
                    f"{where} declares {fqn!r} chunk {i} as {list(chunk.sizes)} {dtype} "
                    f"({need} bytes) but stores {have or 0} bytes for it",
                    "the metadata does not match the storage files; re-save the checkpoint",
                )


def _dims(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(d, int) and d >= 0 for d in value)


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
