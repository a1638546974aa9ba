"""The ``initscope`` command line: parse, call the library, render, map errors to exit codes.

Nothing here computes anything. Library modules are imported inside the commands so that
``--help`` and argument errors do not pay for importing torch.
"""

from __future__ import annotations

import functools
import inspect
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout, suppress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from initscope import __version__
from initscope.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VIOLATIONS,
    InitScopeError,
)
from initscope.render.text import TABLE_WIDTH, OutputFormat, escape_text

if TYPE_CHECKING:
    from initscope.io.targets import TargetOptions
    from initscope.parallel.distributed import Group
    from initscope.parallel.workers import Advance, ProgressFn
    from initscope.rules.language import RuleSet

# A run shorter than this shows no progress bar at all (a bar that flashes is noise).
PROGRESS_AFTER = 0.5

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Inspect, explain and check how a PyTorch model's parameters are initialized.",
)


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

    def how(
        self, *, seed: int = 0, meta: bool = False, max_memory: int | None = None
    ) -> TargetOptions:
        """How to read TARGET: the library's TargetOptions for these options."""
        return _how(
            self.arg,
            self.args_file,
            self.model,
            self.spec,
            self.input_shape,
            self.unsafe_load,
            seed=seed,
            meta=meta,
            allow_outside=self.allow_outside,
            max_memory=max_memory,
        )


# Each shared option: its parameter name and annotation, as the commands' signatures list it.
_TARGET_OPTIONS: tuple[tuple[str, object, object], ...] = (
    ("arg", ArgOpt, None),
    ("args_file", ArgsFileOpt, None),
    ("model", ModelOpt, None),
    ("spec", SpecOpt, None),
    ("input_shape", InputShapeOpt, None),
    ("unsafe_load", UnsafeOpt, False),
    ("allow_outside", AllowOutsideOpt, False),
)


def target_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the shared TARGET options to ``command``'s command-line signature and hand them
    to it as one ``targets: TargetArgs`` argument (as sqlfluff's ``common_options`` does for
    click): the commands declare them once, here. The signature typer reads is completed at
    the end of this module, once every option alias it names is defined."""
    names = [name for name, _, _ in _TARGET_OPTIONS]

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> None:
        shared = {name: kwargs.pop(name) for name in names if name in kwargs}
        command(*args, targets=TargetArgs(**shared), **kwargs)  # type: ignore[arg-type]

    _PENDING.append((run, command))
    return run


_PENDING: list[tuple[Callable[..., None], Callable[..., None]]] = []


def _complete_signatures() -> None:
    """Give each :func:`target_options` command the signature typer reads: its own
    options, then the shared ones, then ``--debug``."""
    for run, command in _PENDING:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "targets"]
        shared = [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind
            )
            for name, kind, default in _TARGET_OPTIONS
        ]
        params = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.default is not p.empty else p
            for p in [*(p for p in own if p.name != "debug"), *shared]
        ] + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name == "debug"]
        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {**{p.name: p.annotation for p in params}, "return": None}
    _PENDING.clear()


def _version(value: bool) -> None:
    if value:
        # native, not fused: it names the statistics path without importing torch
        from initscope.stats.native import describe

        typer.echo(f"initscope {__version__}")
        typer.echo(f"statistics: {describe()}")
        raise typer.Exit()


@app.callback()
def _main(
    # Read back by each command through the click context (see _boundary), so
    # `initscope --debug report X` and `initscope report X --debug` both work.
    debug: DebugOpt = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and which code computes statistics.",
        ),
    ] = False,
) -> None:
    """Inspect, explain and check how a PyTorch model's parameters are initialized."""


def _debug(ctx: typer.Context, debug: bool) -> bool:
    return debug or bool(ctx.find_root().params.get("debug"))


