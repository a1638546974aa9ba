"""Construct a model under the init tracer, and resolve each tensor's default init.

This is where "the default init as torch (or the model's own code) really performs it" comes
from: the model is built for real, inside :class:`~initscope.knowledge.tracing.InitTracer`,
and every parameter and buffer is mapped to the last call that wrote it.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode

from initscope.environment import release_collector
from initscope.errors import InitScopeError, InitScopeWarning, TargetError
from initscope.io.checkpoints import Checkpoint, open_checkpoint
from initscope.io.folders import (
    adapter_base,
    is_adapter_folder,
    is_model_folder,
    is_pretrained_model,
)
from initscope.io.keys import model_keys
from initscope.io.targets import (
    ModelSpec,
    TargetOptions,
    construct,
    import_ref,
    resolve_target,
    split_ref,
)
from initscope.io.yamlio import shorten
from initscope.knowledge.distributions import Distribution
from initscope.knowledge.tracing import DefaultInit, InitCall, InitTracer

__all__ = [
    "RECORD_BUILD_SECONDS",
    "RECORD_OPS_FLOOR",
    "RECORD_OPS_PER_TENSOR",
    "RECORD_REGISTRATIONS_FLOOR",
    "RECORD_REGISTRATIONS_PER_TENSOR",
    "TracedModel",
    "installed_paths_only",
    "open_target",
    "record_import_problem",
    "spec_from_provenance",
    "trace_model",
]


@dataclass(frozen=True)
class TracedModel:
    """A constructed model and the default init of each of its tensors, by name."""

    model: torch.nn.Module
    defaults: Mapping[str, DefaultInit]


def _has_lazy(model: torch.nn.Module) -> bool:
    return any(is_lazy(p) for p in model.parameters()) or any(is_lazy(b) for b in model.buffers())


def trace_model(
    spec: ModelSpec, *, seed: int = 0, meta: bool = False, search_cwd: bool = True
) -> TracedModel:
    """Build the model ``spec`` names with tracing on, materializing Lazy modules.

    The global RNG is seeded with ``seed`` for construction and restored afterwards. With
    ``meta``, the model is built on the meta device: no memory for weights, defaults only.
    Without ``search_cwd`` the working folder is not added to the module search path (see
    :func:`initscope.io.targets.import_ref`).
    """
    # Import errors first, and imports outside the tracer.
    import_ref(spec.ref, spec.base_dir, search_cwd=search_cwd)
    # On meta, torch.nn.init functions return before their ops: their calls are recorded.
    tracer = InitTracer(entries=meta)
    device = torch.device("meta") if meta else contextlib.nullcontext()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), device, tracer:
            torch.manual_seed(seed)
            if meta:
                with _transformers_init_on_meta() as done:
                    model = _build(spec, search_cwd=search_cwd)
                _run_init_hook(model, done)
            else:
                model = _build(spec, search_cwd=search_cwd)
            if _has_lazy(model):
                _materialize(model, spec)
        defaults: dict[str, DefaultInit] = {}
        # The untraced marker distinguishes "built, but no init call seen" from "no model".
        untraced = DefaultInit(InitCall("untraced"), Distribution.custom())
        for name, t in _named_tensors(model):
            defaults[name] = tracer.resolve(t) or untraced
        return TracedModel(model, defaults)
    finally:
        tracer.close()


@contextmanager
def open_target(
    target: str, how: TargetOptions = TargetOptions()
) -> Iterator[tuple[TracedModel | None, Checkpoint | None]]:
    """The traced model TARGET names (None for a bare checkpoint) and its checkpoint (None
    when there are no weights to read), the checkpoint closed on exit."""
    release_collector()  # the CLI's start-up is over: the work begins
    spec, ckpt_path = resolve_target(target, how)
    if ckpt_path is None:
        assert spec is not None
        yield trace_model(spec, seed=how.seed, meta=how.meta), None
        return
    # Open (and so validate) the checkpoint before a possibly slow model construction.
    with open_checkpoint(
        ckpt_path, unsafe_load=how.unsafe_load, allow_outside=how.allow_outside, key=how.key
    ) as ckpt:
        if spec is not None:
            yield _named_model(spec, ckpt, how), ckpt
        elif is_model_folder(ckpt_path):
            yield _from_folder(ckpt_path, ckpt, how), ckpt
        elif ckpt.module is None and ckpt.provenance is not None:
            yield _from_record(ckpt, how), ckpt
        else:
            if is_adapter_folder(ckpt_path):
                _warn_adapter(ckpt_path)
            yield None, ckpt


def _named_model(spec: ModelSpec, ckpt: Checkpoint, how: TargetOptions) -> TracedModel:
    """The model ``--model`` names for the checkpoint. When the checkpoint's record names
    the same ``nn.Module`` class, its recorded arguments are used (``--arg`` values override
    them): naming the class is what trusts its module, and the arguments, data from the
    file, are held to a record's limits (built on meta first, the file's names and shapes,
    within --max-memory); when they do not fit, a warning says why and ``--arg`` alone is
    used. A factory (a function) never gets arguments from a file: one named
    ``subprocess:run`` would run what the record says; a warning shows them instead."""
    call = _recorded_call(spec, ckpt, how)
    if call is None:
        return trace_model(spec, seed=how.seed, meta=how.meta)
    factory = import_ref(spec.ref, spec.base_dir)
    if not (isinstance(factory, type) and issubclass(factory, torch.nn.Module)):
        if call.args or call.kwargs:
            given = [shorten(a, 60) for a in call.args] + [
                f"{k}={shorten(v, 60)}" for k, v in call.kwargs.items()
            ]
            warnings.warn(
                InitScopeWarning(
                    f"{ckpt.path}'s record calls {_named(call.ref)} with "
                    f"{_named(', '.join(given))}; initscope passes a record's arguments only "
                    "to an nn.Module class: give the ones you trust with --arg name=value"
                ),
                stacklevel=3,
            )
        return trace_model(spec, seed=how.seed, meta=how.meta)
    recorded = replace(
        spec,
        args=call.args,
        kwargs={**call.kwargs, **spec.kwargs},
        example_input_shape=spec.example_input_shape or call.input_shape,
    )
    about = _About(
        f"{ckpt.path}'s record gives {_named(call.ref)} its arguments, but",
        "building it with --arg alone",
        trusted=True,
    )
    traced = _build_checked(recorded, ckpt, how, about)
    return traced or trace_model(spec, seed=how.seed, meta=how.meta)


def _recorded_call(spec: ModelSpec, ckpt: Checkpoint, how: TargetOptions) -> _RecordedCall | None:
    """The checkpoint's recorded call when ``--model`` names its class or factory (and no
    ``--spec`` gives the arguments), else None."""
    record = ckpt.provenance.model if ckpt.provenance is not None else None
    if how.model is None or not record:
        return None
    call = _call_of(record)
    try:
        same = call is not None and split_ref(call.ref) == split_ref(how.model)
    except TargetError:  # a record's ref that is not a reference at all
        same = False
    return call if same else None


def _from_folder(folder: Path, ckpt: Checkpoint, how: TargetOptions) -> TracedModel | None:
    """The architecture a model folder's config.json describes, built as a record's model is
    (on meta first, within the same limits; with the working folder off the module path),
    or None with a warning: the folder's tensors are still read, as a bare state dict.
    ``folder`` is the folder itself (``ckpt.path`` is its index when it has shards)."""
    spec = ModelSpec(
        "initscope.io.folders:from_config",
        (),
        {"folder": str(folder.resolve()), "trust_remote_code": how.unsafe_load},
        ckpt.path,
        how.input_shape,
    )
    with contextlib.nullcontext() if how.unsafe_load else installed_paths_only():
        return _build_checked(spec, ckpt, how, _About(f"{folder} is a model folder, but"))


def _from_record(ckpt: Checkpoint, how: TargetOptions) -> TracedModel | None:
    """The model a checkpoint's provenance record names, built with the record's arguments,
    or None (with a warning) whenever that cannot be done safely: the record is data from
    the file, so any failure means "read the file as a bare state dict", never an error.

    Without --unsafe-load everything the record leads to (the import of its module, the
    attribute lookup, the constructor, which may import more) runs with the working folder
    and the script's folder off the module search path."""
    assert ckpt.provenance is not None
    beside = _folder_of(ckpt.path)
    with contextlib.nullcontext() if how.unsafe_load else installed_paths_only(beside):
        spec = spec_from_provenance(ckpt.provenance.model, ckpt.path, how)
        return None if spec is None else _build_checked(spec, ckpt, how)


