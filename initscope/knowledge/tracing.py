"""Record the init calls a model's construction really performs.

Construction runs inside :class:`InitTracer`, a ``TorchFunctionMode``. Every tensor operation
made from Python passes through it, which lets it see three kinds of event:

* **writes**: a ``torch.nn.init`` function (``uniform_``, ``normal_``, ``constant_`` and
  ``kaiming_uniform_`` dispatch through ``__torch_function__`` themselves; the others, such as
  ``xavier_uniform_``, are recognised from the ``torch/nn/init.py`` frame that performs the
  tensor method), or an in-place tensor method (``uniform_``, ``normal_``, ``fill_``,
  ``zero_``, ``copy_``, ``mul_``, ...);
* **creations**: factories whose values are known (``torch.randn``, ``zeros``, ``ones``,
  ``full``, ``empty``, ...), and scalar arithmetic on a traced tensor (``torch.randn(d) * 0.02``);
* **copies**: ``clone``, ``deepcopy``, ``to`` and friends, which carry the source's init over to
  the new tensor. This is how ``nn.TransformerEncoder``'s deep-copied layers keep the default of
  the layer they were copied from.

Events are keyed by storage and element range rather than by tensor object, so ``w.data``,
``w.t()`` and ``w[0]`` all land on ``w``. After construction, :meth:`InitTracer.resolve` gives
each tensor its :class:`DefaultInit`: the last write that covers the whole tensor, any later
partial writes (Embedding's zeroed ``padding_idx`` row), and the distribution it implies.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from initscope.knowledge.distributions import Distribution, Family
from initscope.knowledge.recipes import (
    MAX_VALUES,
    POSITIONAL,
    Recipe,
    Step,
    as_number,
    closed_form,
    constant_fold,
    is_op_name,
    parse_op,
    probe_stats,
)

__all__ = [
    "DefaultInit",
    "InitCall",
    "InitTracer",
    "fans",
    "format_arg",
    "init_distribution",
]

ArgValue = float | int | str | bool | None

_INIT_FILE = os.path.normcase(os.path.abspath(torch.nn.init.__file__))
# Frames in these files are plumbing between the code that asked for an init and the tensor op.
_SKIP_FILES = {
    _INIT_FILE,
    os.path.normcase(os.path.abspath(__file__)),
    os.path.normcase(os.path.abspath(torch.overrides.__file__)),
    os.path.normcase(os.path.abspath(torch._tensor.__file__)),
    os.path.normcase(os.path.abspath(torch.nn.parameter.__file__)),
}
# The file name code objects of torch.nn.init carry, as given and normalized: the entry hook
# compares it on every Python call during construction, so without a path call.
_INIT_FILENAMES = frozenset({torch.nn.init.__file__, _INIT_FILE})
_PUBLIC_INITS = {
    name
    for name, fn in vars(torch.nn.init).items()
    if name.endswith("_") and not name.startswith("_") and callable(fn)
}


@dataclass(frozen=True)
class InitCall:
    """One traced call: its name, its arguments (numbers as given), and the code that made it."""

    name: str
    args: Mapping[str, ArgValue] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        # Frozen all the way down: a read-only copy of the arguments.
        object.__setattr__(self, "args", MappingProxyType(dict(self.args)))

    def __reduce__(self) -> tuple[Any, ...]:  # a mappingproxy does not pickle
        return (InitCall, (self.name, dict(self.args), self.source))

    def signature(self) -> str:
        inner = ", ".join(f"{k}={format_arg(v)}" for k, v in self.args.items())
        return f"{self.name}({inner})"


@dataclass(frozen=True)
class DefaultInit:
    """What construction left in one tensor.

    ``call`` is the write that set the whole tensor from scratch (an init function, a fill, a
    factory); ``then`` are whole-tensor writes applied after it (``mul_(0.5)``); ``partial``
    are later writes to part of it (a padding row zeroed); ``via`` names the copies the
    values travelled through (``deepcopy``, ``copy_``). ``recipe`` is how to compute the
    values again, kept for the families that need it: ``derived`` (a chain of elementwise
    ops on a draw, tested against a probe of it) and ``deterministic`` (values the code
    computed, compared with a replay).
    """

    call: InitCall
    distribution: Distribution
    then: tuple[InitCall, ...] = ()
    partial: tuple[InitCall, ...] = ()
    via: tuple[str, ...] = ()
    recipe: Recipe | None = None

    @property
    def is_known(self) -> bool:
        """Whether the values came from a call that names a distribution (not ``custom``)."""
        return self.distribution.family is not Family.CUSTOM

    def label(self) -> str:
        """The distribution's label; for a derived default, ``derived:`` and its formula."""
        if self.distribution.family is Family.DERIVED and self.recipe is not None:
            return f"derived: {self.recipe.expression()}"
        return self.distribution.label()