@contextmanager
def _boundary(debug: bool) -> Iterator[None]:
    """Turn library exceptions into one line on stderr and an exit code. While the library
    runs, stdout goes to stderr: a model that prints while it is built must not corrupt
    ``--format json`` output, which is written after this block."""
    try:
        with redirect_stdout(sys.stderr), _warnings_to_stderr():
            yield
    except InitScopeError as exc:
        if debug:
            traceback.print_exc()
        for text in exc.lines():
            sys.stderr.write(f"initscope: error: {escape_text(text)}\n")
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        sys.stderr.write("initscope: interrupted\n")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.Abort, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        # Exception, and what libraries raise outside it: torch.distributed.checkpoint's
        # CheckpointException derives from BaseException.
        if debug:
            traceback.print_exc()
        msg = escape_text(" ".join(str(exc).split())[:300])
        sys.stderr.write(
            f"initscope: internal error: {type(exc).__name__}: {msg}; "
            "rerun with --debug for the traceback and report it\n"
        )
        raise typer.Exit(EXIT_INTERNAL) from None


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """The library's InitScopeWarnings as ``initscope: warning: ...`` lines; other warnings
    keep Python's usual display."""
    import warnings

    from initscope.errors import InitScopeWarning

    original = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: object, **kw: object) -> None:
        if issubclass(category, InitScopeWarning):
            sys.stderr.write(f"initscope: warning: {escape_text(str(message))}\n")
        else:  # a library's warning can quote a name from a file too
            original(escape_text(str(message)), category, *args, **kw)  # type: ignore[arg-type]

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def _warn(lines: list[str]) -> None:
    for text in lines:
        sys.stderr.write(f"initscope: warning: {escape_text(text)}\n")


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    parts = re.split(r"[,x×]", text.strip())
    shape = tuple(int(p) for p in parts if p.strip().isdigit())
    if len(shape) != len(parts) or any(s <= 0 for s in shape):
        raise InitScopeError(
            f"--input-shape {text!r} is not a shape", "write positive integers: 1,3,64,64"
        )
    return shape


def _constructor_kwargs(arg: list[str] | None, args_file: Path | None) -> dict[str, object]:
    from initscope.io.targets import load_args_file, parse_args

    kwargs = load_args_file(args_file) if args_file else {}
    kwargs.update(parse_args(arg or ()))
    return kwargs


def _writable_output(output: Path, *inputs: object) -> None:
    """Check an output can be written (see output.check_writable) and refuse one that names
    one of the command's own input files."""
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
    refuse_input_files(output, _files_read(inputs))


def _files_read(inputs: tuple[object, ...]) -> list[Path]:
    """The files behind the inputs, which an output must not replace either: a spec's
    ``checkpoint:``, and the shards, index and DCP storage files behind a folder or an
    index. A folder that cannot be opened as a checkpoint lists its checkpoint-like files:
    the command will report the problem itself."""
    from initscope.io.checkpoints import CHECKPOINT_SUFFIXES, checkpoint_files
    from initscope.io.targets import is_spec_path, load_spec

    paths: list[Path] = []
    for item in inputs:
        if item is None:
            continue
        paths.append(Path(str(item)))
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


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10}
_UNITS |= {"m": 2**20, "g": 2**30, "t": 2**40}


def _parse_size(text: str) -> int:
    """``2GiB`` → 2147483648; ``512MB``, ``1.5G``, ``4096`` (bytes) too."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise InitScopeError(
            f"--max-memory {text!r} is not a size", "write e.g. 2GiB, 512MB or 1.5G"
        )
    return max(1, int(float(match.group(1)) * _UNITS[unit]))


def _how(
    arg: list[str] | None,
    args_file: Path | None,
    model: str | None,
    spec: Path | None,
    input_shape: str | None,
    unsafe_load: bool,
    *,
    seed: int = 0,
    meta: bool = False,
    allow_outside: bool = False,
    max_memory: int | None = None,
) -> TargetOptions:
    """How to read TARGET, from the options every target-taking command shares."""
    from initscope.io.targets import TargetOptions

    return TargetOptions(
        kwargs=_constructor_kwargs(arg, args_file),
        model=model,
        spec=spec,
        input_shape=_parse_shape(input_shape),
        unsafe_load=unsafe_load,
        seed=seed,
        meta=meta,
        allow_outside=allow_outside,
        **({"max_memory": max_memory} if max_memory is not None else {}),
    )


def _width() -> int:
    if sys.stdout.isatty():
        return shutil.get_terminal_size((TABLE_WIDTH, 24)).columns
    return TABLE_WIDTH


@contextmanager
def _progress(enabled: bool, what: str = "statistics") -> Iterator[ProgressFn | None]:
    """A transient rich progress bar on stderr (bytes and tensors, rate and ETA), only when
    stderr is a terminal, and only once the work has run for PROGRESS_AFTER seconds: a quick
    run prints nothing."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn(what),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[tensors]} tensors"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    start = time.monotonic()
    task: TaskID | None = None

    def update(at: Advance) -> None:
        nonlocal task
        if task is None:
            if time.monotonic() - start < PROGRESS_AFTER or at.done_bytes >= at.total_bytes:
                return
            bar.start()
            # The bar's rate and ETA count from here; what was done before shows at once.
            task = bar.add_task(what, total=at.total_bytes, completed=at.done_bytes, tensors="")
        tensors = f"{at.done_tensors}/{at.total_tensors}"
        bar.update(task, completed=at.done_bytes, total=at.total_bytes, tensors=tensors)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