@dataclass(frozen=True)
class _About:
    """Whose description a model built from data is. ``what`` begins its warnings (default:
    "PATH records the model that made it, but"), ``then`` says what is done instead (default:
    the file is read as a bare state dict); ``trusted``: the user named the model's module
    (--model), so modules are looked up as for any named target, the working folder too."""

    what: str | None = None
    then: str | None = None
    trusted: bool = False


def _build_checked(
    spec: ModelSpec, ckpt: Checkpoint, how: TargetOptions, about: _About = _About()
) -> TracedModel | None:
    """A model that data (a record, a folder's config) describes: built on meta first within
    the limits, then for real unless --meta; None with a warning (``about`` says whose) on
    any failure, so the file is read as a bare state dict."""
    on_meta = _build_on_meta(spec, ckpt, how, about)
    if on_meta is None or how.meta:
        return on_meta
    try:
        return trace_model(spec, seed=how.seed, search_cwd=how.unsafe_load or about.trusted)
    except Exception as exc:
        _warn_bare(ckpt.path, f"building it failed ({_failure(exc)})", about)
        return None


def _failure(exc: Exception) -> str:
    """What went wrong building a model from data, for a warning: initscope's own errors
    whole (their fix included), anything else cut at 300 characters."""
    if isinstance(exc, InitScopeError):
        return exc.one_line()
    return f"{type(exc).__name__}: {exc}"[:300]