def fans(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """torch.nn.init._calculate_fan_in_and_fan_out: ``size(1)`` and ``size(0)`` times the
    receptive field (the product of the remaining dims); undefined below 2 dims."""
    if len(shape) < 2:
        return None
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


# -- the distribution each known call implies ----------------------------------------------


def _gain(nonlinearity: Any, param: Any) -> float:
    return float(torch.nn.init.calculate_gain(str(nonlinearity), param))  # type: ignore[arg-type]


def init_distribution(
    name: str, a: Mapping[str, Any], shape: tuple[int, ...]
) -> Distribution | None:
    """The distribution a torch.nn.init function draws for a tensor of ``shape``."""
    f = fans(shape)
    if name == "uniform_":
        return Distribution.uniform(float(a.get("a", 0.0)), float(a.get("b", 1.0)))
    if name == "normal_":
        return Distribution.normal(float(a.get("mean", 0.0)), float(a.get("std", 1.0)))
    if name == "trunc_normal_":
        return Distribution.trunc_normal(
            float(a.get("mean", 0.0)),
            float(a.get("std", 1.0)),
            float(a.get("a", -2.0)),
            float(a.get("b", 2.0)),
        )
    if name == "constant_":
        return Distribution.constant(float(a["val"]))
    if name == "ones_":
        return Distribution.constant(1.0)
    if name == "zeros_":
        return Distribution.constant(0.0)
    if name == "eye_" and len(shape) == 2:
        return Distribution.eye(shape)
    if name == "dirac_" and len(shape) >= 3:
        return Distribution.dirac(shape, int(a.get("groups", 1)))
    if name == "orthogonal_" and len(shape) >= 2:
        return Distribution.orthogonal(float(a.get("gain", 1.0)), shape)
    if name == "sparse_" and len(shape) == 2:
        return Distribution.sparse(float(a["sparsity"]), float(a.get("std", 0.01)))
    if f is None:
        return None
    fan_in, fan_out = f
    if name in ("xavier_uniform_", "xavier_normal_"):
        # torch: std = gain * sqrt(2 / (fan_in + fan_out)); uniform bound = sqrt(3) * std.
        std = float(a.get("gain", 1.0)) * math.sqrt(2.0 / (fan_in + fan_out))
        if name == "xavier_normal_":
            return Distribution.normal(0.0, std)
        bound = math.sqrt(3.0) * std
        return Distribution.uniform(-bound, bound)
    if name in ("kaiming_uniform_", "kaiming_normal_"):
        # torch: std = calculate_gain(nonlinearity, a) / sqrt(fan); uniform bound = sqrt(3)*std.
        fan = fan_in if a.get("mode", "fan_in") == "fan_in" else fan_out
        if fan == 0:
            return None
        std = _gain(a.get("nonlinearity", "leaky_relu"), a.get("a", 0)) / math.sqrt(fan)
        if name == "kaiming_normal_":
            return Distribution.normal(0.0, std)
        bound = math.sqrt(3.0) * std
        return Distribution.uniform(-bound, bound)
    return None


def _method_distribution(name: str, a: Mapping[str, Any]) -> Distribution | None:
    """The distribution a tensor method or factory fills with, for those with known values."""
    if name in ("uniform_", "rand", "rand_like"):
        return Distribution.uniform(float(a.get("from", 0.0)), float(a.get("to", 1.0)))
    if name in ("normal_", "randn", "randn_like"):
        return Distribution.normal(float(a.get("mean", 0.0)), float(a.get("std", 1.0)))
    if name in ("zero_", "zeros", "zeros_like", "new_zeros"):
        return Distribution.constant(0.0)
    if name in ("ones", "ones_like", "new_ones"):
        return Distribution.constant(1.0)
    if name in ("fill_", "full", "full_like", "new_full") and isinstance(
        a.get("value"), int | float
    ):
        return Distribution.constant(float(a["value"]))
    return None


# -- what counts as which event -------------------------------------------------------------

_FACTORIES = {
    "randn",
    "rand",
    "zeros",
    "ones",
    "full",
    "empty",
    "randn_like",
    "rand_like",
    "zeros_like",
    "ones_like",
    "full_like",
    "empty_like",
    "new_zeros",
    "new_ones",
    "new_full",
    "new_empty",
}
# Factories whose values the code gives (no draw): what they make is deterministic.
_DETERMINISTIC_FACTORIES = {
    "arange",
    "range",
    "tensor",
    "as_tensor",
    "linspace",
    "logspace",
    "eye",
}
# Ops that make a new tensor from deterministic (or constant) tensors and scalars: the result
# is deterministic too (Mamba's A_log = log(arange(...).repeat(...)); Whisper's sinusoids,
# cat([sin(t * inv), cos(t * inv)]) of two aranges, transformers/models/whisper).
_DETERMINISTIC_OPS = {
    "log", "log2", "log10", "log1p", "exp", "exp2", "expm1", "sqrt", "rsqrt", "reciprocal",
    "neg", "__neg__", "abs", "sin", "cos", "tanh", "sigmoid", "pow", "__pow__", "__rpow__",
    "repeat", "expand", "tile", "reshape", "view", "flatten", "unsqueeze", "squeeze",
    "transpose", "permute", "t", "flip", "cumsum", "cumprod", "outer", "float", "double",
    "__rtruediv__", "__rsub__", "clamp", "clip", "cat", "concat", "concatenate", "stack",
}  # fmt: skip
_COPIES = {
    "clone",
    "__deepcopy__",
    "to",
    "contiguous",
    "float",
    "double",
    "half",
    "bfloat16",
    "type",
    "cpu",
    "detach",
    "_to_copy",
}
# Augmented assignment (``w *= 0.5``) arrives as the dunder; it is the in-place op.
_INPLACE_DUNDERS = {
    "__imul__": "mul_",
    "__itruediv__": "div_",
    "__iadd__": "add_",
    "__isub__": "sub_",
}
# In-place methods that change metadata, autograd flags or placement, not values.
_NOT_WRITES = {
    "requires_grad_",
    "share_memory_",
    "detach_",
    "rename_",
    "resize_",
    "resize_as_",
    "as_strided_",
    "squeeze_",
    "unsqueeze_",
    "t_",
    "transpose_",
    "swapdims_",
    "swapaxes_",
    "set_",
    "pin_memory_",
    "retain_grad_",
    "record_stream",
}
# Positional parameter names of the tensor methods whose arguments we show; other methods'
# positional arguments show as arg0, arg1, ...
_METHOD_PARAMS: dict[str, tuple[str, ...]] = {
    "uniform_": ("from", "to"),
    "normal_": ("mean", "std"),
    "fill_": ("value",),
    "full": ("size", "value"),
    "new_full": ("size", "value"),
    "full_like": ("value",),
    **{op: ("other",) for op in ("mul_", "div_", "add_", "sub_")},
    "clamp_": ("min", "max"),
    "bernoulli_": ("p",),
    "exponential_": ("lambd",),
    "log_normal_": ("mean", "std"),
    "geometric_": ("p",),
    "random_": ("from", "to"),
}
_CUSTOM = Distribution.custom()


def _method_args(
    name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, ArgValue]:
    names = _METHOD_PARAMS.get(name, ())
    out = {
        (names[i] if i < len(names) else f"arg{i}"): _json_arg(v)
        for i, v in enumerate(args)
        # tensor operands say nothing in a call's signature; scalars (0-dim) do
        if not (isinstance(v, torch.Tensor) and v.numel() != 1)
    }
    # ``out=`` is where the result goes (the target), not an argument of the call.
    out.update({k: _json_arg(v) for k, v in kwargs.items() if k not in ("generator", "out")})
    return out


@dataclass(frozen=True)
class _Region:
    storage: int  # the StorageImpl pointer: unique per live storage, meta tensors included
    start: int
    stop: int
    numel: int
    shape: tuple[int, ...]
    stride: tuple[int, ...] = ()

    @property
    def layout(self) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        return self.shape, self.stride, self.start

    @property
    def dense(self) -> bool:
        """Row-major without gaps: its flat order is the storage's."""
        expected = 1
        for size, st in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and st != expected:
                return False
            expected *= size
        return True

    def covers(self, other: _Region) -> bool:
        return (
            self.storage == other.storage
            and self.start <= other.start
            and self.stop >= other.stop
            and self.numel >= other.numel
        )

    def overlaps(self, other: _Region) -> bool:
        return self.storage == other.storage and self.start < other.stop and other.start < self.stop


@dataclass(frozen=True)
class _Event:
    seq: int
    region: _Region
    state: DefaultInit
    partial: bool = False  # known to write only part of its region (advanced indexing)


def _region(t: torch.Tensor) -> _Region | None:
    try:
        storage = t.untyped_storage()
        key = int(storage._cdata)
    except Exception:  # sparse, nested and other storage-less tensors are not traced
        return None
    if t.numel() == 0:
        return None
    start = int(t.storage_offset())
    extent = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True))
    # The distinct elements: an expanded view (stride 0, Mamba's arange(...).expand(d, -1))
    # repeats its source's, and is covered by whatever covers them.
    distinct = math.prod(int(s) for s, st in zip(t.shape, t.stride(), strict=True) if st != 0)
    shape = tuple(int(s) for s in t.shape)
    stride = tuple(int(s) for s in t.stride())
    return _Region(key, start, start + int(extent), distinct, shape, stride)


