"""The options the commands share, declared once: typed aliases for each, and the TARGET
options as one :class:`TargetArgs` (the :func:`target_options` decorator)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from initscope.io.parsing import constructor_kwargs, parse_shape, parse_size

if TYPE_CHECKING:
    from initscope.io.targets import TargetOptions
    from initscope.parallel.distributed import Group

__all__ = [
    "MAX_SEED",
    "AgainstOpt",
    "AllowOutsideOpt",
    "ArgOpt",
    "ArgsFileOpt",
    "BuffersOpt",
    "DebugOpt",
    "DistributedOpt",
    "InputShapeOpt",
    "KeyOpt",
    "MaxMemoryOpt",
    "ModelOpt",
    "NameOpt",
    "QuietOpt",
    "RulesOpt",
    "RunArgs",
    "SeedOpt",
    "SpecOpt",
    "StrictOpt",
    "TargetArgs",
    "TypeOpt",
    "UnmatchedOpt",
    "UnmatchedOptT",
    "UnsafeOpt",
    "VarOpt",
    "WorkersOpt",
    "complete_signatures",
    "format_option",
    "shared_options",
    "target_options",
]

DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")]
ArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--arg",
        "-a",
        help="Constructor argument name=value (value read as YAML: 3, [3,5], false). Repeatable.",
    ),
]
ArgsFileOpt = Annotated[
    Path | None,
    typer.Option("--args-file", help="YAML mapping of constructor arguments."),
]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="Shape of a random input, e.g. 1,3,64,64, to materialize Lazy modules.",
    ),
]
# torch.manual_seed takes at most 64 bits; 2**63 - 1 keeps it a signed int64.
MAX_SEED = 2**63 - 1
SeedOpt = Annotated[
    int,
    typer.Option("--seed", min=0, max=MAX_SEED, help="Seed for constructing the model."),
]


MaxMemoryOpt = Annotated[
    str,
    typer.Option(
        "--max-memory",
        help="Largest tensor read whole (e.g. 2GiB, 512MB); a larger one is read in blocks "
        "of rows.",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Processes for the statistics (default: one per core when the work is large "
        "enough, as many as --max-memory holds).",
    ),
]
DistributedOpt = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="Spread the tensors over the ranks of a torchrun job (gloo); rank 0 prints.",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar on stderr.")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="pkg.module:Class to load a checkpoint TARGET into."),
]
SpecOpt = Annotated[
    Path | None,
    typer.Option("--spec", help="YAML spec of the model to load a checkpoint TARGET into."),
]
UnsafeOpt = Annotated[
    bool,
    typer.Option(
        "--unsafe-load",
        help="Allow loading pickled objects (runs code from the file; only for trusted files).",
    ),
]
AllowOutsideOpt = Annotated[
    bool,
    typer.Option(
        "--allow-outside",
        help="Let a shard index name files outside its own folder (absolute paths, '..', "
        "symlinks leaving it).",
    ),
]

RevisionOpt = Annotated[
    str | None,
    typer.Option(
        "--revision",
        help="For a Hugging Face id TARGET (ORG/NAME, read from the local cache, never "
        "downloaded): the branch, tag or commit to read (default main).",
    ),
]


def format_option(command: str, help: str) -> Any:
    """``--format``: the one Format enum, shown with the formats ``command`` writes."""
    from initscope.render.common import FORMATS, Format

    names = [f.value for f in FORMATS[command]]
    if command == "check":  # check calls its table "text"
        names[0] = Format.TEXT.value
    return typer.Option("--format", "-f", metavar=f"<{'|'.join(names)}>", help=help)


KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="The entry of a .pt/.pth/.bin/.ckpt file that holds the state dict, as a dotted "
        "path (e.g. model.weights), where it is not under state_dict, model, state, ....",
    ),
]
TypeOpt = Annotated[
    list[str] | None,
    typer.Option("--type", help="Only modules of this class (subclasses match). Repeatable."),
]
NameOpt = Annotated[
    list[str] | None,
    typer.Option("--name", help="Only parameters whose name or module matches this glob."),
]
BuffersOpt = Annotated[bool, typer.Option("--buffers", help="Include buffers.")]
AgainstOpt = Annotated[
    str,
    typer.Option(
        "--against",
        help="What the panels compare each parameter with: 'default' (its traced default) or "
        "a rules file / preset name (the distribution its rule resolves to, as check --rules).",
    ),
]


@dataclass(frozen=True)
class TargetArgs:
    """The options every command that reads a TARGET shares (declared once, in
    :func:`target_options`), as the command receives them."""

    arg: list[str] | None = None
    args_file: Path | None = None
    model: str | None = None
    spec: Path | None = None
    input_shape: str | None = None
    unsafe_load: bool = False
    allow_outside: bool = False
    key: str | None = None
    revision: str | None = None

    def check_output(self, output: Path, *inputs: object) -> None:
        """:func:`initscope.io.targets.check_output` for an output of a command that reads
        ``inputs`` with these options: none of them, nor the spec or args file, nor a hub
        id's snapshot files at ``--revision``, may be the output."""
        from initscope.io.targets import check_output

        check_output(output, *inputs, self.spec, self.args_file, revision=self.revision)

    def how(
        self, *, seed: int = 0, meta: bool = False, max_memory: int | None = None
    ) -> TargetOptions:
        """How to read TARGET: the library's TargetOptions for these options."""
        from initscope.io.targets import TargetOptions

        return TargetOptions(
            kwargs=constructor_kwargs(self.arg, self.args_file),
            model=self.model,
            spec=self.spec,
            input_shape=parse_shape(self.input_shape),
            unsafe_load=self.unsafe_load,
            seed=seed,
            meta=meta,
            allow_outside=self.allow_outside,
            key=self.key,
            revision=self.revision,
            **({"max_memory": max_memory} if max_memory is not None else {}),
        )

    def pair(self, a: str, b: str, *, seed: int, max_memory: int) -> tuple[TargetOptions, ...]:
        """How ``diff`` reads A and B: ``--model``/``--spec`` describe checkpoints (and with
        neither, a bare checkpoint takes no ``--arg``); a model target needs only its
        ``--arg`` and ``--input-shape``."""
        from initscope.io.targets import TargetOptions, is_checkpoint_path, is_hub_target

        how = self.how(seed=seed, max_memory=max_memory)
        plain = TargetOptions(
            kwargs=how.kwargs, input_shape=how.input_shape, seed=seed, revision=self.revision
        )
        if self.model is None and self.spec is None:
            how = TargetOptions(
                unsafe_load=self.unsafe_load,
                allow_outside=self.allow_outside,
                key=self.key,
                max_memory=max_memory,
                revision=self.revision,
            )
        hub = [is_hub_target(t) for t in (a, b)]
        if any(hub):  # --revision picks the revision of the Hugging Face ids among A and B
            return tuple(
                how if h else replace(how if is_checkpoint_path(t) else plain, revision=None)
                for t, h in zip((a, b), hub, strict=True)
            )
        return tuple(how if is_checkpoint_path(t) else plain for t in (a, b))