def _warn_adapter(path: Path) -> None:
    """A PEFT adapter folder holds the adapter's tensors only; the model they adapt is not
    built (initscope downloads nothing, and the Hub id in adapter_config.json is data)."""
    base = adapter_base(path)
    base = base[:200] if base else "a base model it does not name"
    warnings.warn(
        InitScopeWarning(
            f"{path} is a PEFT adapter for {base}, and initscope downloads no base model: its "
            "adapter tensors are read as a bare state dict; for defaults, give the factory that "
            "returns the PEFT model as the TARGET (pkg.module:factory)"
        ),
        stacklevel=3,
    )


def _warn_bare(path: Path, why: str, about: _About = _About()) -> None:
    what = about.what or f"{path} records the model that made it, but"
    then = about.then or "reading it as a bare state dict (pass --model or --spec to use a model)"
    warnings.warn(InitScopeWarning(f"{what} {why}; {then}"), stacklevel=3)


def _build_on_meta(
    spec: ModelSpec, ckpt: Checkpoint, how: TargetOptions, about: _About = _About()
) -> TracedModel | None:
    """The recorded model built on the meta device (no memory for weights, so a record
    asking for a huge model costs nothing), or None with a warning unless the build stays
    within :class:`_RecordLimits`, the model has the checkpoint's names and shapes, and, when
    it is to be built for real (no --meta), its parameters and buffers, plus the input and
    activations of the forward pass that sizes its Lazy modules, fit in --max-memory."""
    limits = _RecordLimits(len(ckpt.infos), how.max_memory)
    try:
        with limits.active():
            traced = trace_model(
                spec, seed=how.seed, meta=True, search_cwd=how.unsafe_load or about.trusted
            )
    except _OverLimit as exc:
        _warn_bare(ckpt.path, f"building it on the meta device {exc}", about)
        return None
    except Exception as exc:  # a stale or foreign record: any failure means "do not use it"
        _warn_bare(ckpt.path, f"it cannot be built here ({_failure(exc)})", about)
        return None
    state = traced.model.state_dict()
    keys = model_keys(traced.model, ckpt)
    have = {n: ckpt.infos[k].shape for n, k in keys.items()}
    if any(have.get(n) != tuple(t.shape) for n, t in state.items() if n in have) or not (
        set(have) <= set(state)
    ):
        _warn_bare(ckpt.path, "its names or shapes do not match the file's", about)
        return None
    tensors = [*traced.model.parameters(), *traced.model.buffers()]
    need = sum(t.numel() * t.element_size() for t in tensors) + limits.forward_bytes
    if limits.ran_forward and spec.example_input_shape is not None:
        # _materialize's torch.randn input, made before the forward pass.
        need += math.prod(spec.example_input_shape) * torch.get_default_dtype().itemsize
    if not how.meta and need > how.max_memory:
        lazy = " with the forward pass that sizes its Lazy modules" if limits.ran_forward else ""
        _warn_bare(
            ckpt.path,
            f"it takes {need / 2**30:.2f} GiB{lazy}, over --max-memory "
            f"({how.max_memory / 2**30:.2f} GiB; raise it, or add --meta for defaults without "
            "weights)",
            about,
        )
        return None
    return traced