def format_arg(v: ArgValue) -> str:
    if isinstance(v, float):
        if math.isclose(v, math.sqrt(5)):
            return "√5"
        return f"{v:.6g}"
    return repr(v) if isinstance(v, str) else str(v)


def _json_arg(v: Any) -> ArgValue:
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    if isinstance(v, torch.Tensor) and v.numel() == 1 and v.device.type != "meta":
        return float(v.item())
    if isinstance(v, torch.dtype | torch.device):
        return str(v)
    return type(v).__name__


def _display_path(filename: str) -> str:
    marker = f"site-packages{os.sep}"
    if marker in filename:
        return filename.split(marker, 1)[1]
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


def _frame_source(frame: types.FrameType) -> str:
    code = frame.f_code
    qual = getattr(code, "co_qualname", code.co_name)
    return f"{_display_path(code.co_filename)}:{frame.f_lineno} in {qual}"


class InitTracer(TorchFunctionMode):
    """A torch function mode that records how each tensor made under it got its values.

    Use it as a context manager around model construction, then call :meth:`resolve` on the
    model's parameters. It keeps every traced tensor alive until :meth:`close` (or leaving
    :func:`trace_construction`) so that storage keys cannot be reused while tracing.
    """

    def __init__(self, *, entries: bool = True) -> None:
        super().__init__()
        self._events: dict[int, list[_Event]] = {}
        self._keep: list[torch.Tensor] = []
        self._seq = 0
        self._entries = entries
        self._previous_profile: Any = None

    # Entering a torch.nn.init function is recorded as that call, with its arguments, on
    # every device. Its tensor ops alone do not say it on the meta device: there torch 2.x's
    # trunc_normal_, orthogonal_, sparse_ and dirac_ return before any op ("Meta tensors have
    # no storage, so sampling is a no-op", torch/nn/init.py _no_grad_trunc_normal_), and
    # --meta showed the earlier write (randn's N(0, 1)) instead. A profile hook sees the call
    # however the function was reached: nn.init.X, `from torch.nn.init import X`, or a
    # library's wrapper holding the original (transformers.initialization). The hook costs
    # about a third more construction time (4.4 s -> 6.0 s for a LLaMA-7B config on meta), so
    # ``entries=False`` leaves it off where the ops say the same (a build on a real device).
    def __enter__(self) -> InitTracer:
        super().__enter__()  # type: ignore[no-untyped-call]
        if self._entries:
            self._previous_profile = sys.getprofile()
            sys.setprofile(self._entry_hook(self._previous_profile))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._entries:
            sys.setprofile(self._previous_profile)
        super().__exit__(*exc)  # type: ignore[no-untyped-call]

    def _entry_hook(self, previous: Any) -> Callable[[types.FrameType, str, Any], None]:
        """The profile function: it runs on every Python call while a model is built, so it
        tests the cheapest thing first and binds what it reads as locals."""
        names, files, record = _PUBLIC_INITS, _INIT_FILENAMES, self._record_entry

        def hook(frame: types.FrameType, event: str, arg: Any) -> None:
            if previous is not None:
                previous(frame, event, arg)
            code = frame.f_code
            if event == "call" and code.co_name in names and code.co_filename in files:
                with contextlib.suppress(Exception):  # tracing never breaks construction
                    record(frame)

        return hook

    def _record_entry(self, frame: types.FrameType) -> None:
        """A public torch.nn.init function was entered: record it against its tensor, unless
        it runs inside another one (torch's __torch_function__ dispatch re-enters it)."""
        tensor = frame.f_locals.get("tensor")
        if not isinstance(tensor, torch.Tensor):
            return
        source, outer = self._caller(frame.f_back)
        if outer is None:
            self._record_init_frame(frame, source, tensor)

    # -- recording -------------------------------------------------------------------------
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types_: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        result = func(*args, **kwargs)
        # Tracing must never break the user's model construction.
        with contextlib.suppress(Exception):
            self._observe(func, args, kwargs, result)
        return result

    def _observe(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
    ) -> None:
        name = getattr(func, "__name__", "")
        # torch.nn.init's dispatching functions hand over *their module global* of the same
        # name, which libraries may have patched: transformers' guard_torch_init_functions
        # swaps in wrappers from transformers.initialization. So match by name and shape of
        # the function, not by its module.
        if name in _PUBLIC_INITS and isinstance(func, types.FunctionType):
            bound = inspect.signature(func).bind(*args, **kwargs)
            bound.apply_defaults()
            tensor = bound.arguments.get("tensor")
            if isinstance(tensor, torch.Tensor):
                call_args = {
                    k: _json_arg(v)
                    for k, v in bound.arguments.items()
                    if k not in ("tensor", "generator")
                }
                self._record_init(name, call_args, tensor)
            return
        name = _INPLACE_DUNDERS.get(name, name)
        if name in _NOT_WRITES:
            return
        first = args[0] if args else None
        out = kwargs.get("out")
        if isinstance(out, torch.Tensor) and name not in _COPIES:
            self._write_from_method(name, args, kwargs, out, out_of=True)
            return
        if name.endswith("_") and not name.startswith("__") and isinstance(first, torch.Tensor):
            self._write_from_method(name, args[1:], kwargs, first)
            return
        if name == "__setitem__" and isinstance(first, torch.Tensor):
            self._record_setitem(first, args[1] if len(args) > 1 else None)
            return
        if not isinstance(result, torch.Tensor):
            return
        if name in _FACTORIES:
            self._record_factory(name, args, kwargs, result)
        elif name in _DETERMINISTIC_FACTORIES:
            self._record_deterministic(name, args, kwargs, result)
        elif name in _COPIES and isinstance(first, torch.Tensor):
            self._record_copy(name, first, result)
        elif name in _RESHAPES and isinstance(first, torch.Tensor):
            self._record_copy(name, first, result, step=True)
        else:
            self._record_op(name, args, kwargs, result)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _add(
        self,
        tensor: torch.Tensor,
        state: DefaultInit,
        region: _Region | None = None,
        partial: bool = False,
    ) -> None:
        region = region or _region(tensor)
        if region is None:
            return
        self._keep.append(tensor)
        seq = self._next()
        if state.recipe is None and not partial:
            # A fresh draw (or constant) becomes a recipe's root, so that ops on it can be
            # followed; the event number tells this draw from others of the same numbers.
            root = Recipe.of_distribution(state.distribution, region.shape, (seq, ()))
            if root is not None:
                state = replace(state, recipe=root)
        event = _Event(seq, region, state, partial)
        self._events.setdefault(region.storage, []).append(event)

    def _caller(
        self, start: types.FrameType | None = None
    ) -> tuple[str | None, types.FrameType | None]:
        """The first frame outside torch's init plumbing, and the outermost public
        torch.nn.init function on the stack (if the op happens inside one), looking up from
        ``start`` (by default, above _caller and its recording method; the frames of this
        module and of torch's dispatch plumbing are skipped by file below anyway)."""
        frame: types.FrameType | None = start if start is not None else sys._getframe(2)
        source: str | None = None
        init_frame: types.FrameType | None = None
        while frame is not None:
            filename = os.path.normcase(os.path.abspath(frame.f_code.co_filename))
            if filename == _INIT_FILE and frame.f_code.co_name in _PUBLIC_INITS:
                init_frame = frame
                source = None  # look for the caller of the outermost init function
            elif (
                source is None
                and filename not in _SKIP_FILES
                and "contextlib" not in filename
                # wrappers named like the init they wrap (transformers.initialization.normal_)
                and frame.f_code.co_name not in _PUBLIC_INITS
            ):
                source = _frame_source(frame)
                if init_frame is not None:
                    break
            frame = frame.f_back
        return source, init_frame

    def _record_init(self, name: str, call_args: dict[str, ArgValue], tensor: torch.Tensor) -> None:
        source, _ = self._caller()
        call = InitCall(name, call_args, source)
        dist = init_distribution(name, call_args, tuple(tensor.shape))
        self._add(tensor, DefaultInit(call, dist or _CUSTOM))

    def _write_from_method(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        target: torch.Tensor,
        partial: bool = False,
        out_of: bool = False,
    ) -> None:
        """A write to ``target``: an in-place method (``args`` excludes ``target`` itself),
        or with ``out_of`` an op whose ``out=`` is ``target`` (``args`` are all its
        operands). Inside an init function, the function is recorded instead."""
        source, init_frame = self._caller()
        if init_frame is not None:
            self._record_init_frame(init_frame, source, target)
            return
        region = _region(target)
        if region is None:
            return
        call = InitCall(name, _method_args(name, args, kwargs), source)
        operands = args if out_of else (target, *args)
        op_kwargs = {k: v for k, v in kwargs.items() if k != "out"}
        if partial:
            self._add(target, DefaultInit(call, Distribution.custom()), region)
        elif name == "copy_" and args and isinstance(args[0], torch.Tensor):
            self._add(target, self._copied_state(args[0], "copy_", call, target), region)
        elif (known := _method_distribution(name, call.args)) is not None:
            self._add(target, DefaultInit(call, known), region)
        elif (state := self._op_state(name, operands, op_kwargs, target, call)) is not None:
            self._add(target, state, region)
        else:
            self._add(target, self._then(target, call), region)

    def _record_setitem(self, tensor: torch.Tensor, index: Any) -> None:
        """``t[index] = value``: a write to the indexed part of ``t``. Basic indexing gives
        a view whose region says how much; advanced indexing copies, so count it partial."""
        source, init_frame = self._caller()
        if init_frame is not None:
            self._record_init_frame(init_frame, source, tensor)
            return
        whole = _region(tensor)
        if whole is None:
            return
        try:
            part = _region(tensor[index])
        except Exception:
            part = None
        call = InitCall("__setitem__", {}, source)
        if part is None or part.storage != whole.storage:
            self._add(tensor, DefaultInit(call, _CUSTOM), whole, partial=True)
        elif part.covers(whole):
            self._add(tensor, self._then(tensor, call), whole)
        else:
            self._add(tensor, DefaultInit(call, _CUSTOM), part)

    def _record_init_frame(
        self, frame: types.FrameType, source: str | None, fallback: torch.Tensor
    ) -> None:
        """The op is part of a torch.nn.init function that does not dispatch itself
        (xavier_uniform_, orthogonal_, ...): record the function with its arguments, read
        from its frame, against the tensor it was given."""
        code = frame.f_code
        params = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        call_args = {
            p: _json_arg(frame.f_locals.get(p)) for p in params if p not in ("tensor", "generator")
        }
        tensor = frame.f_locals.get("tensor")
        target = tensor if isinstance(tensor, torch.Tensor) else fallback
        dist = init_distribution(code.co_name, call_args, tuple(target.shape))
        self._add(target, DefaultInit(InitCall(code.co_name, call_args, source), dist or _CUSTOM))

    def _copied_state(
        self, src: torch.Tensor, how: str, fallback: InitCall, target: torch.Tensor
    ) -> DefaultInit:
        """The state of ``target`` after its values were copied from ``src`` (broadcast to
        its shape, as copy_ does)."""
        found = self._operand(src)
        if found is None:
            return DefaultInit(fallback, _CUSTOM)
        base, recipe = found
        if recipe is not None and tuple(src.shape) != tuple(target.shape):
            # Repeated values: known positions for a replay, but no longer iid draws.
            broadcast = recipe.then("broadcast", shape=tuple(target.shape))
            recipe = broadcast if recipe.is_positional else None
        return _with_recipe(replace(base, via=(*base.via, how)), recipe)

    def _then(self, target: torch.Tensor, call: InitCall) -> DefaultInit:
        """A whole-tensor write that is none of the known ones (an op outside the recipes'
        allow-list, a tensor operand nothing traced): the history is kept, the values are
        custom."""
        found = self.state_of(target)
        if found is None or found[0] is None:
            return DefaultInit(call, _CUSTOM)
        base = found[0]
        return replace(base, distribution=_CUSTOM, then=(*base.then, call), recipe=None)

    def _record_factory(
        self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], result: torch.Tensor
    ) -> None:
        source, _ = self._caller()
        call_args: dict[str, ArgValue] = {}
        if name in ("full", "new_full") and len(args) >= 2:
            call_args["value"] = _json_arg(args[-1])
        elif name == "full_like" and len(args) >= 2:
            call_args["value"] = _json_arg(args[1])
        if "fill_value" in kwargs:
            call_args["value"] = _json_arg(kwargs["fill_value"])
        dist = _method_distribution(name, call_args) or Distribution.custom()
        self._add(result, DefaultInit(InitCall(name, call_args, source), dist))

    def _record_deterministic(
        self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], result: torch.Tensor
    ) -> None:
        """A tensor whose values the code gave without a draw (arange, tensor, ...), with the
        recipe that computes them again when its arguments are plain numbers."""
        call = InitCall(name, {}, self._caller()[0])
        recipe = _deterministic_root(name, args, kwargs, tuple(int(s) for s in result.shape))
        self._add(result, DefaultInit(call, Distribution.deterministic(), recipe=recipe))

    def _record_op(
        self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], result: torch.Tensor
    ) -> None:
        """``result`` computed by an op from traced tensors (and numbers): an elementwise op of
        the recipes' allow-list, or an op on values without a draw. A view shares its
        source's storage and needs no event of its own; an op on an untraced tensor leaves
        the result untraced."""
        if not is_op_name(name) and name not in _DETERMINISTIC_OPS:
            return
        dst = _region(result)
        given = (*args, *kwargs.values())
        joined = [a for a in given if isinstance(a, list | tuple)]  # cat/stack's tensors
        tensors = [
            a for a in (*given, *(t for j in joined for t in j)) if isinstance(a, torch.Tensor)
        ]
        if dst is None or not tensors:
            return
        if any((r := _region(t)) is not None and r.storage == dst.storage for t in tensors):
            return
        state = self._op_state(name, args, dict(kwargs), result, None)
        if state is None and name in _DETERMINISTIC_OPS and len(tensors) == 1:
            state = self._deterministic_op(name, tensors[0])
        if state is not None:
            self._add(result, state, dst)

    def _deterministic_op(self, name: str, src: torch.Tensor) -> DefaultInit | None:
        """An op outside the allow-list on values without a draw (or a constant): still
        deterministic, but not replayed."""
        found = self.state_of(src)
        if found is None or found[0] is None:
            return None
        base = found[0]
        if base.distribution.family not in (Family.DETERMINISTIC, Family.CONSTANT):
            return None
        op = InitCall(name.strip("_") or name, {}, self._caller()[0])
        dist = base.distribution if name in _SHAPE_OPS else Distribution.deterministic()
        return replace(base, distribution=dist, then=(*base.then, op), recipe=None)

    def _op_state(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        out: torch.Tensor,
        call: InitCall | None,
    ) -> DefaultInit | None:
        """The state an allow-listed op leaves in ``out`` (its result, or the tensor it
        writes in place), or None when the op is not one, or an operand is untraced."""
        parsed = parse_op(name, args, kwargs)
        if parsed is None:
            return None
        op, operands, ints = parsed
        found: list[tuple[DefaultInit, Recipe | None]] = []
        for o in operands:
            if isinstance(o, torch.Tensor):
                f = self._operand(o)
                if f is None:
                    return None
                found.append(f)
        if not found:
            return None
        if call is None:
            call = InitCall(name.strip("_") or name, _op_args(op, operands), self._caller()[0])
        shape = tuple(int(s) for s in out.shape)
        recipe = _op_recipe(op, operands, found, shape, ints)
        dist = _op_distribution(op, operands, [st for st, _ in found], ints, recipe)
        if recipe is not None and dist.family is not Family.DETERMINISTIC:
            tokens = recipe.tokens
            if (dist.is_continuous and len(tokens) == 1) or dist.family is Family.CONSTANT:
                # A closed form again: the chain so far is one draw of it (same token).
                recipe = Recipe.of_distribution(dist, shape, next(iter(tokens), (0, ())))
        base = found[0][0]
        return _with_recipe(replace(base, distribution=dist, then=(*base.then, call)), recipe)

    def _operand(self, t: torch.Tensor) -> tuple[DefaultInit, Recipe | None] | None:
        """The state of the values ``t`` holds and their recipe, read through ``t``'s view
        of the write that made them: the same layout; the same flat order (a reshape);
        or another layout, a gather of the written places for values without a draw, and
        for draws new draws (still iid if no place is read twice, but not aligned with
        the original). None when nothing wrote all of ``t``; no recipe after a partial write."""
        region = _region(t)
        found = None if region is None else self._resolve_region(region)
        event, partial = found if found is not None else (None, [])
        if region is None or event is None:
            return None
        state = event.state
        recipe = state.recipe
        if recipe is None or partial:
            return state, None
        written = event.region
        if region.layout == written.layout:
            return state, recipe
        same_size = math.prod(region.shape) == math.prod(written.shape)
        if region.start == written.start and same_size and region.dense and written.dense:
            if recipe.is_positional and region.shape != written.shape:
                return state, recipe.then("reshape", shape=region.shape)
            return state, recipe
        if recipe.is_positional:
            ints = (*written.stride, 0, *region.stride, region.start - written.start)
            return state, recipe.then("gather", shape=region.shape, ints=ints)
        if region.numel == math.prod(region.shape):
            return state, recipe.retokened(region.layout + written.layout)
        return state, None

    def _record_copy(
        self, name: str, src: torch.Tensor, result: torch.Tensor, step: bool = False
    ) -> None:
        """``result`` holds ``src``'s values (clone, to, deepcopy, contiguous; with ``step``
        a reshape that had to copy, kept as a step of the history)."""
        src_region, dst_region = _region(src), _region(result)
        if src_region is None or dst_region is None or src_region.storage == dst_region.storage:
            return  # a view: events on the source's storage already apply
        found = self._operand(src)
        if found is None:
            return
        base, recipe = found
        if step:
            if recipe is not None and recipe.is_positional:
                recipe = recipe.then("reshape", shape=dst_region.shape)
            op = InitCall(name.strip("_") or name, {}, self._caller()[0])
            state = _with_recipe(replace(base, then=(*base.then, op)), recipe)
            self._add(result, state, dst_region)
            return
        label = "deepcopy" if name == "__deepcopy__" or _inside_deepcopy() else name
        self._add(result, _with_recipe(replace(base, via=(*base.via, label)), recipe), dst_region)

    # -- resolving ---------------------------------------------------------------------------
    def state_of(self, tensor: torch.Tensor) -> tuple[DefaultInit | None, list[InitCall]] | None:
        """The latest whole write to ``tensor`` and the partial writes after it, or None."""
        region = _region(tensor)
        found = None if region is None else self._resolve_region(region)
        if found is None:
            return None
        event, partial = found
        return (event.state if event else None), partial

    def _resolve_region(self, region: _Region) -> tuple[_Event | None, list[InitCall]] | None:
        events = self._events.get(region.storage)
        if not events:
            return None
        whole: _Event | None = None
        partial: list[InitCall] = []
        for ev in events:
            if ev.region.covers(region) and not ev.partial:
                whole, partial = ev, []
            elif ev.region.overlaps(region):
                partial.append(ev.state.call)
        if whole is None and not partial:
            return None
        return whole, partial

    def resolve(self, tensor: torch.Tensor) -> DefaultInit | None:
        """The default init of ``tensor``, or None when construction never wrote it. A
        derived default gets its probe's mean and std; only derived and deterministic
        defaults keep their recipe (normalized: equal chains give equal defaults)."""
        found = self.state_of(tensor)
        if found is None:
            return None
        base, partial = found
        if base is None:
            return DefaultInit(InitCall("unknown"), _CUSTOM, partial=tuple(partial))
        family = base.distribution.family
        recipe: Recipe | None = None
        if family is Family.DERIVED and base.recipe is not None:
            recipe = base.recipe.normalized()
            stats = probe_stats(recipe)
            if stats is not None:
                base = replace(base, distribution=Distribution.derived(stats.mean, stats.std))
        elif family is Family.DETERMINISTIC and not partial:
            operand = self._operand(tensor)
            recipe = operand[1].normalized() if operand and operand[1] else None
        base = replace(base, recipe=recipe)
        return replace(base, partial=(*base.partial, *partial)) if partial else base

    def close(self) -> None:
        """Drop the references that kept traced tensors alive."""
        self._events.clear()
        self._keep.clear()