def _leads(group: Group | None) -> bool:
    """Whether this process speaks: always alone; under torchrun, rank 0 only (the ranks
    share the terminal, so their progress bars and outputs would interleave)."""
    return group is None or group.leader


def _emit(text: str, output: Path | None, debug: bool) -> None:
    """Write a rendered result. Renderers escape the names they print; this is the net for
    anything else from a file that reached the text (no control character passes)."""
    text = escape_text(text, keep="\n\t")
    if output is None:
        sys.stdout.write(text)
        return
    with _boundary(debug):
        from initscope.io.output import atomic_write

        with atomic_write(output) as fh:
            fh.write(text)


def _against_rules(against: str, var: list[str] | None) -> RuleSet | None:
    """``--against``: None for the traced default, else the rules file (its errors with
    file:line, as the rules loader gives them)."""
    if against == "default":
        return None
    from initscope.rules.language import load_rules, nothing_was

    with nothing_was("drawn"):
        return load_rules(against, _parse_vars(var))


@app.command()
@target_options
def report(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="pkg.module:Class (with --arg), a .yaml spec, or a checkpoint "
            "(.pt/.pth/.bin/.safetensors)."
        ),
    ],
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.")
    ] = OutputFormat.TABLE,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (atomically) instead of stdout."),
    ] = None,
    buffers: Annotated[bool, typer.Option("--buffers", help="Include buffers.")] = False,
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only modules of this class (subclasses match). Repeatable."),
    ] = None,
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="Only parameters whose name or module matches this glob."),
    ] = None,
    seed: SeedOpt = 0,
    max_memory: MaxMemoryOpt = "2GiB",
    workers: WorkersOpt = None,
    distributed: DistributedOpt = False,
    meta: Annotated[
        bool,
        typer.Option(
            "--meta", help="Build on the meta device: defaults only, no memory for weights."
        ),
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write the report as one self-contained HTML page (summary, table, a "
            "histogram panel per parameter), atomically.",
        ),
    ] = None,
    hist: Annotated[
        bool,
        typer.Option("--hist", help="Add a one-line histogram of each parameter's values (table)."),
    ] = False,
    against: AgainstOpt = "default",
    var: VarOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
) -> None:
    """Show every parameter's default init (traced from torch), next to its actual statistics."""
    debug = _debug(ctx, debug)
    with _boundary(debug):
        from initscope.measure.report import ReportOptions, build_report
        from initscope.parallel.distributed import init_from_env
        from initscope.render.text import render_report

        if hist and fmt is not OutputFormat.TABLE:
            raise InitScopeError(
                f"--hist adds a column to the table format, not to {fmt.value}",
                "drop --hist or use --format table",
            )
        if output is not None:
            _writable_output(
                output, target, targets.spec, targets.args_file
            )  # before the model is built
        if html is not None:
            _writable_output(html, target, targets.spec, targets.args_file, against)
            if output is not None and html.resolve() == output.resolve():
                raise InitScopeError(
                    f"--html and --output are the same file ({html}); the report would "
                    "replace the page",
                    "give them different names",
                )
        if against != "default" and html is None:
            raise InitScopeError(
                "--against sets what the --html panels compare with", "add --html FILE"
            )
        rule_set = _against_rules(against, var)
        options = ReportOptions(
            buffers=buffers,
            types=tuple(type_ or ()),
            names=tuple(name or ()),
            max_memory=_parse_size(max_memory),
            workers=workers,
            group=init_from_env() if distributed else None,
        )
        leader = _leads(options.group)
        with _progress(not quiet and leader) as progress:
            how = targets.how(
                meta=meta,
                seed=seed,
                max_memory=options.max_memory,
            )
            result = build_report(target, how, options, progress)
        if not leader:  # under torchrun, rank 0 renders and writes
            return
        text = render_report(result, fmt, _width() if output is None else TABLE_WIDTH, hist)
        page = None
        if html is not None:
            from initscope.render.html import render_html

            page = render_html(result, rule_set)
    if html is not None and page is not None:
        _emit(page, html, debug)
    _emit(text, output, debug)


