"""What TARGET names: an importable model with its arguments, a YAML spec, or a checkpoint.

``pkg.module:Attr`` (or ``pkg.module.Attr``) names a class or factory; ``nn.X`` and ``torch.nn:X``
are short for ``torch.nn.X``. A ``.yaml`` spec names the same plus positional/keyword
arguments, an optional checkpoint and an optional example input for Lazy modules.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from initscope.errors import CheckpointError, InitScopeError, TargetError
from initscope.io.checkpoints import CHECKPOINT_SUFFIXES, checkpoint_files
from initscope.io.hub import is_hub_id, not_cached_hint, snapshot_folder
from initscope.io.yamlio import did_you_mean, load_yaml, parse_scalar

__all__ = [
    "ModelSpec",
    "TargetOptions",
    "check_output",
    "files_read",
    "import_ref",
    "is_checkpoint_path",
    "is_hub_target",
    "is_spec_path",
    "load_args_file",
    "load_spec",
    "locate",
    "parse_args",
    "resolve_target",
    "split_ref",
]

SPEC_SUFFIXES = (".yaml", ".yml")
_ALIASES = {"nn": "torch.nn", "F": "torch.nn.functional"}
_SPEC_KEYS = ("model", "args", "kwargs", "checkpoint", "example_input")


@dataclass(frozen=True)
class ModelSpec:
    """How to construct a model: a factory reference and its arguments.

    ``example_input_shape`` is the shape of a random input run through the model once, to
    materialize Lazy modules; ``checkpoint`` are weights to report instead of the fresh ones.
    """

    ref: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    example_input_shape: tuple[int, ...] | None = None
    base_dir: Path | None = None  # a spec's folder: its `model:` module may live there


@dataclass(frozen=True)
class TargetOptions:
    """How to read TARGET: keyword arguments for the constructor, the model a checkpoint
    TARGET is loaded into, an input shape for Lazy modules, the construction seed, and
    whether pickled code may run."""

    kwargs: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    spec: Path | None = None
    input_shape: tuple[int, ...] | None = None
    unsafe_load: bool = False
    seed: int = 0
    meta: bool = False  # build on the meta device: defaults only, no memory for weights
    # Shards an index names may lie outside the index's folder (absolute paths, "..",
    # symlinks leaving it): only when the user says so, since the index is data from a file.
    allow_outside: bool = False
    # The most memory a model rebuilt from a checkpoint's provenance record may take (its
    # parameters and buffers, measured on the meta device before it is built for real).
    max_memory: int = 2 * 2**30  # stats.DEFAULT_MAX_MEMORY; targets does not import torch
    # The entry of a torch.save file that holds the state dict (a.b: obj["a"]["b"]), where
    # the usual containers are not what the file uses.
    key: str | None = None
    # The revision of a Hugging Face id TARGET (a branch, tag or commit in the local cache;
    # default main).
    revision: str | None = None


def resolve_target(target: str, how: TargetOptions) -> tuple[ModelSpec | None, Path | None]:
    """Split TARGET and its options into (how to build the model, which weights to read).
    A Hugging Face id is read from its cached snapshot folder (:func:`locate`)."""
    target = locate(target, how.revision)
    kwargs = dict(how.kwargs)
    if how.model is not None and how.spec is not None:
        raise TargetError("--model and --spec both given", "use one of them")

    def from_spec(path: str | Path, checkpoint: Path | None) -> ModelSpec:
        s = load_spec(path)
        return replace(
            s,
            kwargs={**s.kwargs, **kwargs},
            checkpoint=checkpoint or s.checkpoint,
            example_input_shape=how.input_shape or s.example_input_shape,
        )

    if is_spec_path(target):
        if how.model is not None or how.spec is not None:
            raise TargetError(
                f"{target} is a spec; --model/--spec apply to checkpoint targets",
                "drop --model/--spec, or set `checkpoint:` in the spec",
            )
        spec = from_spec(target, None)
        return spec, spec.checkpoint
    if is_checkpoint_path(target):
        ckpt = Path(target)
        if how.spec is not None:
            return from_spec(how.spec, ckpt), ckpt
        if how.model is not None:
            return ModelSpec(how.model, (), kwargs, ckpt, how.input_shape), ckpt
        if kwargs:
            raise TargetError(
                "--arg/--args-file given for a checkpoint without a model",
                "add --model pkg.module:Class so the arguments have something to construct",
            )
        return None, ckpt
    if how.model is not None or how.spec is not None:
        raise TargetError(
            f"--model/--spec given, but TARGET {target!r} is not a checkpoint file",
            "pass the checkpoint path as TARGET, or drop --model/--spec",
        )
    return ModelSpec(target, (), kwargs, None, how.input_shape), None


def is_hub_target(target: str) -> bool:
    """Whether TARGET is read as a Hugging Face id: spelled as one, not an existing path (a
    local path always wins), not a file name, and, without a ``/``, without a ``.`` either
    (``nn.Linear`` names a class; ids without an organization have no dots)."""
    return (
        is_hub_id(target)
        and not target.lower().endswith((*_FILE_SUFFIXES, *SPEC_SUFFIXES))
        and ("/" in target or "." not in target)
        and not Path(target).exists()
    )


def locate(target: str, revision: str | None = None) -> str:
    """TARGET as the path to read: a Hugging Face id's snapshot folder in the local cache
    (at ``revision``), anything else unchanged. An id the cache does not hold is the error
    TARGET would give as a path or a module reference, with a hint: nothing is downloaded."""
    if not is_hub_target(target):
        if revision is not None:
            raise TargetError(
                f"--revision given, but TARGET {target!r} is not a Hugging Face id"
                + (" (a local path wins)" if Path(target).exists() else ""),
                "drop --revision: it picks a revision of an ORG/NAME in the local cache",
            )
        return target
    snapshot = snapshot_folder(target, revision)
    if snapshot is not None:
        return str(snapshot)
    if "/" in target:  # read as a path, it would be a missing file
        raise CheckpointError(
            f"no such file: {target}", f"check the path; {not_cached_hint(target)}"
        )
    raise TargetError(  # read as a module reference, it would name no attribute
        f"{target!r} is not a model reference",
        "write pkg.module:Class (e.g. torch.nn:Linear), or give a .yaml spec or a checkpoint; "
        + not_cached_hint(target),
    )


def is_spec_path(target: str) -> bool:
    return target.lower().endswith(SPEC_SUFFIXES)


# Suffixes that mark TARGET as a file even when it does not exist, so that a typo in
# `model.onnx` says "no such file" or "unsupported", not "no module named 'model'".
_FILE_SUFFIXES = (
    *CHECKPOINT_SUFFIXES,
    ".onnx",
    ".npz",
    ".npy",
    ".h5",
    ".hdf5",
    ".pkl",
    ".pickle",
    ".gguf",
    ".json",
    ".msgpack",
    ".tflite",
    ".pb",
    ".zip",
    ".tar",
    ".gz",
)


def is_checkpoint_path(target: str) -> bool:
    # An existing directory goes the checkpoint way too, to be told it is not a file.
    return (
        target.lower().endswith(_FILE_SUFFIXES)
        or Path(target).exists()
        or "/" in target
        or "\\" in target
    )


def parse_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``["in_features=5", "bias=false"]`` → ``{"in_features": 5, "bias": False}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TargetError(
                f"--arg {pair!r} is not name=value", "write it as --arg in_features=5"
            )
        out[key.strip()] = parse_scalar(value)
    return out


def load_args_file(path: str | Path) -> dict[str, Any]:
    doc = load_yaml(path)
    if doc.data is None:
        return {}
    if not isinstance(doc.data, dict):
        raise doc.error(
            (), "expected a mapping of argument names to values", "e.g. `in_features: 5`"
        )
    return {str(k): v for k, v in doc.data.items()}


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a spec file; errors name file:line:col."""
    doc = load_yaml(path)
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), "a spec must be a mapping with at least `model: pkg.module:Class`")
    for key in data:
        if key not in _SPEC_KEYS:
            raise doc.error(
                (key,),
                f"unknown key{did_you_mean(str(key), _SPEC_KEYS)}",
                f"valid keys are {', '.join(_SPEC_KEYS)}",
            )
    ref = data.get("model")
    if not isinstance(ref, str) or not ref.strip():
        raise doc.error(
            ("model",), "`model` must name a class or factory", "e.g. `model: torch.nn:Linear`"
        )
    args = data.get("args") or []
    if not isinstance(args, list):
        raise doc.error(
            ("args",), "`args` must be a list of positional arguments", "e.g. `args: [5, 100]`"
        )
    kwargs = data.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise doc.error(
            ("kwargs",), "`kwargs` must be a mapping", "e.g. `kwargs: {in_features: 5}`"
        )
    checkpoint = data.get("checkpoint")
    ckpt_path: Path | None = None
    if checkpoint is not None:
        if not isinstance(checkpoint, str):
            raise doc.error(("checkpoint",), "`checkpoint` must be a file path")
        ckpt_path = Path(checkpoint)
        if not ckpt_path.is_absolute():
            ckpt_path = Path(path).parent / ckpt_path
    shape = None
    example = data.get("example_input")
    if example is not None:
        raw = example.get("shape") if isinstance(example, dict) else None
        if not isinstance(raw, list) or not all(isinstance(s, int) and s > 0 for s in raw):
            raise doc.error(
                ("example_input",),
                "`example_input` must be `{shape: [positive ints]}`",
                "e.g. `example_input: {shape: [1, 3, 64, 64]}`",
            )
        shape = tuple(raw)
    return ModelSpec(
        ref.strip(),
        tuple(args),
        {str(k): v for k, v in kwargs.items()},
        ckpt_path,
        shape,
        base_dir=Path(path).resolve().parent,
    )