@dataclass(frozen=True)
class RunArgs:
    """How a command that measures every tensor spreads and shows its work (declared once,
    in :func:`run_options`)."""

    max_memory: str = "2GiB"
    workers: int | None = None
    distributed: bool = False
    quiet: bool = False

    @property
    def memory(self) -> int:
        """``--max-memory`` in bytes (a usage error when it is not a size)."""
        return parse_size(self.max_memory)

    def group(self) -> Group | None:
        """With ``--distributed``, this process's place in the torchrun job (joining it)."""
        if not self.distributed:
            return None
        from initscope.parallel.distributed import init_from_env

        return init_from_env()


# Each group of shared options: the parameter that receives it, its class, and each option's
# parameter name, annotation and default, as the commands' signatures list them.
_GROUPS: dict[str, tuple[type, tuple[tuple[str, object, object], ...]]] = {
    "targets": (
        TargetArgs,
        (
            ("arg", ArgOpt, None),
            ("args_file", ArgsFileOpt, None),
            ("model", ModelOpt, None),
            ("spec", SpecOpt, None),
            ("input_shape", InputShapeOpt, None),
            ("unsafe_load", UnsafeOpt, False),
            ("allow_outside", AllowOutsideOpt, False),
            ("key", KeyOpt, None),
            ("revision", RevisionOpt, None),
        ),
    ),
    "run": (
        RunArgs,
        (
            ("max_memory", MaxMemoryOpt, "2GiB"),
            ("workers", WorkersOpt, None),
            ("distributed", DistributedOpt, False),
            ("quiet", QuietOpt, False),
        ),
    ),
}


def shared_options(*groups: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Add the options of ``groups`` ("targets", "run") to a command's command-line signature
    and hand each group to it as one argument (``targets: TargetArgs``, ``run: RunArgs``),
    as sqlfluff's ``common_options`` does for click: the commands declare them once, here.
    The signature typer reads is completed by :func:`complete_signatures`, once every
    command module is imported."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def run(*args: object, **kwargs: object) -> None:
            for group in groups:
                cls, options = _GROUPS[group]
                kwargs[group] = cls(**{n: kwargs.pop(n) for n, _, _ in options if n in kwargs})
            command(*args, **kwargs)

        _PENDING.append((run, command, groups))
        return run

    return decorate


target_options = shared_options("targets")
_PENDING: list[tuple[Callable[..., None], Callable[..., None], tuple[str, ...]]] = []


def complete_signatures() -> None:
    """Give each :func:`shared_options` command the signature typer reads: its own
    options, then the shared ones, then ``--debug``."""
    for run, command, groups in _PENDING:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name not in groups]
        shared = [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind
            )
            for group in groups
            for name, kind, default in _GROUPS[group][1]
        ]
        params = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.default is not p.empty else p
            for p in [*(p for p in own if p.name != "debug"), *shared]
        ] + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name == "debug"]
        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {**{p.name: p.annotation for p in params}, "return": None}
    _PENDING.clear()


class UnmatchedOpt(str, Enum):
    KEEP = "keep"
    ERROR = "error"
    DEFAULT = "default"


RulesOpt = Annotated[
    str,
    typer.Option(
        "--rules",
        "-r",
        help="Rules file (.yaml), or a preset name: xavier, kaiming, gpt2, ... "
        "(see 'initscope rules presets').",
    ),
]
VarOpt = Annotated[
    list[str] | None,
    typer.Option("--var", help="Set a rules var, name=number (overrides vars:). Repeatable."),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Fail (exit 2, nothing written) when a rule matches nothing or a parameter "
        "is covered by no rule.",
    ),
]
UnmatchedOptT = Annotated[
    UnmatchedOpt | None,
    typer.Option(
        "--unmatched",
        help="What to do with parameters no rule matches (overrides the file's unmatched:).",
    ),
]