@app.command()
@target_options
def plot(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="pkg.module:Class (with --arg), a .yaml spec, or a checkpoint "
            "(.pt/.pth/.bin/.safetensors)."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Image to write: .png, .svg or .pdf (paged when large)."
        ),
    ],
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="Only parameters whose name or module matches this glob."),
    ] = None,
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only modules of this class (subclasses match). Repeatable."),
    ] = None,
    against: AgainstOpt = "default",
    var: VarOpt = None,
    max_panels: Annotated[
        int,
        typer.Option(
            "--max-panels",
            min=1,
            help="Panels per file; more go to OUT-1.png, OUT-2.png, ... (names on stderr).",
        ),
    ] = 48,
    columns: Annotated[int, typer.Option("--columns", min=1, help="Panels per row.")] = 6,
    dpi: Annotated[int, typer.Option("--dpi", min=10, max=600, help="PNG resolution.")] = 100,
    buffers: Annotated[bool, typer.Option("--buffers", help="Include buffers.")] = False,
    seed: SeedOpt = 0,
    max_memory: MaxMemoryOpt = "2GiB",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
) -> None:
    """Draw each parameter's histogram with the density it should follow (its default, or
    --against rules.yaml) over it: a grid of panels, marked where the values differ."""
    debug = _debug(ctx, debug)
    with _boundary(debug):
        from initscope.measure.report import ReportOptions, build_report
        from initscope.render.panels import make_panels
        from initscope.render.plot import (
            image_format,
            page_paths,
            require_matplotlib,
            save_pages,
            title_for,
        )

        image_format(output)  # a bad extension, and a missing matplotlib, before any work
        require_matplotlib()
        _writable_output(output, target, targets.spec, targets.args_file, against)
        rule_set = _against_rules(against, var)
        options = ReportOptions(
            buffers=buffers,
            types=tuple(type_ or ()),
            names=tuple(name or ()),
            max_memory=_parse_size(max_memory),
        )
        with _progress(not quiet) as progress:
            how = targets.how(
                seed=seed,
                max_memory=options.max_memory,
            )
            result = build_report(target, how, options, progress)
        panels = make_panels(result, rule_set)
        if not panels:
            raise InitScopeError(
                f"nothing to plot: {target} has no parameter selected by --name/--type",
                "widen the selection",
            )
        # A paged plot writes OUT-1.png, OUT-2.png, ...: none of them may be an input.
        for page in page_paths(output, len(panels), max_panels):
            _writable_output(page.path, target, targets.spec, targets.args_file, against)
        label = "default" if rule_set is None else rule_set.source
        pages = save_pages(
            panels,
            output,
            title=title_for(result, panels, label),
            max_panels=max_panels,
            columns=columns,
            dpi=dpi,
        )
    for page in pages:
        shown = escape_text(str(page.path))
        sys.stderr.write(f"wrote {shown}: panels {page.first + 1}-{page.end} of {len(panels)}\n")


@app.command()
def explain(
    ctx: typer.Context,
    layer: Annotated[str, typer.Argument(help="A layer class, e.g. nn.Conv2d or torch.nn:LSTM.")],
    arg: ArgOpt = None,
    args_file: ArgsFileOpt = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table (text), markdown or json.")
    ] = OutputFormat.TABLE,
    input_shape: InputShapeOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Explain one layer type's default init: the call, the numbers, the formula and the source."""
    debug = _debug(ctx, debug)
    with _boundary(debug):
        from initscope.knowledge.explanation import explain as explain_layer
        from initscope.render.text import render_explanation

        kwargs = _constructor_kwargs(arg, args_file)
        if fmt is OutputFormat.CSV:
            raise InitScopeError(
                "explain has no csv format", "use --format table, markdown or json"
            )
        result = explain_layer(layer, kwargs, input_shape=_parse_shape(input_shape))
        text = render_explanation(result, fmt)
    _emit(text, None, debug)


