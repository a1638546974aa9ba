"""Safe reading of checkpoint files, and atomic writing of outputs.

``.pt``/``.pth``/``.bin`` files load with ``torch.load(weights_only=True, mmap=True)``: no code
from the file runs, and tensors are views on the mapped file, paged in only when read.
``.safetensors`` files are read one tensor at a time through ``safe_open``. Loading a pickled
``nn.Module`` executes code from the file, so it needs ``unsafe_load=True`` (``--unsafe-load``).
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from initscope.errors import CheckpointError, UnsafeLoadRequired

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "Checkpoint",
    "TensorInfo",
    "atomic_write",
    "open_checkpoint",
]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
CHECKPOINT_SUFFIXES = PICKLE_SUFFIXES + SAFETENSORS_SUFFIXES
# Keys under which training scripts nest the state dict (as timm's _helpers.load_state_dict
# and Lightning do), unwrapped outermost first.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
# DataParallel/DDP save under "module.", torch.compile under "_orig_mod.".
_PREFIXES = ("module.", "_orig_mod.")
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

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class Checkpoint:
    """An open checkpoint: names and metadata up front, values read one tensor at a time."""

    def __init__(
        self,
        path: Path,
        infos: Mapping[str, TensorInfo],
        loader: Callable[[str], torch.Tensor],
        *,
        module: torch.nn.Module | None = None,
        aliases: Mapping[str, str] | None = None,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.infos = dict(infos)
        self.module = module
        # name -> the first name sharing its storage (torch.save keeps tied tensors shared).
        self.aliases = dict(aliases or {})
        self._loader = loader
        self._closer = closer

    def names(self) -> list[str]:
        return list(self.infos)

    def load(self, name: str) -> torch.Tensor:
        try:
            return self._loader(name)
        except Exception as exc:
            raise CheckpointError(
                f"cannot read tensor {name!r} from {self.path}: {_reason(exc)}",
                "the file is truncated or corrupt; re-save or re-download it",
            ) from exc

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # torch's own messages run to paragraphs; the first sentence names the problem.
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0][:200]
    # A bare KeyError('99') or IndexError says nothing without its type.
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def open_checkpoint(path: str | os.PathLike[str], *, unsafe_load: bool = False) -> Checkpoint:
    """Open ``path`` for reading, or raise :class:`CheckpointError` saying what is wrong."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such file: {p}", "check the path")
    if p.is_dir():
        raise CheckpointError(
            f"{p} is a directory, not a checkpoint file",
            f"pass one of its {', '.join(CHECKPOINT_SUFFIXES)} files",
        )
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _open_safetensors(p)
    if suffix in PICKLE_SUFFIXES:
        return _open_pickle(p, unsafe_load)
    raise CheckpointError(
        f"unsupported file type {p.suffix or '(none)'!r} for {p}",
        f"initscope reads {', '.join(CHECKPOINT_SUFFIXES)} checkpoints and .yaml specs",
    )


# -- safetensors ---------------------------------------------------------------------------


def _open_safetensors(p: Path) -> Checkpoint:
    from safetensors import safe_open

    try:
        handle = safe_open(str(p), framework="pt", device="cpu")
        infos: dict[str, TensorInfo] = {}
        for key in handle.keys():  # type: ignore[no-untyped-call]  # noqa: SIM118 - not a Mapping
            sl = handle.get_slice(key)  # type: ignore[no-untyped-call]
            dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype())
            if dtype is None:
                raise CheckpointError(
                    f"{p}: tensor {key!r} has dtype {sl.get_dtype()}, which initscope cannot read",
                    f"initscope reads {', '.join(_SAFETENSORS_DTYPES)}; convert that tensor",
                )
            infos[key] = TensorInfo(key, tuple(int(s) for s in sl.get_shape()), dtype)
        _check_safetensors_size(p, infos)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {p} as safetensors: {_reason(exc)}",
            "the file is truncated or corrupt, or not a safetensors file; "
            "re-save or re-download it",
        ) from exc
    renamed, _ = _strip_prefixes(infos)
    original = {new: old for new, old in zip(renamed, infos, strict=True)}
    infos = {
        new: TensorInfo(new, i.shape, i.dtype)
        for new, i in zip(renamed, infos.values(), strict=True)
    }

    def load(name: str) -> torch.Tensor:
        tensor: torch.Tensor = handle.get_tensor(original[name])  # type: ignore[no-untyped-call]
        return tensor

    return Checkpoint(p, infos, load, closer=lambda: None)