def _with_recipe(state: DefaultInit, recipe: Recipe | None) -> DefaultInit:
    """``state`` with ``recipe``; a derived default without one is custom (nothing left
    to test its values against)."""
    if recipe is None and state.distribution.family is Family.DERIVED:
        return replace(state, distribution=_CUSTOM, recipe=None)
    return replace(state, recipe=recipe)


def _op_args(op: str, operands: Sequence[Any]) -> dict[str, ArgValue]:
    """The numbers of an op, named as its signature shows them: ``other`` for a binary op,
    ``min``/``max`` for a clamp."""
    if op == "clamp":
        return {k: v for k, v in zip(("min", "max"), operands[1:], strict=True) if v is not None}
    numbers = [o for o in operands if isinstance(o, float)]
    return {"other": numbers[0]} if len(numbers) == 1 else {}


def _op_recipe(
    op: str,
    operands: Sequence[Any],
    found: Sequence[tuple[DefaultInit, Recipe | None]],
    shape: tuple[int, ...],
    ints: tuple[int, ...],
) -> Recipe | None:
    """The recipe of an op's result, or None when one cannot be kept: an operand without
    one, draws mixed with values the code gave, ops that move draws (repeat, cumsum: no
    longer iid), draws broadcast against each other, or one draw read two ways."""
    present = [r for _, r in found if r is not None]
    if len(present) != len(found):
        return None
    mapped: list[Recipe | float | None] = []
    tensors = iter(present)
    for o in operands:
        mapped.append(next(tensors) if isinstance(o, torch.Tensor) else o)
    recipe = Recipe.combine(present, op, mapped, shape, ints)
    if recipe is None or not recipe.has_draw:
        return recipe
    if recipe.has_deterministic or op in POSITIONAL:
        return None
    draws = {token[0] for token in recipe.tokens}
    if len(draws) != len(recipe.tokens):
        return None  # one draw read through two layouts (x + x.t()): not independent draws
    sizes = [tuple(int(s) for s in o.shape) for o in operands if isinstance(o, torch.Tensor)]
    drawn = [r.has_draw for r in present]
    if any(d and size != shape for d, size in zip(drawn, sizes, strict=True)):
        return None
    return recipe