class ApplyFormat(str, Enum):
    TABLE = "table"
    JSON = "json"


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


def _parse_vars(pairs: list[str] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip().isidentifier() or number is None:
            raise InitScopeError(
                f"--var {pair!r} is not name=number", "write it like --var n_layer=12"
            )
        out[name.strip()] = number
    return out


@app.command()
@target_options
def apply(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="pkg.module:Class (with --arg), a .yaml spec, or a checkpoint "
            "(with --model/--spec, or bare for rules that match by name/param/ndim)."
        ),
    ],
    rules: RulesOpt,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the result here (.safetensors, .pt, .pth)."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            min=0,
            max=MAX_SEED,
            help="Seed (overrides the rules file's seed:; default 0).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change and write nothing.")
    ] = False,
    strict: StrictOpt = False,
    unmatched: UnmatchedOptT = None,
    var: VarOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    in_place: Annotated[
        bool,
        typer.Option("--in-place", help="Allow replacing the input checkpoint (atomically)."),
    ] = False,
    fmt: Annotated[
        ApplyFormat, typer.Option("--format", "-f", help="table (text) or json.")
    ] = ApplyFormat.TABLE,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
) -> None:
    """Re-initialize TARGET's parameters by a YAML rules file and save the result."""
    debug = _debug(ctx, debug)
    with _boundary(debug):
        from initscope.render.apply import render_apply
        from initscope.rules.apply import ApplyOptions, apply_target
        from initscope.rules.language import Unmatched, load_rules

        rule_set = load_rules(rules, _parse_vars(var))
        how = targets.how(
            seed=seed if seed is not None else (rule_set.seed or 0),
        )
        options = ApplyOptions(
            output=output,
            seed=seed,
            unmatched=Unmatched(unmatched.value) if unmatched else None,
            strict=strict,
            dry_run=dry_run,
            force=force,
            in_place=in_place,
        )
        with _progress(not quiet and not dry_run, "initializing") as progress:
            result = apply_target(target, rule_set, how, options, progress)
        _warn(result.plan.warnings())
        text = render_apply(result, fmt.value)
    _emit(text, None, debug)


class CheckFormat(str, Enum):
    TEXT = "text"
    JSON = "json"
    JUNIT = "junit"
    GITHUB = "github"


@app.command()
@target_options
def check(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="A checkpoint (with --model/--spec for type-based checks, or bare), or a "
            "model target built fresh."
        ),
    ],
    rules: Annotated[
        str | None,
        typer.Option(
            "--rules",
            "-r",
            help="Check that every parameter a rule covers follows it (file or preset name).",
        ),
    ] = None,
    expect: Annotated[
        Path | None,
        typer.Option("--expect", "-e", help="Expectations file (checks: and health:)."),
    ] = None,
    no_default_check: Annotated[
        bool,
        typer.Option(
            "--no-default-check",
            help="With --rules: do not require uncovered parameters to follow their default.",
        ),
    ] = False,
    fmt: Annotated[
        CheckFormat, typer.Option("--format", "-f", help="text, json, junit or github.")
    ] = CheckFormat.TEXT,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the result here (atomically), e.g. a JUnit file."
        ),
    ] = None,
    var: VarOpt = None,
    seed: SeedOpt = 0,
    max_memory: MaxMemoryOpt = "2GiB",
    workers: WorkersOpt = None,
    distributed: DistributedOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
) -> None:
    """Check TARGET's statistics: health always, --rules and --expect when given. Exit 0 if
    every check passes, 1 on violations, 2 on bad input."""
    debug = _debug(ctx, debug)
    with _boundary(debug):
        from initscope.gate.check import CheckOptions, check_target
        from initscope.gate.expectations import load_expectations
        from initscope.render.check import render_check
        from initscope.rules.language import load_rules, nothing_was

        if output is not None:
            _writable_output(output, target, rules, expect, targets.spec, targets.args_file)
        variables = _parse_vars(var)
        with nothing_was("checked"):
            rule_set = load_rules(rules, variables) if rules is not None else None
        expectations = load_expectations(expect) if expect is not None else None
        how = targets.how(
            seed=seed,
            max_memory=_parse_size(max_memory),
        )
        from initscope.parallel.distributed import init_from_env

        options = CheckOptions(
            rule_set,
            expectations,
            not no_default_check,
            _parse_size(max_memory),
            workers,
            init_from_env() if distributed else None,
        )
        leader = _leads(options.group)
        with _progress(not quiet and leader, "checking") as progress:
            result = check_target(target, how, options, progress)
        text = None
        if leader:  # under torchrun, rank 0 renders and writes
            _warn(list(result.notes))
            text = render_check(result, fmt.value)
    if text is not None:
        _emit(text, output, debug)
    if not result.ok:
        raise typer.Exit(EXIT_VIOLATIONS)


