"""Build the per-parameter report: names, types, shapes, fans, traced defaults and statistics.

Only data lives here; :mod:`initscope.render.report` turns a :class:`Report` into text.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from initscope import __version__
from initscope.errors import CheckpointError, TargetError
from initscope.io.checkpoints import Checkpoint, TensorInfo
from initscope.io.keys import model_keys
from initscope.io.models import TracedModel, open_target
from initscope.io.targets import TargetOptions
from initscope.io.yamlio import did_you_mean
from initscope.knowledge.identification import (
    Fit,
    Query,
    Structure,
    identify_many,
    structure_for,
)
from initscope.knowledge.tracing import DefaultInit, fans
from initscope.measure.pipeline import Measured, Readable, checkpoint_source, measure
from initscope.naming import dtype_name, split_name
from initscope.parallel.distributed import Group
from initscope.parallel.workers import Batched, ProgressFn, spread
from initscope.stats.tensor import DEFAULT_MAX_MEMORY, TensorStats

__all__ = [
    "ParameterReport",
    "Report",
    "ReportOptions",
    "build_report",
    "report_checkpoint",
    "report_model",
]

SCHEMA = "initscope.report/1"


@dataclass(frozen=True)
class ParameterReport:
    """Everything initscope knows about one parameter (or buffer)."""

    name: str
    module: str
    module_type: str | None
    param: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    fan_in: int | None
    fan_out: int | None
    tied_to: tuple[str, ...]
    default: DefaultInit | None
    stats: TensorStats | None
    is_buffer: bool = False
    fit: Fit | None = None  # what the values follow (None on the meta device)
    matches_default: bool | None = None  # null: no known default, or too few values
    # The bounded sample the identification used (float64, flat-position order; every value
    # for tensors up to SAMPLE_SIZE elements): what histograms are drawn from (None without
    # ReportOptions.samples, or on the meta device). Not rendered in JSON and not compared,
    # so reports from 1 or N processes stay equal.
    sample: torch.Tensor | None = field(default=None, compare=False, repr=False)
    # The structured tests' result on the tensor itself (orthogonal rows, row independence):
    # what a later judgement against another expectation needs besides the sample.
    structure: Structure | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ReportSummary:
    """Counts over a report. ``with_default``: parameters whose traced default is a known
    distribution; ``custom_default``: parameters built by the model whose values came from
    calls that name no distribution (``untraced``, ``empty``, arbitrary in-place ops)."""

    parameters: int
    numel: int
    buffers: int
    with_default: int
    custom_default: int
    at_default: int = 0  # matches_default is true
    differ: int = 0  # matches_default is false
    inconclusive: int = 0  # a known default, but too few values to tell


@dataclass(frozen=True)
class Report:
    """A model's (or checkpoint's) parameters, grouped by module in ``named_modules()`` order."""

    target: str
    parameters: tuple[ParameterReport, ...]
    has_model: bool = True
    initscope_version: str = __version__
    torch_version: str = torch.__version__

    def summary(self) -> ReportSummary:
        params = [p for p in self.parameters if not p.is_buffer]
        known = sum(1 for p in params if p.default is not None and p.default.is_known)
        with_any = sum(1 for p in params if p.default is not None)
        return ReportSummary(
            parameters=len(params),
            numel=sum(p.numel for p in params),
            buffers=len(self.parameters) - len(params),
            with_default=known,
            custom_default=with_any - known,
            at_default=sum(1 for p in params if p.matches_default is True),
            differ=sum(1 for p in params if p.matches_default is False),
            inconclusive=sum(
                1
                for p in params
                if p.matches_default is None
                and p.fit is not None
                and p.default is not None
                and p.default.is_known
            ),
        )


@dataclass(frozen=True)
class ReportOptions:
    """What to include: buffers, filters by module type and by name glob, and the samples;
    how to read: the memory budget, processes and ranks."""

    buffers: bool = False
    types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    # A tensor larger than this is read from a checkpoint in blocks of rows (the structured
    # tests, orthogonal and row independence, are then skipped for it).
    max_memory: int = DEFAULT_MAX_MEMORY
    workers: int | None = None  # processes for the statistics; None: one per core when worth it
    group: Group | None = None  # with --distributed: this rank's place in the torchrun job
    # Keep each parameter's sample (ParameterReport.sample: what --hist, --html and plot
    # draw). Without, samples stay where they were measured: 32 KiB a tensor that workers
    # would pickle back (a third of a 3,088-tensor report's time in two workers).
    samples: bool = True


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def class_names(cls: type) -> set[str]:
    """What ``--type`` may call a module of class ``cls``: the name or dotted path of the
    class or of any base class (so subclasses match)."""
    return {c.__name__ for c in cls.__mro__} | {_qualname(c) for c in cls.__mro__}


def _type_matches(module: torch.nn.Module | None, types: Sequence[str]) -> bool:
    if not types:
        return True
    if module is None:
        return False
    return any(t in class_names(type(module)) for t in types)


def name_matches(name: str, module: str, globs: Sequence[str]) -> bool:
    return not globs or any(
        fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(module, g) for g in globs
    )


def _selected(name: str, module: torch.nn.Module | None, options: ReportOptions) -> bool:
    return _type_matches(module, options.types) and name_matches(
        name, split_name(name)[0], options.names
    )


def _tensor_fans(shape: tuple[int, ...]) -> tuple[int | None, int | None]:
    f = fans(shape)
    return (None, None) if f is None else f


@dataclass(frozen=True)
class _Entry:
    """One parameter to report: its name, module, and what the model says of it."""

    name: str
    module: torch.nn.Module | None
    tied_to: tuple[str, ...]
    default: DefaultInit | None
    is_buffer: bool = False


def _parameters(
    ids: Sequence[int],
    entry: Callable[[int], _Entry],
    source: Callable[[int], Readable],
    options: ReportOptions,
) -> list[ParameterReport]:
    """The reports of entries ``ids``: each tensor read (``source``, at the moment it is
    measured, so that one tensor's values at most are in memory), then all of them
    identified together (:func:`identify_many`: their samples sorted in one call)."""
    max_memory = options.max_memory
    entries = [entry(i) for i in ids]
    measured: list[tuple[Measured, TensorStats | None, torch.Tensor | None]] = []
    queries = []
    for i, e in zip(ids, entries, strict=True):
        m = measure(e.name, source(i), max_memory=max_memory)
        if m.stats is None:  # no values (the meta device)
            measured.append((m, None, None))
            continue
        s, sample = m.stats.result(), m.stats.sample()
        structure = m.structure
        if structure is None and m.values is not None:
            # from the values now: they are not kept while the others are read
            structure = structure_for(s, m.values)
        queries.append(Query(s, sample, m.shape, e.default, structure, m.dtype))
        measured.append((m if m.values is None else replace(m, values=None), s, sample))
        del m  # the values go before the next tensor is read
    found = iter(identify_many(queries))
    out = []
    for e, (m, result, kept) in zip(entries, measured, strict=True):
        ident = next(found) if result is not None else None
        module_path, param = split_name(e.name)
        f_in, f_out = _tensor_fans(m.shape)
        out.append(
            ParameterReport(
                name=e.name,
                module=module_path,
                module_type=_qualname(type(e.module)) if e.module is not None else None,
                param=param,
                shape=m.shape,
                dtype=dtype_name(m.dtype),
                numel=m.numel,
                fan_in=f_in,
                fan_out=f_out,
                tied_to=e.tied_to,
                default=e.default,
                stats=result,
                is_buffer=e.is_buffer,
                fit=ident.fit if ident else None,
                matches_default=ident.matches_default if ident else None,
                sample=kept if options.samples else None,
                structure=ident.structure if ident else None,
            )
        )
    return out


def _check_types(model: torch.nn.Module, types: Sequence[str]) -> None:
    """A --type that names no class of any module is a typo, not an empty selection."""
    known: set[str] = set()
    for m in model.modules():
        for c in type(m).__mro__:
            known |= {c.__name__, _qualname(c)}
    for t in types:
        if t not in known:
            raise TargetError(
                f"--type {t} matches no module class in the model{did_you_mean(t, known)}",
                "give a class name (subclasses match) such as Conv2d or Linear",
            )


def report_model(
    traced: TracedModel,
    *,
    target: str,
    options: ReportOptions = ReportOptions(),
    checkpoint: Checkpoint | None = None,
    progress: ProgressFn | None = None,
) -> Report:
    """Report a constructed model; with ``checkpoint``, statistics come from its tensors."""
    model = traced.model
    _check_types(model, options.types)
    modules = dict(model.named_modules(remove_duplicate=False))
    order: dict[str, int] = {}
    for i, path in enumerate(modules):
        order.setdefault(path, i)
    keys = fitted_keys(model, checkpoint) if checkpoint is not None else {}
    stored = checkpoint_source(checkpoint, keys) if checkpoint is not None else None
    # Tied tensors appear once, under their first name, listing the others in tied_to.
    first_name: dict[int, str] = {}
    tied: dict[str, list[str]] = {}
    entries: list[tuple[str, torch.Tensor, bool]] = []
    named: list[tuple[str, torch.Tensor, bool]] = [
        (n, p, False) for n, p in model.named_parameters(remove_duplicate=False)
    ]
    if options.buffers:
        named += [(n, b, True) for n, b in model.named_buffers(remove_duplicate=False)]
    for name, t, is_buffer in named:
        if id(t) in first_name:
            tied[first_name[id(t)]].append(name)
            continue
        first_name[id(t)] = name
        tied[name] = []
        if _selected(name, modules.get(split_name(name)[0]), options):
            entries.append((name, t, is_buffer))
    # Grouped by module, in named_modules() order; a module's buffers after its parameters.
    entries.sort(key=lambda e: (order.get(split_name(e[0])[0], len(order)), e[2]))

    def entry(i: int) -> _Entry:
        name, _, is_buffer = entries[i]
        module = modules.get(split_name(name)[0])
        return _Entry(name, module, tuple(tied[name]), traced.defaults.get(name), is_buffer)

    def source(i: int) -> Readable:
        name, t, _ = entries[i]
        if stored is not None and name in keys:
            return stored.readable(name, options.max_memory, False)
        return t

    # What each entry reads: nothing for a tensor on the meta device (no values).
    read = [
        (checkpoint.infos[keys[n]].numel, checkpoint.infos[keys[n]].dtype.itemsize)
        if checkpoint is not None and n in keys
        else (0 if t.device.type == "meta" else t.numel(), t.dtype.itemsize)
        for n, t, _ in entries
    ]
    out = spread(
        Batched(lambda ids: _parameters(ids, entry, source, options)),
        [n for n, _ in read],
        workers=options.workers,
        max_memory=options.max_memory,
        group=options.group,
        nbytes=[n * width for n, width in read],
        progress=progress,
    )
    return Report(target=target, parameters=tuple(out))


def fitted_keys(model: torch.nn.Module, checkpoint: Checkpoint) -> dict[str, str]:
    """The checkpoint key of each of the model's state-dict names, once the checkpoint is
    known to fit the model (names and shapes; a CheckpointError says what does not)."""
    keys = model_keys(model, checkpoint)
    _check_fits(model, {n: checkpoint.infos[k] for n, k in keys.items()}, checkpoint.path)
    return keys


def _check_fits(model: torch.nn.Module, have: Mapping[str, TensorInfo], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    # A tied tensor may be saved under only one of its names (transformers drops lm_head).
    storage_names: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        storage_names.setdefault(id(p), []).append(n)
    alias_groups = [set(g) for g in storage_names.values() if len(g) > 1]
    missing = [
        k
        for k in expected
        if k not in have and not any(k in g and g & have.keys() for g in alias_groups)
    ]
    unexpected = [k for k in have if k not in expected]
    wrong = [
        f"{k} {list(have[k].shape)} vs model {list(s)}"
        for k, s in expected.items()
        if k in have and have[k].shape != s
    ]
    problems: list[str] = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
        if items:
            shown = ", ".join(items[:3])
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label} ({shown}{more})")
    if problems:
        raise CheckpointError(
            f"{path} does not fit the model: {'; '.join(problems)}",
            "check that --model/--spec and its arguments match the checkpoint's architecture",
        )


def report_checkpoint(
    ckpt: Checkpoint,
    *,
    target: str,
    options: ReportOptions = ReportOptions(),
    progress: ProgressFn | None = None,
) -> Report:
    """A stats-only report of a checkpoint's tensors, keyed by state-dict names."""
    if ckpt.module is None and options.types:
        raise TargetError(
            "--type needs module types, which a bare checkpoint does not have",
            "pass --model pkg.module:Class (with --arg) or --spec spec.yaml",
        )
    modules: dict[str, torch.nn.Module] = {}
    if ckpt.module is not None:
        _check_types(ckpt.module, options.types)
        modules = dict(ckpt.module.named_modules())
    keys = model_keys(ckpt.module, ckpt) if ckpt.module is not None else ckpt.keyed()
    name_of = {k: n for n, k in keys.items()}
    tied: dict[str, list[str]] = {}
    for alias, first in ckpt.aliases.items():
        tied.setdefault(name_of[first], []).append(name_of[alias])
    selected = [
        name
        for name, key in keys.items()
        if key not in ckpt.aliases and _selected(name, modules.get(split_name(name)[0]), options)
    ]

    stored = checkpoint_source(ckpt, keys)

    def entry(i: int) -> _Entry:
        name = selected[i]
        return _Entry(name, modules.get(split_name(name)[0]), tuple(tied.get(name, ())), None)

    def source(i: int) -> Readable:
        return stored.readable(selected[i], options.max_memory, False)

    infos = [ckpt.infos[keys[n]] for n in selected]
    out = spread(
        Batched(lambda ids: _parameters(ids, entry, source, options)),
        [i.numel for i in infos],
        workers=options.workers,
        max_memory=options.max_memory,
        group=options.group,
        nbytes=[i.numel * i.dtype.itemsize for i in infos],
        progress=progress,
    )
    return Report(target=target, parameters=tuple(out), has_model=ckpt.module is not None)


def build_report(
    target: str,
    how: TargetOptions = TargetOptions(),
    options: ReportOptions = ReportOptions(),
    progress: ProgressFn | None = None,
) -> Report:
    """The report for TARGET as the CLI understands it (see README, "Targets")."""
    with open_target(target, how) as (traced, ckpt):
        if traced is None:
            assert ckpt is not None
            return report_checkpoint(ckpt, target=target, options=options, progress=progress)
        return report_model(
            traced, target=target, options=options, checkpoint=ckpt, progress=progress
        )