def _op_distribution(
    op: str,
    operands: Sequence[Any],
    states: Sequence[DefaultInit],
    ints: tuple[int, ...],
    recipe: Recipe | None,
) -> Distribution:
    """What an op's result follows: a constant or deterministic from such operands; a
    closed form of one operand's family (affine maps, erfinv of a uniform, a clamp that cuts
    nothing); derived when its recipe has draws; custom otherwise."""
    dists = [s.distribution for s in states]
    families = {d.family for d in dists}
    if families <= {Family.CONSTANT, Family.DETERMINISTIC}:
        if families == {Family.CONSTANT}:
            values = iter(d.value for d in dists)
            folded = [next(values) if isinstance(o, torch.Tensor) else o for o in operands]
            value = constant_fold(op, folded, ints)
            if value is not None:
                return Distribution.constant(value)
        return Distribution.deterministic()
    if len(dists) == 1 and (known := closed_form(op, operands, dists[0])) is not None:
        return known
    if recipe is not None and recipe.has_draw:
        return Distribution.derived()
    return _CUSTOM


def _deterministic_root(
    name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], shape: tuple[int, ...]
) -> Recipe | None:
    """The root step for ``arange``/``linspace``/``logspace``/``eye``/``tensor`` called with
    plain numbers (a tensor argument, or more than MAX_VALUES numbers: None)."""
    extra = set(kwargs) - _FACTORY_KWARGS
    if name in ("tensor", "as_tensor"):
        data = args[0] if args else kwargs.get("data")
        values = _flat_numbers(data)
        if values is None or len(args) > 1 or extra - {"data"}:
            return None
        return Recipe.root(Step("values", tuple(values), shape))
    numbers = [as_number(a) for a in args]
    if None in numbers:
        return None
    floats = [n for n in numbers if n is not None]
    named = {k: as_number(v) for k, v in kwargs.items() if k not in _FACTORY_KWARGS}
    if None in named.values():
        return None
    if name == "arange" and not extra - {"start", "end", "step"} and len(floats) <= 3:
        # arange(end), arange(start, end), arange(start, end, step), or by keyword
        keys: tuple[str, ...] = ("end",) if len(floats) == 1 else ("start", "end", "step")
        given = {**dict(zip(keys, floats, strict=False)), **named}
        end = given.get("end")
        if end is None:
            return None
        start, step = given.get("start", 0.0), given.get("step", 1.0)
        return Recipe.root(Step("arange", (start, end, step), shape))
    if name in ("linspace", "logspace") and not extra - {"start", "end", "steps", "base"}:
        keys = ("start", "end", "steps", "base")
        given = {**dict(zip(keys, floats, strict=False)), **named}
        steps = given.get("steps")
        if "start" not in given or "end" not in given or steps is None or steps != int(steps):
            return None
        first = (given["start"], given["end"])
        step_args = first if name == "linspace" else (*first, given.get("base", 10.0))
        return Recipe.root(Step(name, step_args, shape, (int(steps),)))
    if name == "eye" and not extra - {"n", "m"} and len(shape) == 2:
        return Recipe.root(Step("eye", (), shape, shape))
    return None


