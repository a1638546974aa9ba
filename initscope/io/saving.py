"""Writing state dicts safely, with a record of what made them.

Outputs go to a temporary file in the destination's folder, are flushed to disk, and are then
renamed over the destination (``os.replace`` is atomic on POSIX): a reader, or a run killed
halfway, never leaves a partial file at the output path.

Every checkpoint ``apply`` writes carries its :class:`Provenance` — the model target and its
arguments, the rules file's text and the seed — as safetensors metadata under ``initscope``,
or as a ``__initscope__`` string entry in a ``.pt`` state dict (a plain string, so
``torch.load(weights_only=True)`` reads it). ``report`` and ``check`` use it to rebuild the
model without a ``--model`` flag.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import torch

from initscope.io.output import OutputError, atomic_path

__all__ = [
    "PROVENANCE_FORMAT",
    "PROVENANCE_KEY",
    "Provenance",
    "atomic_path",
    "output_format",
    "save_state_dict",
]

PROVENANCE_KEY = "__initscope__"  # the entry in a .pt state dict
METADATA_KEY = "initscope"  # the key in safetensors metadata
PROVENANCE_FORMAT = "initscope.provenance/1"


@dataclass(frozen=True)
class Provenance:
    """What made a checkpoint: the model (if known), the rules and the seed."""

    version: str
    model: Mapping[str, Any] | None = None  # {"ref", "args", "kwargs", "input_shape"}
    source: str | None = None  # the checkpoint the values were read from, if any
    rules_file: str | None = None
    rules: str | None = None  # the rules file's content
    seed: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"format": PROVENANCE_FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Provenance | None:
        """The record in ``text``, or None when it is not one (a foreign or damaged entry
        is ignored, not fatal: the tensors are still readable)."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("format") != PROVENANCE_FORMAT:
            return None
        model = data.get("model")
        seed = data.get("seed")
        extra = data.get("extra")
        return cls(
            version=str(data.get("version", "?")),
            model=model if isinstance(model, dict) else None,
            source=_str(data.get("source")),
            rules_file=_str(data.get("rules_file")),
            rules=_str(data.get("rules")),
            seed=seed if isinstance(seed, int) else None,
            extra=extra if isinstance(extra, dict) else {},
        )


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def output_format(path: Path) -> str:
    """``safetensors`` or ``pt`` from the file's extension."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".pt", ".pth"):
        return "pt"
    raise OutputError(
        f"cannot tell the format of {path} from {suffix or 'no extension'!r}",
        "name the output .safetensors, .pt or .pth",
    )


def save_state_dict(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    provenance: Provenance,
    *,
    replace: bool = True,
) -> Path:
    """Write ``tensors`` to ``path`` (format by extension) atomically, with ``provenance``;
    with ``replace=False`` an existing ``path`` is an error (decided atomically)."""
    target = Path(path)
    fmt = output_format(target)
    with atomic_path(target, replace=replace) as tmp:
        if fmt == "safetensors":
            write_safetensors(tmp, tensors, {METADATA_KEY: provenance.to_json()})
        else:
            state: dict[str, Any] = {k: v.detach().cpu() for k, v in tensors.items()}
            state[PROVENANCE_KEY] = provenance.to_json()
            # A file object, not the path: torch.save names the zip archive's root folder
            # after a path's stem, which for a random temporary name would make two
            # identical runs write different bytes.
            with open(tmp, "wb") as fh:
                writer = _KeepsWriteError(fh)
                try:
                    torch.save(state, cast(IO[bytes], writer))
                except RuntimeError:
                    # torch's zip writer turns a failed write (a full disk) into a
                    # RuntimeError about positions; the OSError underneath says why.
                    if writer.error is not None:
                        raise writer.error from None
                    raise
    return target


class _KeepsWriteError:
    """A binary file for torch.save that remembers the OSError of a failed write."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.fh.flush()


# The safetensors dtype codes (safetensors/src/tensor.rs, Dtype), for the torch dtypes a
# state dict holds.
_DTYPE_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
}


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` in the safetensors format, one tensor at a time.

    The format (huggingface/safetensors, docs "Format"): an 8-byte little-endian header
    length, a JSON header mapping each name to its dtype, shape and byte range (plus
    ``__metadata__``, strings only), padded with spaces to a multiple of 8, then the raw
    little-endian bytes. Written here rather than by ``safetensors.torch.save_file``, which
    needs numpy and the whole state in memory at once; tied tensors are simply written
    under each name.
    """
    import ctypes
    import json
    import sys

    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships on
        raise OutputError("cannot write safetensors on a big-endian machine", "write .pt")
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    order: list[tuple[str, torch.Tensor]] = []
    for name, t in tensors.items():
        if name == "__metadata__":
            raise OutputError(
                "a tensor named '__metadata__' cannot be written to safetensors (the name is "
                "reserved for the header's metadata)",
                "write a .pt output instead",
            )
        code = _DTYPE_CODES.get(t.dtype)
        if code is None:
            raise OutputError(
                f"cannot write {name!r} ({t.dtype}) to safetensors",
                "write a .pt output instead",
            )
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": code,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        order.append((name, t))
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for _, t in order:
            data = t.detach().to("cpu").contiguous()
            n = data.numel() * data.element_size()
            if n:
                # The tensor's own memory, written without a copy (and without numpy).
                fh.write(memoryview((ctypes.c_ubyte * n).from_address(data.data_ptr())))
