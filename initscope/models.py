"""Construct a model under the init tracer, and resolve each tensor's default init.

This is where "the default init as torch (or the model's own code) really performs it" comes
from: the model is built for real, inside :class:`~initscope.tracing.InitTracer`, and every
parameter and buffer is mapped to the last call that wrote it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from initscope.checkpoints import Checkpoint, open_checkpoint
from initscope.distributions import Distribution
from initscope.errors import InitScopeWarning, TargetError
from initscope.targets import (
    ModelSpec,
    TargetOptions,
    construct,
    import_ref,
    resolve_target,
    split_ref,
)
from initscope.tracing import DefaultInit, InitCall, InitTracer

__all__ = [
    "TracedModel",
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
    from torch.nn.parameter import is_lazy

    return any(is_lazy(p) for p in model.parameters()) or any(is_lazy(b) for b in model.buffers())


def trace_model(spec: ModelSpec, *, seed: int = 0, meta: bool = False) -> TracedModel:
    """Build the model ``spec`` names with tracing on, materializing Lazy modules.

    The global RNG is seeded with ``seed`` for construction and restored afterwards. With
    ``meta``, the model is built on the meta device: no memory for weights, defaults only.
    """
    import_ref(spec.ref, spec.base_dir)  # import errors first, and imports outside the tracer
    tracer = InitTracer()
    device = torch.device("meta") if meta else contextlib.nullcontext()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), device, tracer:
            torch.manual_seed(seed)
            model = _build(spec)
            if meta:
                _run_init_hook(model)
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
    spec, ckpt_path = resolve_target(target, how)
    if ckpt_path is None:
        assert spec is not None
        yield trace_model(spec, seed=how.seed, meta=how.meta), None
        return
    # Open (and so validate) the checkpoint before a possibly slow model construction.
    with open_checkpoint(
        ckpt_path, unsafe_load=how.unsafe_load, allow_outside=how.allow_outside
    ) as ckpt:
        if spec is not None:
            yield trace_model(spec, seed=how.seed, meta=how.meta), ckpt
        elif ckpt.module is None and ckpt.provenance is not None:
            yield _from_record(ckpt, how), ckpt
        else:
            yield None, ckpt


def _from_record(ckpt: Checkpoint, how: TargetOptions) -> TracedModel | None:
    """The model a checkpoint's provenance record names, built with the record's arguments,
    or None (with a warning) whenever that cannot be done safely: the record is data from
    the file, so any failure means "read the file as a bare state dict", never an error."""
    assert ckpt.provenance is not None
    spec = spec_from_provenance(ckpt.provenance.model, ckpt.path, how)
    if spec is None or not _fits_on_meta(spec, ckpt, None if how.meta else how.max_memory):
        return None
    try:
        return trace_model(spec, seed=how.seed, meta=how.meta)
    except Exception as exc:
        _warn_bare(ckpt.path, f"building it failed ({type(exc).__name__}: {exc})"[:300])
        return None


def _warn_bare(path: Path, why: str) -> None:
    warnings.warn(
        InitScopeWarning(
            f"{path} records the model that made it, but {why}; reading it as a bare state "
            "dict (pass --model or --spec to use a model)"
        ),
        stacklevel=3,
    )


def _fits_on_meta(spec: ModelSpec, ckpt: Checkpoint, budget: int | None) -> bool:
    """Whether the recorded model, built on the meta device (no memory, so a record asking
    for a huge model costs nothing), has the checkpoint's names and shapes, and its
    parameters and buffers fit in ``budget`` bytes (None: it will not be built for real)."""
    try:
        traced = trace_model(spec, seed=0, meta=True)
    except Exception as exc:  # a stale or foreign record: any failure means "do not use it"
        _warn_bare(ckpt.path, f"it cannot be built here ({type(exc).__name__}: {exc})"[:300])
        return False
    state = traced.model.state_dict()
    keys = ckpt.keyed(state.keys())
    have = {n: ckpt.infos[k].shape for n, k in keys.items()}
    if any(have.get(n) != tuple(t.shape) for n, t in state.items() if n in have) or not (
        set(have) <= set(state)
    ):
        _warn_bare(ckpt.path, "its names or shapes do not match the file's")
        return False
    tensors = [*traced.model.parameters(), *traced.model.buffers()]
    need = sum(t.numel() * t.element_size() for t in tensors)
    if budget is not None and need > budget:
        _warn_bare(
            ckpt.path,
            f"it takes {need / 2**30:.2f} GiB, over --max-memory ({budget / 2**30:.2f} GiB; "
            "raise it, or add --meta for defaults without weights)",
        )
        return False
    return True


def record_import_problem(module: str) -> str | None:
    """Why importing ``module`` for a provenance record could run code nobody chose, or None
    when it may be imported.

    Importing runs a module's code, and the record is data from a file. So a record may only
    name a module that is already imported, or a regular (non-namespace) module of an
    installed distribution, found with the working folder and the script's folder off the
    search path: never a ``__main__`` module (``unittest.__main__`` runs tests on import), a
    standard-library module not yet imported (``antigravity`` opens a browser), or a file
    beside the checkpoint — a namespace package such as ``mpl_toolkits`` would take
    ``./mpl_toolkits/x.py`` from the working folder.
    """
    import importlib.util
    from importlib.metadata import packages_distributions

    parts = module.split(".")
    if not all(p.isidentifier() for p in parts):
        return f"{module!r} is not a module name"
    if "__main__" in parts:
        return f"{module} is a __main__ module (importing it runs a program)"
    if module in sys.modules and getattr(sys.modules[module], "__file__", None):
        return None
    if parts[0] not in packages_distributions():
        return f"{parts[0]} is not an installed package"
    with _installed_paths_only():
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            loaded = sys.modules.get(name)
            if loaded is not None:
                if getattr(loaded, "__file__", None) is None:
                    return f"{name} is a namespace package (its modules may come from any folder)"
                continue
            try:
                spec = importlib.util.find_spec(name)  # imports the (checked) parents
            except (ImportError, ValueError):
                return f"{name} cannot be found"
            if spec is None:
                return f"{name} cannot be found"
            if spec.origin is None or not os.path.isfile(spec.origin):
                return f"{name} is a namespace package (its modules may come from any folder)"
    return None


@contextmanager
def _installed_paths_only() -> Iterator[None]:
    """sys.path without the working folder and the running script's folder."""
    here = {"", ".", os.getcwd(), os.path.realpath(os.getcwd())}
    if sys.argv and sys.argv[0]:
        here.add(os.path.dirname(os.path.realpath(sys.argv[0])))
    saved = sys.path[:]
    importlib.invalidate_caches()
    try:
        sys.path[:] = [
            p for p in sys.path if (p or "") not in here and os.path.realpath(p or ".") not in here
        ]
        yield
    finally:
        sys.path[:] = saved