# Keyword arguments of factories that say where and how values are stored, not which.
_FACTORY_KWARGS = frozenset(
    {"dtype", "device", "requires_grad", "layout", "pin_memory", "memory_format"}
)


def _flat_numbers(data: Any) -> list[float] | None:
    """The numbers of nested lists/tuples (or one number), at most MAX_VALUES; None for
    anything else (tensors, arrays, bools)."""
    out: list[float] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(reversed(item))
            continue
        value = as_number(item)
        if value is None or len(out) >= MAX_VALUES:
            return None
        out.append(value)
    return out


def _inside_deepcopy(depth: int = 12) -> bool:
    """Whether a ``__deepcopy__`` is on the recent stack: Parameter.__deepcopy__ copies with
    ``clone``, and the user should read "deepcopy" (nn.TransformerEncoder's layer copies).
    From the clone up to Parameter.__deepcopy__ are about six frames (this function, the
    tracer's, torch's dispatch); twelve leaves room without walking the whole stack."""
    frame: types.FrameType | None = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_code.co_name == "__deepcopy__":
            return True
        frame = frame.f_back
    return False


# Ops that move or repeat values: a constant stays that constant.
_SHAPE_OPS = {
    "repeat", "expand", "tile", "reshape", "view", "flatten", "unsqueeze", "squeeze",
    "transpose", "permute", "t", "flip", "float", "double",
}  # fmt: skip
# Ops that give a view when they can and copy when they must: a copy is the same values in
# another shape.
_RESHAPES = {"reshape", "flatten", "view_as", "reshape_as", "ravel"}
# Ops that move draws around: the result's values are no longer independent draws.