# Bounds on building a record's model on the meta device, before anything is allocated for
# real. A record's plain-data arguments can ask for unbounded work that costs no tensor
# memory on meta: nn.LSTM(num_layers=10**6) registers four million parameters (and its
# __setattr__ makes that quadratic), nn.Transformer(num_encoder_layers=10**6) deep-copies a
# layer a million times. A model that matches its file registers about as many parameters
# and buffers as the file has tensors (plus submodules), and runs a few dozen tensor
# operations per tensor (nn.Transformer: 40); the floors leave room for small files.
RECORD_REGISTRATIONS_PER_TENSOR = 4
RECORD_REGISTRATIONS_FLOOR = 4096
RECORD_OPS_PER_TENSOR = 1000
RECORD_OPS_FLOOR = 100_000
RECORD_BUILD_SECONDS = 60.0


class _OverLimit(BaseException):
    """A record's model went past one of :class:`_RecordLimits` while built on meta. A
    BaseException, so that the model's own ``except Exception`` does not swallow it (and the
    limits stay tripped: the next operation raises again)."""


class _RecordLimits(TorchFunctionMode):
    """Counts, while a record's model is built on the meta device, the tensor operations,
    the parameter/buffer/submodule registrations, the time, this process's resident memory
    growth, and the bytes of new tensors made inside forward passes (what a Lazy module's
    sizing forward will allocate for real); past a limit it raises :class:`_OverLimit`."""

    def __init__(self, tensors: int, memory: int) -> None:
        super().__init__()
        self.max_ops = RECORD_OPS_FLOOR + RECORD_OPS_PER_TENSOR * tensors
        self.max_registrations = (
            RECORD_REGISTRATIONS_FLOOR + RECORD_REGISTRATIONS_PER_TENSOR * tensors
        )
        self.tensors = tensors
        self.memory = memory
        self.ops = 0
        self.registrations = 0
        self.depth = 0
        self.ran_forward = False
        self.forward_bytes = 0
        self.tripped: str | None = None
        self._forward_storages: set[int] = set()
        self._deadline = 0.0
        self._rss_start = 0

    @contextmanager
    def active(self) -> Iterator[None]:
        """Count (and bound) what runs inside the ``with`` block."""
        from torch.nn.modules import module

        self._deadline = time.monotonic() + RECORD_BUILD_SECONDS
        self._rss_start = _resident_bytes()
        handles = [
            module.register_module_parameter_registration_hook(self._registered),
            module.register_module_buffer_registration_hook(self._registered),
            module.register_module_module_registration_hook(self._registered),
            module.register_module_forward_pre_hook(self._forward_starts),
            module.register_module_forward_hook(self._forward_ends, always_call=True),
        ]
        try:
            with self:
                yield
        finally:
            for handle in handles:
                handle.remove()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        self.ops += 1
        self._check(clock=self.ops % 128 == 0)
        result = func(*args, **(kwargs or {}))
        if self.depth:
            self._count_forward(args, result)
        return result

    def _check(self, *, clock: bool) -> None:
        """Raise past a limit; the time and memory are read only when ``clock``."""
        if self.tripped is None:
            if self.ops > self.max_ops:
                self.tripped = (
                    f"runs more than {self.max_ops:,} tensor operations, more than a file of "
                    f"{_tensors(self.tensors)} calls for"
                )
            elif self.registrations > self.max_registrations:
                self.tripped = (
                    f"registers more than {self.max_registrations:,} parameters, buffers and "
                    f"submodules, more than a file of {_tensors(self.tensors)} calls for"
                )
            elif clock and time.monotonic() > self._deadline:
                self.tripped = f"takes more than {RECORD_BUILD_SECONDS:.0f} s"
            elif clock and _resident_bytes() - self._rss_start > self.memory:
                self.tripped = (
                    f"takes more than {self.memory / 2**30:.2f} GiB of memory (--max-memory)"
                )
        if self.tripped is not None:
            raise _OverLimit(self.tripped)

    def _registered(self, *_: object) -> None:
        self.registrations += 1
        self._check(clock=self.registrations % 16 == 0)

    def _forward_starts(self, *_: object) -> None:
        self.depth += 1
        self.ran_forward = True

    def _forward_ends(self, *_: object) -> None:
        self.depth -= 1

    def _count_forward(self, args: tuple[Any, ...], result: Any) -> None:
        """Add the bytes of each new storage among ``result``'s tensors: not a view of an
        argument, nor an argument written in place."""
        outs = result if isinstance(result, tuple | list) else (result,)
        inputs = {_storage_key(a) for a in args if isinstance(a, torch.Tensor)}
        for out in outs:
            key = _storage_key(out) if isinstance(out, torch.Tensor) else None
            if key is not None and key not in inputs and key not in self._forward_storages:
                self._forward_storages.add(key)
                self.forward_bytes += out.untyped_storage().nbytes()


