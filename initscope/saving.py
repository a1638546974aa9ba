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
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from initscope.output import OutputError, check_writable

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
OUTPUT_SUFFIXES = (".safetensors", ".pt", ".pth")


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
        except (TypeError, ValueError):
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


def save_state_dict(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], provenance: Provenance
) -> Path:
    """Write ``tensors`` to ``path`` (format by extension) atomically, with ``provenance``."""
    target = Path(path)
    fmt = output_format(target)
    with atomic_path(target) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            # safetensors refuses tensors that share memory (tied weights); each name gets
            # its own contiguous copy, so the file loads with load_state_dict(strict=True).
            seen: set[int] = set()
            out: dict[str, torch.Tensor] = {}
            for name, t in tensors.items():
                t = t.detach().cpu()
                key = t.untyped_storage().data_ptr()
                out[name] = t.clone().contiguous() if key in seen else t.contiguous()
                seen.add(key)
            save_file(out, str(tmp), metadata={METADATA_KEY: provenance.to_json()})
        else:
            state: dict[str, Any] = {k: v.detach().cpu() for k, v in tensors.items()}
            state[PROVENANCE_KEY] = provenance.to_json()
            torch.save(state, tmp)
    return target