def split_ref(ref: str) -> tuple[str, str]:
    """``pkg.module:Attr`` (or ``pkg.module.Attr``, ``nn.X``) → (module, attribute path)."""
    if ":" in ref:
        mod, _, attr = ref.partition(":")
    elif "." in ref:
        mod, _, attr = ref.rpartition(".")
    else:
        raise TargetError(
            f"{ref!r} is not a model reference",
            "write pkg.module:Class (e.g. torch.nn:Linear), or give a .yaml spec or a checkpoint",
        )
    head, dot, rest = mod.partition(".")
    if head in _ALIASES:
        mod = _ALIASES[head] + dot + rest
    return mod, attr


@contextmanager
def _search_path(extra: Path | None, *, search_cwd: bool = True) -> Iterator[None]:
    """Like ``python -m`` (and uvicorn), let TARGET name modules in the current directory,
    and a spec's ``model:`` modules beside the spec; sys.path is restored afterwards.
    Without ``search_cwd`` nothing is added for the current directory (a provenance
    record's model: see :func:`initscope.io.models.spec_from_provenance`)."""
    folders = [*([Path.cwd()] if search_cwd else []), *([extra] if extra else [])]
    added = [str(d) for d in dict.fromkeys(folders) if str(d) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for d in added:
            with suppress(ValueError):
                sys.path.remove(d)


def _import_module(name: str) -> Any:
    if name.endswith(".py"):
        raise TargetError(
            f"{name!r} is a file name; TARGET names a module",
            f"drop the .py: {name.removesuffix('.py').replace('/', '.')}:Class",
        )
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        if missing != name and not name.startswith(missing + "."):
            # The module exists but something it imports does not.
            raise TargetError(
                f"importing {name} failed: it needs module {missing!r}, which is not installed",
                f"install the package that provides {missing!r}",
            ) from exc
        parent, _, leaf = missing.rpartition(".")
        choices: list[str] = []
        if parent:
            try:
                pkg = importlib.import_module(parent)
                choices = [m.name for m in pkgutil.iter_modules(getattr(pkg, "__path__", []))]
            except Exception:
                choices = []
        else:
            choices = [m.name for m in pkgutil.iter_modules()]
        raise TargetError(
            f"no module named {missing!r}{did_you_mean(leaf or missing, choices)}",
            "check the spelling, or install the package / run from the directory that holds it",
        ) from exc
    except Exception as exc:
        raise TargetError(
            f"importing {name} failed: {type(exc).__name__}: {exc}",
            "fix the error in that module",
        ) from exc


def import_ref(ref: str, base_dir: Path | None = None, *, search_cwd: bool = True) -> Any:
    """The object ``ref`` names (``pkg.module:Attr.inner`` too); modules are looked up in the
    current directory (unless not ``search_cwd``) and ``base_dir`` too."""
    mod_name, attr = split_ref(ref)
    with _search_path(base_dir, search_cwd=search_cwd):
        obj = _import_module(mod_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise TargetError(
                f"{mod_name} has no attribute {part!r}{did_you_mean(part, public)}",
                "check the spelling and the module path",
            )
        obj = getattr(obj, part)
    return obj


def signature_of(factory: Any) -> inspect.Signature | None:
    """The signature to show for ``factory``. For classes whose ``__init__`` is only
    ``(*args, **kwargs)`` (nn.LSTM forwards to RNNBase), the first concrete one in the MRO."""
    candidates = [factory]
    if isinstance(factory, type):
        candidates = [vars(c)["__init__"] for c in factory.__mro__ if "__init__" in vars(c)]
    for c in candidates:
        try:
            sig = inspect.signature(c)
        except (TypeError, ValueError):
            continue
        params = [p for p in sig.parameters.values() if p.name != "self"]
        if any(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            return sig.replace(parameters=params, return_annotation=inspect.Signature.empty)
    return None


def construct(spec: ModelSpec, *, search_cwd: bool = True) -> Any:
    """Call the factory ``spec`` names; errors show its signature. ``search_cwd``: as for
    :func:`import_ref`, also while the factory runs (it may import modules itself)."""
    import torch

    factory = import_ref(spec.ref, spec.base_dir, search_cwd=search_cwd)
    if not callable(factory):
        raise TargetError(
            f"{spec.ref} is a {type(factory).__name__}, not a class or factory",
            "name an nn.Module subclass or a function returning one",
        )
    sig = signature_of(factory)
    shown = f"{_short_name(spec.ref)}{sig}" if sig else None
    try:
        direct = inspect.signature(factory)
        direct.bind(*spec.args, **spec.kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, TypeError):
            unknown = [k for k in spec.kwargs if sig is not None and k not in sig.parameters]
            hint = (
                f"no argument {unknown[0]!r}{did_you_mean(unknown[0], sig.parameters)}"
                if unknown and sig is not None
                else ""
            )
            raise TargetError(
                f"bad arguments for {spec.ref}: {exc}{'; ' + hint if hint else ''}",
                (f"its signature is {shown}; " if shown else "")
                + "pass arguments as --arg name=value",
            ) from None
    with _search_path(spec.base_dir, search_cwd=search_cwd):
        args = tuple(_build_nested(a, spec.base_dir) for a in spec.args)
        kwargs = {k: _build_nested(v, spec.base_dir) for k, v in spec.kwargs.items()}
        try:
            model = factory(*args, **kwargs)
        except InitScopeError:
            raise  # initscope's own builders (a model folder's) already say what and how
        except Exception as exc:
            message = " ".join(str(exc).split())
            raise TargetError(
                f"constructing {spec.ref} failed: {type(exc).__name__}: {message}",
                f"check the arguments{f'; signature {shown}' if shown else ''}",
            ) from exc
    if not isinstance(model, torch.nn.Module):
        raise TargetError(
            f"{spec.ref} returned a {type(model).__name__}, not a torch.nn.Module",
            "name an nn.Module subclass or a factory that returns one",
        )
    return model


def _is_nested_spec(value: Any) -> bool:
    return (
        isinstance(value, dict) and "model" in value and set(value) <= {"model", "args", "kwargs"}
    )


def _build_nested(value: Any, base_dir: Path | None) -> Any:
    """An argument written as a spec, ``{model: torch.nn:TransformerEncoderLayer, kwargs:
    {...}}``, is constructed first (under the same tracer, so its init is traced too):
    nn.TransformerEncoder takes a layer instance, which a YAML value cannot otherwise be."""
    if not _is_nested_spec(value):
        return value
    if not isinstance(value.get("args") or [], list) or not isinstance(
        value.get("kwargs") or {}, dict
    ):
        raise TargetError(
            f"nested spec for {value['model']!r}: `args` must be a list and `kwargs` a mapping",
            "e.g. {model: nn.TransformerEncoderLayer, kwargs: {d_model: 16, nhead: 2}}",
        )
    return construct(
        ModelSpec(
            str(value["model"]),
            tuple(value.get("args") or ()),
            dict(value.get("kwargs") or {}),
            base_dir=base_dir,
        )
    )


def _short_name(ref: str) -> str:
    return ref.replace(":", ".").rsplit(".", 1)[-1]


# -- what the command line gives ----------------------------------------------------------


def check_output(output: Path, *inputs: object, revision: str | None = None) -> None:
    """Check an output can be written (see output.check_writable) and refuse one that names
    one of the command's own input files (a Hugging Face id's: its cached snapshot's, at
    ``revision``)."""
    from initscope.io.output import check_writable, refuse_input_files, same_file

    check_writable(output)
    if not output.exists():
        return
    for item in inputs:
        if item is not None and same_file(Path(str(item)), output):
            raise InitScopeError(
                f"--output {output} is one of the inputs ({item})",
                "write the result to another file",
            )
    refuse_input_files(output, files_read(inputs, revision))


def files_read(inputs: tuple[object, ...], revision: str | None = None) -> list[Path]:
    """The files behind the inputs, which an output must not replace either: a spec's
    ``checkpoint:``, the snapshot folder of a cached Hugging Face id, and the shards, index
    and DCP storage files behind a folder or an index. A folder that cannot be opened as a
    checkpoint lists its checkpoint-like files: the command will report the problem itself."""
    paths: list[Path] = []
    for item in inputs:
        if item is None:
            continue
        paths.append(Path(str(item)))
        if is_hub_target(str(item)):
            # An id the cache lacks (or holds broken) is the command's own error to report.
            with suppress(InitScopeError, OSError):
                snapshot = snapshot_folder(str(item), revision)
                if snapshot is not None:
                    paths.append(snapshot)
        if is_spec_path(str(item)) and paths[-1].is_file():
            # A broken spec (or a rules file) is the command's own error to report.
            with suppress(InitScopeError, OSError, ValueError):
                checkpoint = load_spec(paths[-1]).checkpoint
                if checkpoint is not None:
                    paths.append(checkpoint)
    files: list[Path] = paths.copy()
    for path in paths:
        if not (path.is_dir() or path.name.lower().endswith(".index.json")):
            continue
        try:
            files += checkpoint_files(path, allow_outside=True)
        except InitScopeError:
            if path.is_dir():
                suffixes = (*CHECKPOINT_SUFFIXES, ".distcp", ".metadata", ".json")
                files += [f for f in path.iterdir() if f.name.lower().endswith(suffixes)]
    return files