def _storage_key(tensor: torch.Tensor) -> int | None:
    """The identity of ``tensor``'s storage, shared by its views; None for a Lazy module's
    uninitialized parameter, which has none yet."""
    return None if is_lazy(tensor) else int(tensor.untyped_storage()._cdata)


def _tensors(n: int) -> str:
    return f"{n:,} tensor{'' if n == 1 else 's'}"


def _resident_bytes() -> int:
    """This process's resident memory (Linux), else its peak so far, else 0."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return 0
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def record_import_problem(module: str, *beside: str | os.PathLike[str]) -> str | None:
    """Why importing ``module`` for a provenance record could run code nobody chose, or None
    when it may be imported.

    Importing runs a module's code, and the record is data from a file. So a record may only
    name a module that is already imported, or a regular (non-namespace) module of an
    installed distribution, found with the working folder and the script's folder off the
    search path (:func:`installed_paths_only`), each submodule inside its top-level
    package's own folder: never a ``__main__`` module (``unittest.__main__`` runs tests on
    import), a standard-library module not yet imported (``antigravity`` opens a browser), or
    a file beside the checkpoint — a namespace package such as ``mpl_toolkits`` would take
    ``./mpl_toolkits/x.py`` from the working folder, and a package that extends its
    ``__path__`` (``pkgutil.extend_path``) ``./pkg/x.py``. The folders ``beside`` (the
    checkpoint's) are off the search path too.
    """
    refusal = _import_refusal(module, *beside)
    return None if refusal is None else refusal.message


@dataclass(frozen=True)
class _Refusal:
    """Why a record's module is not imported; ``installed``: whether its top-level package
    is installed (when not, the module is usually the user's own, beside their files)."""

    message: str
    installed: bool = True


def _import_refusal(module: str, *beside: str | os.PathLike[str]) -> _Refusal | None:
    """:func:`record_import_problem`, with whether the top-level package is installed."""
    import importlib.util
    from importlib.metadata import packages_distributions

    parts = module.split(".")
    if not all(p.isidentifier() for p in parts):
        return _Refusal(f"{module!r} is not a module name", installed=False)
    if "__main__" in parts:
        return _Refusal(f"{module} is a __main__ module (importing it runs a program)")
    if module in sys.modules and getattr(sys.modules[module], "__file__", None):
        return None
    namespace = "is a namespace package (its modules may come from any folder)"
    with installed_paths_only(*beside):
        # The distributions found on the search path without those folders: a *.dist-info
        # beside a downloaded file does not make its module installed.
        if parts[0] not in packages_distributions():
            return _Refusal(f"{parts[0]} is not an installed package", installed=False)
        package_folder = ""
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            loaded = sys.modules.get(name)
            if loaded is not None:
                origin = getattr(loaded, "__file__", None)
            else:
                try:
                    spec = importlib.util.find_spec(name)  # imports the (checked) parents
                except Exception as exc:  # a parent's own code may raise anything
                    return _Refusal(f"{name} cannot be found ({type(exc).__name__}: {exc})"[:300])
                if spec is None:
                    return _Refusal(f"{name} cannot be found")
                origin = spec.origin
            if not isinstance(origin, str) or not os.path.isfile(origin):
                return _Refusal(f"{name} {namespace}")
            origin = os.path.realpath(origin)
            if i == 1:
                package_folder = os.path.dirname(origin)
            elif os.path.commonpath([package_folder, origin]) != package_folder:
                return _Refusal(f"{name} lies outside its package's folder ({origin})")
    return None


@contextmanager
def installed_paths_only(*beside: str | os.PathLike[str]) -> Iterator[None]:
    """sys.path without the working folder (``''`` under ``python -m``), the running
    script's folder and the folders ``beside`` (a checkpoint's), for imports that data from
    a file leads to.

    The working folder stays only when a ``.pth`` file of site-packages names it: the root
    of a project installed in editable mode with a flat layout (``pip install -e .``), which
    is then on sys.path from every folder anyway. Otherwise it is never searched: a folder
    of downloaded files may hold any ``.py``. (A src layout, or setuptools' editable finder,
    never needs the working folder.)"""
    cwd = os.path.realpath(os.getcwd())
    here = {cwd, *(os.path.realpath(folder) for folder in beside)}
    if sys.argv and sys.argv[0]:
        here.add(os.path.dirname(os.path.realpath(sys.argv[0])))
    installed = _pth_folders() & here
    saved = sys.path[:]
    importlib.invalidate_caches()
    try:
        sys.path[:] = [
            p
            for p in sys.path
            if p not in ("", ".")
            and (os.path.realpath(p) not in here or os.path.realpath(p) in installed)
        ]
        yield
    finally:
        sys.path[:] = saved


def _pth_folders() -> set[str]:
    """The folders that ``.pth`` files in site-packages add to sys.path (real paths)."""
    import site

    sites = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        sites.append(site.getusersitepackages())
    found: set[str] = set()
    for folder in sites:
        with contextlib.suppress(OSError):
            for pth in Path(folder).glob("*.pth"):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    for line in pth.read_text(encoding="utf-8").splitlines():
                        line = line.strip()
                        if line and not line.startswith(("#", "import ", "import\t")):
                            found.add(os.path.realpath(os.path.join(folder, line)))
    return found


def _has_nested_spec(value: object) -> bool:
    """Whether a mapping with a ``model`` key lies anywhere in ``value`` (without recursion:
    JSON from a file may nest as deep as its parser allows)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if "model" in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def spec_from_provenance(
    record: Mapping[str, object] | None, path: Path, how: TargetOptions = TargetOptions()
) -> ModelSpec | None:
    """The model a checkpoint written by ``initscope apply`` records, or None (with a
    warning) when it cannot be rebuilt here.

    Safety: the record is data from a file. Only a reference to an ``nn.Module`` subclass
    is constructed, with plain-data arguments (no nested ``model:`` specs, which would call
    other factories); anything else is ignored and the file is read as a bare state dict.
    A module only the working folder (or the checkpoint's) holds is never imported for a
    record: the warning says to name it with ``--model``, which trusts it.
    """
    if not record:
        return None
    call = _call_of(record)
    if call is None:
        warnings.warn(
            InitScopeWarning(
                f"{path} records a model initscope will not rebuild from a file; reading it "
                "as a bare state dict (pass --model or --spec to use a model)"
            ),
            stacklevel=2,
        )
        return None
    ref = call.ref
    # Importing a module runs its code. Without --unsafe-load only installed packages are
    # imported for a record (not a .py beside the file, nor the record's base_dir).
    base_dir: Path | None = None
    if how.unsafe_load:
        base_dir = _record_base_dir(record.get("base_dir"))
    elif (refusal := _record_import_refusal(ref, _folder_of(path))) is not None:
        # The user's own module, beside their files (an installed package's modules that
        # only a local folder holds are refused for what they are: a namespace package's).
        where = None if refusal.installed else _local_module(ref, path, record.get("base_dir"))
        if where is not None:
            warnings.warn(
                InitScopeWarning(
                    f"{path}'s record names {_named(ref)}, a module {where}; initscope does "
                    f"not import it from a record; pass --model {_named(ref)} to trust it "
                    "(reading it as a bare state dict)"
                ),
                stacklevel=2,
            )
        else:
            _warn_bare(
                path,
                f"{refusal.message}: importing it would run code the record names (--unsafe-load "
                "trusts the record)",
            )
        return None
    imported = _import_record_ref(ref, base_dir, how)
    if imported.failure is not None:
        _warn_bare(path, imported.failure)
        return None
    factory = imported.factory
    if not (isinstance(factory, type) and issubclass(factory, torch.nn.Module)):
        # A function of an installed package called with arguments from a file could do
        # anything (subprocess:run); only a class that builds a model is called for a record.
        warnings.warn(
            InitScopeWarning(
                f"{path} records {_named(ref)}, which is not an nn.Module class; reading it "
                "as a bare state dict (a record builds only nn.Module classes; pass --model "
                "or --spec to use a model)"
            ),
            stacklevel=2,
        )
        return None
    return ModelSpec(
        ref,
        call.args,
        {**call.kwargs, **how.kwargs},
        path,
        how.input_shape or call.input_shape,
        base_dir,
    )


@dataclass(frozen=True)
class _RecordedCall:
    """The call a provenance record says built the model: ``ref(*args, **kwargs)``, and the
    input shape that sized its Lazy modules."""

    ref: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    input_shape: tuple[int, ...] | None


def _call_of(record: Mapping[str, object]) -> _RecordedCall | None:
    """The record's call when it is one initscope may make: a reference and plain-data
    arguments (no nested ``model:`` spec, which would call another factory); else None."""
    ref, args, kwargs = record.get("ref"), record.get("args", []), record.get("kwargs", {})
    if (
        not isinstance(ref, str)
        or not isinstance(args, list)
        or not isinstance(kwargs, dict)
        or _has_nested_spec(args)
        or _has_nested_spec(kwargs)
    ):
        return None
    return _RecordedCall(
        ref,
        tuple(args),
        {str(k): v for k, v in kwargs.items()},
        _record_input_shape(record.get("input_shape")),
    )


def _named(text: str) -> str:
    """A name from a record as written, or shortened when it is long."""
    return text if len(text) <= 200 and text.isprintable() else shorten(text, 200)


def _folder_of(path: Path) -> Path:
    """The folder a checkpoint lies in (itself for a folder of shards)."""
    return path if path.is_dir() else path.parent


def _local_module(ref: str, path: Path, base_dir: object) -> str | None:
    """Where the module of the record's ``ref`` lies when a folder that is never searched for
    a record holds it — "in the working folder", "beside out.pt", or in the record's
    ``base_dir`` (a spec's folder) — found by looking at file names only, never importing."""
    try:
        top = split_ref(ref)[0].split(".")[0]
    except TargetError:
        return None
    if not top.isidentifier():
        return None
    folders: list[tuple[object, str]] = [
        (os.getcwd(), "in the working folder"),
        (_folder_of(path), f"beside {path}"),
        (base_dir, f"in {_named(str(base_dir))}"),
    ]
    for folder, where in folders:
        if not isinstance(folder, str | os.PathLike):
            continue
        with contextlib.suppress(OSError, ValueError):
            if (Path(folder) / f"{top}.py").is_file() or (Path(folder) / top).is_dir():
                return where
    return None


def _record_base_dir(base: object) -> Path | None:
    """The record's ``base_dir`` (the folder its module was imported from), when it is a
    folder here; searched for the module only under --unsafe-load."""
    with contextlib.suppress(OSError, ValueError):
        return Path(base) if isinstance(base, str) and Path(base).is_dir() else None
    return None


def _record_import_refusal(ref: str, beside: Path) -> _Refusal | None:
    """Why the module of the record's ``ref`` may not be imported without --unsafe-load
    (see :func:`record_import_problem`; ``beside``: the checkpoint's folder), or None when it
    may."""
    try:
        return _import_refusal(split_ref(ref)[0], beside)
    except TargetError as exc:
        return _Refusal(exc.message, installed=False)


@dataclass(frozen=True)
class _Imported:
    """What importing a record's ``ref`` gave: the object it names, or ``failure``, the
    reason it cannot be imported here (one line for a warning)."""

    factory: object = None
    failure: str | None = None


def _import_record_ref(ref: str, base_dir: Path | None, how: TargetOptions) -> _Imported:
    """The object ``ref`` names. Without --unsafe-load, the import and the attribute lookup
    (a module's __getattr__ may import more) run with the working folder off the path, so
    that ./six.py cannot stand in for an installed six, nor for anything the module
    imports. Any failure, whatever the module's code raises, is a reason, not an error."""
    try:
        with contextlib.nullcontext() if how.unsafe_load else installed_paths_only():
            return _Imported(factory=import_ref(ref, base_dir, search_cwd=how.unsafe_load))
    except TargetError as exc:
        return _Imported(failure=f"{ref} cannot be imported here ({exc.message})")
    except Exception as exc:
        return _Imported(
            failure=f"{ref} cannot be imported here ({type(exc).__name__}: {exc})"[:300]
        )


def _record_input_shape(shape: object) -> tuple[int, ...] | None:
    """The record's example input shape, when it is a list of ints."""
    return (
        tuple(int(x) for x in shape)
        if isinstance(shape, list) and all(isinstance(x, int) for x in shape)
        else None
    )


def _build(spec: ModelSpec, *, search_cwd: bool = True) -> torch.nn.Module:
    try:
        model: torch.nn.Module = construct(spec, search_cwd=search_cwd)
    except TargetError as exc:
        cause = exc.__cause__
        if isinstance(cause, MemoryError) or "can't allocate memory" in str(cause):
            raise TargetError(
                f"{spec.ref} does not fit in memory: {cause}",
                "report its defaults without allocating weights: add --meta",
            ) from cause
        raise
    return model


@contextmanager
def _transformers_init_on_meta() -> Iterator[set[int]]:
    """transformers skips its weight init on the meta device (``PreTrainedModel.init_weights``,
    transformers/modeling_utils.py: "If we are initializing on meta device, there is no point
    in trying to run inits"), so a Llama built on meta would keep torch's kaiming defaults
    instead of its normal(0, 0.02). Inside this block, ``init_weights`` first runs
    ``initialize_weights`` (its own dispatch over sub-models, its ``_is_hf_initialized``
    marks) as it does on a real device: at the end of the model's ``__init__`` (post_init),
    before anything later, such as the LoRA layers peft adds and initializes after. The
    PreTrainedModel class is patched when a first transformers model registers a submodule,
    so transformers is never imported here; the block gives the ids of the models so set
    up."""
    from torch.nn.modules import module as torch_module

    done: set[int] = set()
    patched: dict[type, Any] = {}
    seen: set[type] = set()

    def patch(cls: type) -> None:
        original = cls.__dict__.get("init_weights")
        if original is None or cls in patched:
            return

        def init_weights(self: torch.nn.Module) -> Any:
            initialize = getattr(self, "initialize_weights", None)
            if callable(initialize):  # else an older transformers: _run_init_hook after
                initialize()
                done.add(id(self))
            return original(self)  # ties the weights (and skips the init on meta)

        patched[cls] = original
        cls.init_weights = init_weights  # type: ignore[attr-defined]

    def registered(parent: torch.nn.Module, *_: object) -> None:
        if type(parent) in seen:
            return
        seen.add(type(parent))
        for cls in type(parent).__mro__:
            if cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers"):
                patch(cls)

    handle = torch_module.register_module_module_registration_hook(registered)
    try:
        yield done
    finally:
        handle.remove()
        for cls, original in patched.items():
            cls.init_weights = original  # type: ignore[attr-defined]


def _run_init_hook(model: torch.nn.Module, done: set[int]) -> None:
    """A transformers model whose ``init_weights`` did not run patched (a subclass that
    overrides it without calling it, a transformers without ``initialize_weights``) gets its
    ``_init_weights(module)`` hook run over its modules after construction, the outermost one
    of each tree. Other models (nanoGPT's
    ``self.apply(self._init_weights)``) init in ``__init__`` as on CPU, and re-running their
    hook would undo later special cases."""
    skip: set[int] = set()
    for module in model.modules():
        if id(module) in skip or not is_pretrained_model(module):
            continue
        skip |= {id(m) for m in module.modules()}
        if id(module) in done:
            continue
        hook = getattr(module, "_init_weights", None)
        if callable(hook):
            module.apply(hook)


def _materialize(model: torch.nn.Module, spec: ModelSpec) -> None:
    if spec.example_input_shape is None:
        raise TargetError(
            f"{spec.ref} has Lazy modules whose shapes are only known after a forward pass",
            "give an input shape: --input-shape 1,3,64,64, or `example_input: {shape: [...]}` "
            "in a spec",
        )
    was_training = model.training
    model.eval()  # a forward in eval mode leaves running statistics untouched
    try:
        model(torch.randn(spec.example_input_shape))
    except Exception as exc:
        raise TargetError(
            f"running {spec.ref} on an input of shape {list(spec.example_input_shape)} failed: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}",
            "pass the shape the model's forward expects",
        ) from exc
    finally:
        model.train(was_training)


def _named_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    out: list[tuple[str, torch.Tensor]] = list(model.named_parameters(remove_duplicate=False))
    out += list(model.named_buffers(remove_duplicate=False))
    return out