def _check_safetensors_size(p: Path, infos: Mapping[str, TensorInfo]) -> None:
    # safe_open maps the file lazily; a truncated file would only fail (or crash) when a tensor
    # is read, so compare the bytes the header promises with the bytes on disk up front.
    with open(p, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
    need = sum(i.numel * i.dtype.itemsize for i in infos.values())
    have = p.stat().st_size - 8 - header_len
    if have < need:
        raise CheckpointError(
            f"{p} is truncated: its header describes {need} bytes of tensor data, "
            f"the file holds {max(have, 0)}",
            "re-save or re-download it",
        )


# -- torch.save pickles ---------------------------------------------------------------------

_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _torch_load(p: Path, weights_only: bool) -> Any:
    # torch.load warns about odd pickle protocols and the like on its way to failing on a
    # damaged file; the error we raise says it better, in one line.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(p, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
        # Files in the legacy (pre-1.6, non-zip) format cannot be mapped; read them whole.
        return torch.load(p, map_location="cpu", weights_only=weights_only)


def _open_pickle(p: Path, unsafe_load: bool) -> Checkpoint:
    try:
        obj = _torch_load(p, weights_only=not unsafe_load)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL_RE.search(str(exc))
        if not unsafe_load and found and "Weights only load failed" in str(exc):
            raise UnsafeLoadRequired(
                f"{p} is a pickle that needs {found.group(1)} to load, and loading it "
                "would run code from the file",
                "if you trust the file, rerun with --unsafe-load; better, re-save it with "
                "torch.save(model.state_dict(), path) or as .safetensors",
            ) from exc
        raise CheckpointError(
            f"cannot read {p}: {_reason(exc)}",
            "the file is truncated or corrupt, or not a PyTorch checkpoint; re-save it",
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {p}: {_reason(exc)}",
            "the file is truncated or corrupt, or not a PyTorch checkpoint; re-save it",
        ) from exc
    module: torch.nn.Module | None = None
    state = _unwrap(obj)
    if isinstance(state, torch.nn.Module):
        module = state
        state = module.state_dict()
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{p} holds a {type(obj).__name__}, not a state dict",
            "save the model with torch.save(model.state_dict(), path)",
        )
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(list(map(str, state))[:5])
        raise CheckpointError(
            f"{p} contains no tensors (top-level keys: {keys or 'none'})",
            "point initscope at the file that holds the model's state dict",
        )
    names, _ = _strip_prefixes(tensors)
    tensors = dict(zip(names, tensors.values(), strict=True))
    infos = {k: TensorInfo(k, tuple(v.shape), v.dtype) for k, v in tensors.items()}
    return Checkpoint(
        p, infos, tensors.__getitem__, module=module, aliases=_shared_storage_aliases(tensors)
    )


def _unwrap(obj: Any) -> Any:
    for _ in range(len(_CONTAINER_KEYS)):
        if not isinstance(obj, Mapping) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in _CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping | torch.nn.Module):
                obj = inner
                break
        else:
            return obj
    return obj


def _strip_prefixes(entries: Mapping[str, Any]) -> tuple[list[str], int]:
    out: list[str] = []
    stripped = 0
    for key in entries:
        k = key
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix) :], True
                    stripped += 1
        out.append(k)
    if len(set(out)) != len(out):  # stripping would merge keys: keep the file's names
        return list(entries), 0
    return out, stripped


def _shared_storage_aliases(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    first: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors.items():
        try:
            key = (int(t.untyped_storage()._cdata), int(t.storage_offset()), tuple(t.shape))
        except Exception:
            continue
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


# -- writing --------------------------------------------------------------------------------


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` on success, so a
    reader never sees a half-written file and an error leaves any existing file untouched."""
    target = Path(path)
    if target.is_dir():
        raise CheckpointError(
            f"cannot write {target}: it is a directory", "give a file name, e.g. out/report.json"
        )
    if not target.parent.is_dir():
        raise CheckpointError(
            f"cannot write {target}: directory {target.parent} does not exist",
            "create it first or choose another output path",
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write {target}: {exc.strerror or exc}",
            "check the directory's permissions and free space",
        ) from exc
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CheckpointError(
                f"cannot write {target}: {exc.strerror or exc}",
                "check the path, its permissions and free space",
            ) from exc
        raise