@app.command()
@target_options
def diff(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="Before: a checkpoint or a model target.")],
    b: Annotated[str, typer.Argument(help="After: a checkpoint or a model target.")],
    fmt: Annotated[
        ApplyFormat, typer.Option("--format", "-f", help="table (text) or json.")
    ] = ApplyFormat.TABLE,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (atomically)."),
    ] = None,
    seed: SeedOpt = 0,
    max_memory: MaxMemoryOpt = "2GiB",
    workers: WorkersOpt = None,
    distributed: DistributedOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
) -> None:
    """Compare two checkpoints (or a checkpoint and a fresh model), parameter by parameter."""
    debug = _debug(ctx, debug)
    with _boundary(debug):
        from initscope.gate.diff import diff_targets, render_diff
        from initscope.io.targets import TargetOptions, is_checkpoint_path

        if output is not None:
            _writable_output(output, a, b, targets.spec, targets.args_file)
        how = targets.how(
            seed=seed,
            max_memory=_parse_size(max_memory),
        )
        # --model/--spec describe the checkpoints; a model target needs only its --arg.
        plain = TargetOptions(kwargs=how.kwargs, input_shape=how.input_shape, seed=seed)
        if targets.model is None and targets.spec is None:
            # a bare checkpoint takes no --arg
            how = TargetOptions(
                unsafe_load=targets.unsafe_load,
                allow_outside=targets.allow_outside,
                max_memory=how.max_memory,
            )
        how_a = how if is_checkpoint_path(a) else plain
        how_b = how if is_checkpoint_path(b) else plain
        from initscope.parallel.distributed import init_from_env

        group = init_from_env() if distributed else None
        leader = _leads(group)
        with _progress(not quiet and leader, "comparing") as progress:
            result = diff_targets(
                a, b, how_a, how_b, progress, _parse_size(max_memory), workers, group
            )
        if not leader:  # under torchrun, rank 0 renders and writes
            return
        text = render_diff(result, fmt.value)
    _emit(text, output, debug)


rules_app = typer.Typer(
    no_args_is_help=True,
    help="Check rules files, list the presets, print the rules JSON Schema.",
)
app.add_typer(rules_app, name="rules")


@rules_app.command("validate")
@target_options
def rules_validate(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="Rules file (.yaml) or preset name.")],
    target: Annotated[
        str | None,
        typer.Argument(help="Also check the rules against this model or checkpoint."),
    ] = None,
    strict: StrictOpt = False,
    unmatched: UnmatchedOptT = None,
    var: VarOpt = None,
    fmt: Annotated[
        ApplyFormat, typer.Option("--format", "-f", help="table (text) or json.")
    ] = ApplyFormat.TABLE,
    debug: DebugOpt = False,
    targets: TargetArgs = TargetArgs(),
) -> None:
    """Check a rules file (and, given TARGET, how it matches that model); change nothing."""
    import json

    debug = _debug(ctx, debug)
    with _boundary(debug):
        from initscope.render.apply import apply_to_dict, summary_lines
        from initscope.rules.apply import ApplyOptions, plan_target
        from initscope.rules.language import Unmatched, load_rules

        rule_set = load_rules(file, _parse_vars(var))
        if target is None:
            if fmt is ApplyFormat.JSON:
                text = (
                    json.dumps(
                        {"rules_file": rule_set.source, "ok": True, "rules": len(rule_set.rules)}
                    )
                    + "\n"
                )
            else:
                n = len(rule_set.rules)
                text = f"{rule_set.source}: ok, {n} rule{'s' if n != 1 else ''}\n"
        else:
            how = targets.how(
                seed=rule_set.seed or 0,
            )
            options = ApplyOptions(
                unmatched=Unmatched(unmatched.value) if unmatched else None, strict=strict
            )
            result = plan_target(target, rule_set, how, options)
            _warn(result.plan.warnings())
            if fmt is ApplyFormat.JSON:
                text = json.dumps({**apply_to_dict(result), "ok": True}, indent=2) + "\n"
            else:
                lines = [f"{rule_set.source}: ok against {target}", *summary_lines(result.plan)]
                text = "\n".join(lines) + "\n"
    _emit(text, None, debug)