def _has_nested_spec(value: object) -> bool:
    if isinstance(value, Mapping):
        return "model" in value or any(_has_nested_spec(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_nested_spec(v) for v in value)
    return False


def spec_from_provenance(
    record: Mapping[str, object] | None, path: Path, how: TargetOptions = TargetOptions()
) -> ModelSpec | None:
    """The model a checkpoint written by ``initscope apply`` records, or None (with a
    warning) when it cannot be rebuilt here.

    Safety: the record is data from a file. Only a reference to an ``nn.Module`` subclass
    is constructed, with plain-data arguments (no nested ``model:`` specs, which would call
    other factories); anything else is ignored and the file is read as a bare state dict.
    """
    if not record:
        return None
    ref, args, kwargs = record.get("ref"), record.get("args", []), record.get("kwargs", {})
    shape = record.get("input_shape")
    base = record.get("base_dir")
    if (
        not isinstance(ref, str)
        or not isinstance(args, list)
        or not isinstance(kwargs, dict)
        or _has_nested_spec(args)
        or _has_nested_spec(kwargs)
    ):
        warnings.warn(
            InitScopeWarning(
                f"{path} records a model initscope will not rebuild from a file; reading it "
                "as a bare state dict (pass --model or --spec to use a model)"
            ),
            stacklevel=2,
        )
        return None
    # Importing a module runs its code. Without --unsafe-load only installed packages are
    # imported for a record (not a .py beside the file, nor the record's base_dir).
    base_dir = Path(base) if isinstance(base, str) and Path(base).is_dir() else None
    if not how.unsafe_load:
        base_dir = None
        try:
            problem = record_import_problem(split_ref(ref)[0])
        except TargetError as exc:
            problem = exc.message
        if problem is not None:
            _warn_bare(
                path,
                f"{problem}: importing it would run code the record names (--unsafe-load "
                "trusts the record)",
            )
            return None
    try:
        if not how.unsafe_load:
            # Imported here with the working folder off the path, so that ./six.py cannot
            # stand in for an installed six; import_ref then finds it already imported.
            with _installed_paths_only():
                importlib.import_module(split_ref(ref)[0])
        factory = import_ref(ref, base_dir)
    except TargetError as exc:
        _warn_bare(path, f"{ref} cannot be imported here ({exc.message})")
        return None
    except Exception as exc:
        _warn_bare(path, f"{ref} cannot be imported here ({type(exc).__name__}: {exc})"[:300])
        return None
    if not (isinstance(factory, type) and issubclass(factory, torch.nn.Module)):
        warnings.warn(
            InitScopeWarning(
                f"{path} records {ref}, which is not an nn.Module class; reading it as a "
                "bare state dict"
            ),
            stacklevel=2,
        )
        return None
    input_shape = (
        tuple(int(x) for x in shape)
        if isinstance(shape, list) and all(isinstance(x, int) for x in shape)
        else None
    )
    return ModelSpec(
        ref,
        tuple(args),
        {**kwargs, **how.kwargs},
        path,
        how.input_shape or input_shape,
        base_dir,
    )


def _build(spec: ModelSpec) -> torch.nn.Module:
    try:
        model: torch.nn.Module = construct(spec)
    except TargetError as exc:
        cause = exc.__cause__
        if isinstance(cause, MemoryError) or "can't allocate memory" in str(cause):
            raise TargetError(
                f"{spec.ref} does not fit in memory: {cause}",
                "report its defaults without allocating weights: add --meta",
            ) from cause
        raise
    return model


def _run_init_hook(model: torch.nn.Module) -> None:
    """transformers skips its init on the meta device (a Llama built on meta keeps torch's
    kaiming defaults instead of its normal(0, 0.02)), so run the ``_init_weights(module)``
    hook of each outermost transformers ``PreTrainedModel`` over its modules while the
    tracer records. Other models (nanoGPT's ``self.apply(self._init_weights)``) init in
    ``__init__`` as on CPU, and re-running their hook would undo later special cases."""
    done: set[int] = set()
    for module in model.modules():
        if id(module) in done or not _is_pretrained_model(module):
            continue
        hook = getattr(module, "_init_weights", None)
        if callable(hook):
            module.apply(hook)
        done |= {id(m) for m in module.modules()}


def _is_pretrained_model(module: torch.nn.Module) -> bool:
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
        for c in type(module).__mro__
    )


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