@rules_app.command("schema")
def rules_schema() -> None:
    """Print the JSON Schema of rules files (configs/rules.schema.json)."""
    import json

    from initscope.rules.schema import RULES_SCHEMA

    sys.stdout.write(json.dumps(RULES_SCHEMA, indent=2) + "\n")


@rules_app.command("presets")
def rules_presets() -> None:
    """List the bundled presets, usable as --rules NAME."""
    from initscope.rules.language import preset_names, presets_dir

    for name in preset_names():
        first = ""
        for line in (presets_dir() / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
            if line.startswith("# ") and "yaml-language-server" not in line:
                first = line[2:].strip()
                break
        sys.stdout.write(f"{name:<18} {first}\n")


def _is(exc: BaseException, name: str) -> bool:
    # Typer ≥ 0.16 vendors click as typer._click; match click's exception classes by name so
    # this works with either.
    return any(c.__name__ == name for c in type(exc).__mro__)


def _leave_the_job() -> None:
    """Under torchrun, every rank waits for the others and closes its process group before
    it exits (see distributed.finish); elsewhere nothing happens."""
    from initscope.parallel.distributed import finish

    with suppress(Exception):  # a peer that died already: nothing left to wait for
        finish()


def _terminate_as_interrupt() -> Callable[[], None]:
    """SIGTERM (a CI job cancelled, a ``timeout``, ``kill``) ends a run as Ctrl-C does: the
    temporary file of an output being written is removed, one line says so, exit 130. Only
    where nobody installed a handler already. Forked children (``--workers``) get the
    default back: a pool ends its workers with SIGTERM, which must end them silently, not
    print a KeyboardInterrupt traceback from each. Returns what puts the default back when
    the command is done (main may be called again in one process, as tests do)."""
    import os
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def default_in_child() -> None:
        if signal.getsignal(signal.SIGTERM) is interrupt:
            with suppress(ValueError):  # not the child's main thread: nothing to undo
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)
        os.register_at_fork(after_in_child=default_in_child)

        def restore() -> None:
            if signal.getsignal(signal.SIGTERM) is interrupt:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

        return restore
    return lambda: None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: click's usage errors become one line too."""
    import os
    import warnings

    # torch warns on import when numpy is absent; initscope never needs numpy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    # Let torch's CPU allocator ask for transparent huge pages for its large blocks (c10's
    # THP_MEM_ALLOC_ENABLE): each tensor read from a checkpoint is fresh memory, and its 4 KiB
    # page faults are most of the reading time (docs/performance.md). A user's own setting wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    # OpenMP's idle threads spin for a while after each parallel torch op (libgomp's default
    # GOMP_SPINCOUNT) on the cores the fused kernel's threads need, between identifications.
    # initscope's own parallelism is the kernel's threads and its processes.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    restore_sigterm = _terminate_as_interrupt()
    command = typer.main.get_command(app)
    try:
        try:
            code = command.main(args=argv, prog_name="initscope", standalone_mode=False)
        finally:
            _leave_the_job()
            restore_sigterm()
    except KeyboardInterrupt:
        sys.stderr.write("initscope: interrupted\n")
        code = EXIT_INTERRUPTED
    except Exception as exc:
        if _is(exc, "NoArgsIsHelpError"):
            sys.stdout.write(exc.format_message() + "\n")  # type: ignore[attr-defined]
            code = EXIT_OK
        elif _is(exc, "UsageError"):
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "initscope"
            message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
            sys.stderr.write(f"initscope: error: {escape_text(message)}; see '{where} --help'\n")
            code = EXIT_USAGE
        elif _is(exc, "ClickException"):
            message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
            sys.stderr.write(f"initscope: error: {escape_text(message)}\n")
            code = getattr(exc, "exit_code", EXIT_USAGE)
        elif _is(exc, "Abort"):
            sys.stderr.write("initscope: interrupted\n")
            code = EXIT_INTERRUPTED
        else:
            raise
    sys.exit(code if isinstance(code, int) else EXIT_OK)


_complete_signatures()
