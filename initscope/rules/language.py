"""Rules files for ``initscope apply``: parsing and the checks that need no model.

A rules file (see ``configs/`` and :data:`~initscope.rules.schema.RULES_SCHEMA`) is checked in
two stages. :func:`load_rules` checks everything the file alone decides: the schema, init
names, init arguments against the torch function's signature, expressions and their names,
regular expressions and dotted type paths. :func:`initscope.rules.plan.make_plan` then checks it
against a model. Both collect every problem before raising one :class:`RulesError`.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import json
import keyword
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

import torch

from initscope.errors import SpecError
from initscope.io.yamlio import DocPath, Located, did_you_mean, load_yaml, shorten
from initscope.rules.expressions import FUNCTIONS, Expression, ExpressionError, parse_expression
from initscope.rules.schema import MATCH_KEYS, validate

__all__ = [
    "FAN_NAMES",
    "InitFunction",
    "PatternError",
    "Problem",
    "Rule",
    "RuleSet",
    "RulesError",
    "Unmatched",
    "init_functions",
    "load_rules",
    "parse_rules",
    "preset_names",
    "presets_dir",
]

# Names every expression may use besides vars: the parameter's fans (as
# torch.nn.init._calculate_fan_in_and_fan_out computes them) and its element count.
FAN_NAMES = ("fan_in", "fan_out", "numel")
SPECIAL_INITS = ("default", "keep")


class Unmatched(str, Enum):
    """What happens to a parameter no rule matches."""

    KEEP = "keep"
    ERROR = "error"
    DEFAULT = "default"

    def __str__(self) -> str:
        return self.value


class PatternError(ValueError):
    """A ``re:`` pattern that cannot be used: what is wrong (``message``) and how to fix it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


_RE2_HINT = (
    "re: patterns use RE2 syntax, which matches in linear time: no backreferences or "
    "lookaround, repetition counts up to 1000"
)


# Compiling a pattern takes time and memory in proportion to its program, up to RE2's
# max_mem: 8 MB by default, where one 8-character pattern (\pL{446}: every letter of
# Unicode, 446 times) took 0.2 s and 3 MB. A name pattern is a line of text; 256 KB holds
# hundreds of alternatives, and the worst pattern under it compiles in about 8 ms. A file
# may use at most MAX_PATTERNS different patterns, all of which stay compiled.
RE2_MAX_MEM = 256 * 2**10
MAX_PATTERNS = 256


@functools.lru_cache(maxsize=MAX_PATTERNS)
def name_regex(pattern: str) -> Callable[[str], bool]:
    """Whether a module path fully matches the ``re:`` pattern of a rule, by RE2 (google-re2):
    matching takes time linear in the name whatever the pattern, where Python's backtracking
    ``re`` takes exponential time on patterns such as ``(a+)+$``, and a rules file is data
    anyone can hand over. :class:`PatternError` says what RE2 cannot compile.

    Without google-re2 (a platform it has no wheel for, installed with --no-deps) ``re:``
    patterns are refused rather than run by Python's ``re``: no syntactic bound makes
    backtracking safe (``a*a*a*a*a*a*b`` nests nothing yet takes n^6 steps), and a module
    name of 32 characters is enough for hours."""
    try:
        import re2
    except ImportError:
        raise PatternError(
            "re: patterns need the google-re2 package (a regex engine that matches in linear "
            "time), which is not installed",
            "install it (pip install google-re2), or write a glob such as 'encoder.*.attn'",
        ) from None
    options = re2.Options()
    options.log_errors = False  # the error is ours to report, once, not absl's on stderr
    options.max_mem = RE2_MAX_MEM
    try:
        compiled = re2.compile(pattern, options=options)
    except re2.error as exc:
        text = exc.args[0] if exc.args else exc
        why = (text.decode() if isinstance(text, bytes) else str(text))[:200]
        if _python_compiles(pattern):
            raise PatternError(
                f"regular expression {shorten(pattern)} is not supported by the linear-time "
                f"regex engine (RE2: {why})",
                _RE2_HINT,
            ) from None
        raise PatternError(
            f"invalid regular expression {shorten(pattern)}: {why}", _RE2_HINT
        ) from None
    return _Regex(pattern, compiled)


class _Regex:
    """A compiled ``re:`` pattern, called with a name; it pickles as its text (a Rule that
    reaches a worker's result is compiled again where it is loaded)."""

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str, compiled: Any) -> None:
        self.pattern = pattern
        self._compiled = compiled

    def __call__(self, name: str) -> bool:
        return self._compiled.fullmatch(name) is not None

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return name_regex, (self.pattern,)


def _python_compiles(pattern: str) -> bool:
    """Whether Python's ``re`` compiles ``pattern`` (compiling never runs it): such a pattern
    is valid, only not linear-time (a backreference, a lookaround)."""
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError, MemoryError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rules file: where, at which path in the document, what."""

    where: str
    path: str
    message: str
    hint: str | None = None

    def one_line(self) -> str:
        # A path is made of the file's keys, which may be any length: it is cut, not echoed.
        path = self.path if len(self.path) <= 120 else f"{self.path[:100]}..."
        at = f"{path}: " if path else ""
        text = f"{self.where}: {at}{self.message}"
        return " ".join((text if self.hint is None else f"{text}; {self.hint}").split())


class RulesError(SpecError):
    """A rules (or expectations) file with one or more problems; every one is reported, one
    line each, then a summary line."""

    def __init__(
        self, problems: Sequence[Problem], summary: str = "in the rules; nothing was changed"
    ) -> None:
        self.problems = tuple(problems)
        self.summary = summary
        first = self.problems[0]
        super().__init__(first.one_line() if len(self.problems) == 1 else self._summary())

    def _summary(self) -> str:
        return f"{len(self.problems)} problems {self.summary}"

    # A file with thousands of mistakes is one mistake repeated: show enough to see it.
    MAX_SHOWN = 50

    def lines(self) -> list[str]:
        out = [p.one_line() for p in self.problems[: self.MAX_SHOWN]]
        hidden = len(self.problems) - len(out)
        if hidden:
            out.append(f"... and {hidden} more problem{'s' if hidden != 1 else ''} like these")
        if len(self.problems) > 1:
            out.append(self._summary())
        return out

    def one_line(self) -> str:
        return self.lines()[0] if len(self.problems) == 1 else " | ".join(self.lines())


@contextmanager
def nothing_was(done: str) -> Iterator[None]:
    """A :class:`RulesError` raised inside ends with "N problems in the rules; nothing was
    {done}": what the command did not do (rules errors are found before any work)."""
    try:
        yield
    except RulesError as exc:
        exc.summary = f"in the rules; nothing was {done}"
        raise


def doc_path(path: DocPath) -> str:
    """``("rules", 2, "init")`` → ``rules[2].init``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# -- the init functions and their arguments -------------------------------------------------


@dataclass(frozen=True)
class InitArg:
    """One argument of a torch.nn.init function, as its signature declares it."""

    name: str
    kind: str  # "float", "int" or "choice"
    required: bool
    default: Any = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class InitFunction:
    """A ``torch.nn.init`` function a rule may name."""

    name: str  # with the trailing underscore: "xavier_uniform_"
    args: Mapping[str, InitArg]
    takes_generator: bool

    @property
    def short(self) -> str:
        return self.name.removesuffix("_")

    def __call__(self, tensor: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        fn = getattr(torch.nn.init, self.name)
        return fn(tensor, **kwargs)  # type: ignore[no-any-return]


@cache
def init_functions() -> Mapping[str, InitFunction]:
    """Every public in-place function of the installed ``torch.nn.init``, by name."""
    out: dict[str, InitFunction] = {}
    for name in sorted(dir(torch.nn.init)):
        fn = getattr(torch.nn.init, name)
        if name.startswith("_") or not name.endswith("_") or not inspect.isfunction(fn):
            continue
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if not params or params[0].name != "tensor":
            continue
        hints = typing.get_type_hints(fn)
        args: dict[str, InitArg] = {}
        for p in params[1:]:
            if p.name == "generator":
                continue
            hint = hints.get(p.name)
            required = p.default is inspect.Parameter.empty
            default = None if required else p.default
            if typing.get_origin(hint) is typing.Literal:
                choices = tuple(str(c) for c in typing.get_args(hint))
                args[p.name] = InitArg(p.name, "choice", required, default, choices)
            elif hint is int:
                args[p.name] = InitArg(p.name, "int", required, default)
            else:
                args[p.name] = InitArg(p.name, "float", required, default)
        out[name] = InitFunction(name, args, "generator" in sig.parameters)
    return out


@cache
def gain_names() -> tuple[str, ...]:
    hint = typing.get_type_hints(torch.nn.init.calculate_gain)["nonlinearity"]
    return tuple(str(c) for c in typing.get_args(hint))


# -- rules ---------------------------------------------------------------------------------

ArgValue = float | int | str | Expression


@dataclass(frozen=True)
class Rule:
    """One rule: what it matches and the init it applies."""

    index: int
    line: int
    where: str  # file:line:col of the rule
    init: str  # "xavier_uniform_", ..., or "default" / "keep"
    args: Mapping[str, ArgValue] = field(default_factory=dict)
    type_names: tuple[str, ...] = ()  # bare class names: Conv2d
    type_classes: tuple[type, ...] = ()  # classes named by dotted path
    name: str | None = None
    param: str = "*"
    ndim: tuple[int, int] | None = None
    arg_paths: Mapping[str, str] = field(default_factory=dict)  # key → file:line:col
    section: str = "rules"  # "checks" for an expectations file
    # The compiled ``re:`` pattern of ``name``, kept with the rule: matching a model's names
    # never compiles it again, however many patterns the files in use hold.
    name_match: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)

    def at(self, key: str) -> str:
        """``file:line:col`` of one of the rule's keys (the rule itself if absent)."""
        return self.arg_paths.get(key, self.where)

    @property
    def label(self) -> str:
        at = f" (line {self.line})" if self.line else ""
        return f"{self.section}[{self.index}]{at}"

    @property
    def has_type(self) -> bool:
        return bool(self.type_names or self.type_classes)

    def matches_name(self, module: str, param: str, ndim: int) -> bool:
        if self.name is not None:
            if self.name.startswith("re:"):
                match = self.name_match or name_regex(self.name[3:])
                if not match(module):
                    return False
            elif not fnmatch.fnmatchcase(module, self.name):
                return False
        if not fnmatch.fnmatchcase(param, self.param):
            return False
        return self.ndim is None or self.ndim[0] <= ndim <= self.ndim[1]

    def matches_type(self, cls: type | None) -> bool:
        if not self.has_type:
            return True
        if cls is None:
            return False
        if any(issubclass(cls, c) for c in self.type_classes):
            return True
        return any(k.__name__ in self.type_names for k in cls.__mro__)


@dataclass(frozen=True)
class RuleSet:
    """A checked rules file."""

    rules: tuple[Rule, ...]
    seed: int | None = None
    vars: Mapping[str, float] = field(default_factory=dict)
    unmatched: Unmatched = Unmatched.KEEP
    source: str = "<rules>"
    text: str = ""  # the file's content, recorded in the outputs apply writes
    unmatched_where: str = "<rules>"  # where `unmatched:` is set (file:line:col)

    @property
    def uses_types(self) -> bool:
        return any(r.has_type for r in self.rules)


# -- loading -------------------------------------------------------------------------------


def presets_dir() -> Path:
    """The folder of bundled presets: ``configs/`` of the source tree, or the copy installed
    as package data."""
    here = Path(__file__).resolve().parents[1]  # the initscope package
    for candidate in (here.parent / "configs", here / "presets"):
        if candidate.is_dir():
            return candidate
    return here.parent / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _find(path_or_name: str | Path) -> tuple[Path, str]:
    """The file a --rules value names, and the name to show for it: the path as given, or
    ``preset NAME`` for a bundled preset (what the user typed, the same on every machine)."""
    p = Path(path_or_name)
    if p.exists() or p.suffix or len(p.parts) > 1:
        return p, str(p)
    preset = presets_dir() / f"{p.name}.yaml"
    if preset.is_file():
        return preset, f"preset {p.name}"
    names = preset_names()
    raise SpecError(
        f"no rules file or preset named {str(path_or_name)!r}"
        f"{did_you_mean(str(path_or_name), names)}",
        f"give a path to a .yaml file, or one of the presets: {', '.join(names)}",
    )


def load_rules(
    source: str | Path | Mapping[str, Any], variables: Mapping[str, float] | None = None
) -> RuleSet:
    """Read and check a rules file (a path, a preset name such as ``xavier``, or an already
    parsed mapping); raise :class:`RulesError` listing every problem found. ``variables``
    override or add to the file's ``vars:`` (``--var n_layer=2``)."""
    if isinstance(source, Mapping):
        doc = Located("<rules>", dict(source), {})
        return parse_rules(doc, json.dumps(source, sort_keys=True, default=str), variables)
    path, shown = _find(source)
    if path.is_dir():
        raise SpecError(f"{path} is a directory, not a rules file", "give a .yaml file")
    doc = load_yaml(path, shown)
    return parse_rules(doc, doc.text, variables)


class Collector:
    """Collects problems with their location in one document."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.problems: list[Problem] = []
        self._spots: set[str] = set()  # the paths with a problem: one lookup, not a scan
        # The dotted ``type:`` paths met so far and what each resolved to (see _parse_types).
        self.types: dict[str, type | str] = {}
        self.imported: set[str] = set()
        self.patterns: set[str] = set()  # the re: patterns met so far

    def __call__(self, path: DocPath, message: str, hint: str | None = None) -> None:
        # One problem per spot: a value the schema already refused is not refused again
        # by the later checks (which would only restate it).
        where, at = self.doc.where(path), doc_path(path)
        if at and at in self._spots:
            return
        self._spots.add(at)
        self.problems.append(Problem(where, at, message, hint))


def parse_rules(
    doc: Located, text: str = "", variables: Mapping[str, float] | None = None
) -> RuleSet:
    """Check a parsed document; see :func:`load_rules`."""
    problem = Collector(doc)
    problems = problem.problems

    data = doc.data
    if data is None:
        problem((), "the rules file is empty", f"add a `rules:` list; {_EXAMPLES}")
        raise RulesError(problems)
    for path, first, _ in doc.duplicates:
        problem(
            path,
            f"duplicate key {shorten(path[-1])} (first at line {first}); "
            "YAML would keep only the last",
            "remove one of them",
        )
    for sp in validate(data):
        problem(sp.path, sp.message, _schema_hint(sp.path, sp.message))
    if not isinstance(data, dict):
        raise RulesError(problems)
    vars_ = _parse_vars(data.get("vars"), problem)
    vars_.update(variables or {})
    rules: list[Rule] = []
    raw_rules = data.get("rules")
    if isinstance(raw_rules, list):
        for i, raw in enumerate(raw_rules):
            if isinstance(raw, dict):
                rule = parse_rule(doc, ("rules", i), i, raw, vars_, problem)
                if rule is not None:
                    rules.append(rule)
    if problems:
        raise RulesError(problems)
    seed = data.get("seed")
    return RuleSet(
        rules=tuple(rules),
        seed=int(seed) if isinstance(seed, int) else None,
        vars=vars_,
        unmatched=Unmatched(data.get("unmatched", "keep")),
        source=doc.file,
        text=text,
        unmatched_where=doc.where(("unmatched",)) if "unmatched" in data else doc.file,
    )


def _parse_vars(raw_vars: Any, problem: Collector) -> dict[str, float]:
    """The file's ``vars:`` as floats. A var may not shadow a name every expression already
    has (fan_in, fan_out, numel), a function or a Python keyword: an expression could not
    tell them apart. Each such var is reported and still kept, so that the expressions using
    it are not reported again as naming an unknown var; a number too large for a float is
    reported and dropped."""
    vars_: dict[str, float] = {}
    if not isinstance(raw_vars, dict):
        return vars_
    for k, v in raw_vars.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            try:
                v = float(v)
            except OverflowError:
                problem(
                    ("vars", str(k)), f"{shorten(k)} is too large a number", "use a smaller one"
                )
                continue
            if str(k) in FAN_NAMES:
                problem(
                    ("vars", str(k)),
                    f"{shorten(k)} is set for each parameter and cannot be a var",
                    "rename the var",
                )
            elif keyword.iskeyword(str(k)) or str(k) in FUNCTIONS:
                what = "a Python keyword" if keyword.iskeyword(str(k)) else "a function"
                problem(
                    ("vars", str(k)),
                    f"{shorten(k)} is {what} and cannot be a var name",
                    "rename the var",
                )
            vars_[str(k)] = float(v)
    return vars_


_EXAMPLES = "see the presets: initscope rules presets"
_INIT_HINT = "e.g. `init: xavier_uniform` (any torch.nn.init function), default or keep"


def _schema_hint(path: DocPath, message: str) -> str | None:
    last = path[-1] if path else None
    if path == () and "rules" in message:
        return f"add a `rules:` list; {_EXAMPLES}"
    if path == () and "expected a mapping" in message:
        return f"a rules file is a mapping with a `rules:` list; {_EXAMPLES}"
    if "got a boolean" in message:
        return "YAML reads yes/no/on/off/true/false as booleans; write a number or quote it"
    if message.startswith("unknown key"):
        return "remove or rename it"
    if message == "missing required key 'init'":
        return f"add one: {_INIT_HINT}"
    if last == "init":
        return f"write {_INIT_HINT}"
    if len(path) == 2 and path[0] == "rules" and "expected a mapping" in message:
        return "write each rule as a mapping, e.g. `- init: xavier_uniform`"
    if last == "unmatched":
        return "keep leaves uncovered parameters as they are"
    if last == "ndim":
        return "write an integer ≥ 0 or [min, max]"
    return None


@dataclass(frozen=True)
class _RuleMatch:
    """A rule's checked match keys (type, name, param, ndim), as :class:`Rule` holds them."""

    type_names: tuple[str, ...]
    type_classes: tuple[type, ...]
    name: str | None
    name_match: Callable[[str], bool] | None
    param: str
    ndim: tuple[int, int] | None


def parse_rule(
    doc: Located,
    base: DocPath,
    i: int,
    raw: Mapping[str, Any],
    vars_: Mapping[str, float],
    problem: Collector,
) -> Rule | None:
    """One rule at ``base`` in ``doc`` (match keys, init and its arguments), or None when it
    has problems (added to ``problem``)."""
    before = len(problem.problems)
    init, fn = _rule_init(raw.get("init"), base, problem)
    args: dict[str, ArgValue] = {}
    if init is not None:
        args = _rule_args(init, fn, raw, base, vars_, problem)
    match = _rule_match(raw, base, problem)
    if init is not None and fn is not None:
        for key, message, hint in arg_constraints(init, args):
            problem((*base, key), message, hint)
    if len(problem.problems) > before or init is None:
        return None
    return _build_rule(doc, base, i, raw, init, args, match)


def _rule_init(
    init_raw: Any, base: DocPath, problem: Collector
) -> tuple[str | None, InitFunction | None]:
    """The init a rule names (``default``, ``keep`` or a torch.nn.init function) and the
    function for it. An unknown name is reported with the names there are; (None, None)
    then, as for a missing or non-string ``init`` (which the schema reports)."""
    if not isinstance(init_raw, str):
        return None, None
    init, fn = _init_name(init_raw)
    if init is None:
        known = [*(f.short for f in init_functions().values()), *SPECIAL_INITS]
        problem(
            (*base, "init"),
            f"unknown init {shorten(init_raw)}{did_you_mean(init_raw.removesuffix('_'), known)}",
            f"use a torch.nn.init function ({', '.join(known[:-2])}) or default or keep",
        )
    return init, fn


def _rule_args(
    init: str,
    fn: InitFunction | None,
    raw: Mapping[str, Any],
    base: DocPath,
    vars_: Mapping[str, float],
    problem: Collector,
) -> dict[str, ArgValue]:
    """The init arguments of a rule: every key besides the match keys and ``init``, checked
    against the signature of the torch.nn.init function (``default`` and ``keep`` take
    none), and then every argument the function requires but the rule leaves out."""
    args: dict[str, ArgValue] = {}
    allowed = list(fn.args) if fn is not None else []
    for key in (str(k) for k in raw if k not in (*MATCH_KEYS, "init")):
        path = (*base, key)
        if key not in allowed:
            _unknown_arg(init, key, allowed, path, problem)
            continue
        assert fn is not None
        value = _parse_arg(fn.args[key], raw[key], vars_, path, problem)
        if value is not None:
            args[key] = value
    if fn is not None:
        for a in fn.args.values():
            if a.required and a.name not in raw:
                problem(
                    base,
                    f"{init.removesuffix('_')} needs {a.name!r}",
                    f"add `{a.name}: ...` to the rule (torch.nn.init.{init} has no default for it)",
                )
    return args


def _unknown_arg(
    init: str, key: str, allowed: Sequence[str], path: DocPath, problem: Collector
) -> None:
    """Report a rule key that is neither a match key nor an argument of its init, with the
    closest key it may have meant and the arguments the init does take."""
    short = init.removesuffix("_")
    what = f"{short} takes no arguments" if not allowed else None
    problem(
        path,
        f"unknown key {shorten(key)}"
        + ("" if what else f" for {short}")
        + did_you_mean(key, [*allowed, *MATCH_KEYS])
        + (f"; {what}" if what else ""),
        "match keys are type, name, param, ndim"
        + (f"; {short} takes {', '.join(allowed)}" if allowed else ""),
    )


def _rule_match(raw: Mapping[str, Any], base: DocPath, problem: Collector) -> _RuleMatch:
    """The match keys of a rule, checked: ``type`` (class names and dotted paths), ``name``
    (a glob, or a ``re:`` pattern compiled now), ``param`` and ``ndim``."""
    type_names, type_classes = _parse_types(raw.get("type"), (*base, "type"), problem)
    name = raw.get("name")
    param = raw.get("param", "*")
    return _RuleMatch(
        type_names=type_names,
        type_classes=type_classes,
        name=name if isinstance(name, str) else None,
        name_match=_name_pattern(name, base, problem),
        param=param if isinstance(param, str) else "*",
        ndim=_rule_ndim(raw.get("ndim"), base, problem),
    )


def _name_pattern(name: Any, base: DocPath, problem: Collector) -> Callable[[str], bool] | None:
    """The compiled pattern of a ``name: re:...`` key (None for a glob). A file may use at
    most :data:`MAX_PATTERNS` different patterns, since every one stays compiled; a pattern
    RE2 cannot compile is reported."""
    if not (isinstance(name, str) and name.startswith("re:")):
        return None
    if name not in problem.patterns and len(problem.patterns) >= MAX_PATTERNS:
        problem(
            (*base, "name"),
            f"more than {MAX_PATTERNS} different re: patterns in one file",
            "join alternatives into one pattern with |, or match by globs",
        )
        return None
    problem.patterns.add(name)
    try:
        return name_regex(name[3:])
    except PatternError as exc:
        problem((*base, "name"), exc.message, exc.hint)
        return None


def _rule_ndim(ndim_raw: Any, base: DocPath, problem: Collector) -> tuple[int, int] | None:
    """The ``ndim`` key as an inclusive range: ``2`` → (2, 2), ``[1, 3]`` → (1, 3). An empty
    range is reported (and kept: the rule is dropped for the problem anyway)."""
    if isinstance(ndim_raw, int) and not isinstance(ndim_raw, bool):
        return (ndim_raw, ndim_raw)
    if isinstance(ndim_raw, list) and len(ndim_raw) == 2:
        lo, hi = ndim_raw
        if isinstance(lo, int) and isinstance(hi, int):
            if lo > hi:
                problem((*base, "ndim"), f"[{lo}, {hi}] is empty", "write [min, max]")
            return (lo, hi)
    return None


def _build_rule(
    doc: Located,
    base: DocPath,
    i: int,
    raw: Mapping[str, Any],
    init: str,
    args: Mapping[str, ArgValue],
    match: _RuleMatch,
) -> Rule:
    """The :class:`Rule` of a rule without problems, with where each of its keys is in the
    file, for the problems found later against a model."""
    arg_paths = {str(key): doc.where((*base, str(key))) for key in raw}
    line = doc.marks.get(base, (0, 0))[0]
    return Rule(
        index=i,
        line=line,
        where=doc.where(base),
        init=init,
        args=args,
        type_names=match.type_names,
        type_classes=match.type_classes,
        name=match.name,
        param=match.param,
        ndim=match.ndim,
        arg_paths=arg_paths,
        section=str(base[0]) if base else "rules",
        name_match=match.name_match,
    )


def arg_constraints(init: str, args: Mapping[str, ArgValue | float]) -> list[tuple[str, str, str]]:
    """What torch's init functions require of their numbers, checked on the values known
    (constants in the file, or every value once resolved for a parameter): (key, message,
    hint) for each broken one. On meta tensors torch skips some of these checks."""
    out: list[tuple[str, str, str]] = []

    def num(key: str) -> float | None:
        v = args.get(key)
        if not isinstance(v, int | float) or isinstance(v, bool):
            return None
        try:
            return float(v)
        except OverflowError:  # an integer beyond float range
            return math.inf

    fn = init.removesuffix("_")
    for key in args:
        v = num(key)
        if v is not None and not (math.isfinite(v) and abs(v) <= _FLOAT32_MAX):
            raw = args[key]
            got = f"an integer of {len(str(raw))} digits" if isinstance(raw, int) else f"{v:g}"
            out.append(
                (
                    key,
                    f"{fn} needs a finite {key} within float32 range, got {got}",
                    f"write a number up to {_FLOAT32_MAX:.3g} in magnitude",
                )
            )
    if out:
        return out
    std = num("std")
    if init in ("normal_", "sparse_") and std is not None and std < 0:
        out.append(("std", f"{fn} needs std ≥ 0, got {std:g}", "use a non-negative std"))
    a, b = num("a"), num("b")
    if init == "uniform_":
        lo = a if a is not None else 0.0
        hi = b if b is not None else 1.0
        key = "a" if a is not None else "b"
        if lo > hi:
            out.append((key, f"uniform needs a ≤ b, got a={lo:g}, b={hi:g}", "swap a and b"))
        elif hi - lo > _FLOAT32_MAX:
            out.append((key, f"uniform's range b - a = {hi - lo:g} overflows float32", "narrow it"))
    if init == "trunc_normal_":
        out += _trunc_normal_constraints(num("mean"), std, a, b)
    sparsity = num("sparsity")
    if init == "sparse_" and sparsity is not None and not 0 <= sparsity <= 1:
        out.append(
            (
                "sparsity",
                f"sparse needs a sparsity from 0 to 1, got {sparsity:g}",
                "write the fraction of zeros per column, e.g. sparsity: 0.1",
            )
        )
    groups = num("groups")
    if init == "dirac_" and groups is not None and groups < 1:
        out.append(("groups", f"dirac needs groups ≥ 1, got {groups:g}", "use groups: 1"))
    return out


# torch.finfo(torch.float32).max: values are drawn in float32 (see apply._fill).
_FLOAT32_MAX = 3.4028234663852886e38
# torch.nn.init.trunc_normal_ samples by rejection; when [a, b] holds little of the normal's
# mass (p ≤ 0.3, torch/nn/init.py _no_grad_trunc_normal_) the proposal is uniform on [a, b]
# and each round accepts a fraction p·std·√(2π)/(b − a) of the values. Below this fraction a
# run takes minutes to hours; it is refused.
_MIN_ACCEPTANCE = 1e-3


def _trunc_normal_constraints(
    mean: float | None, std: float | None, a: float | None, b: float | None
) -> list[tuple[str, str, str]]:
    m = 0.0 if mean is None else mean
    s = 1.0 if std is None else std
    lo = -2.0 if a is None else a
    hi = 2.0 if b is None else b
    if s <= 0:
        return [("std", f"trunc_normal needs std > 0, got {s:g}", "use a positive std")]
    key = "b" if b is not None else "a"
    if lo >= hi:
        return [(key, f"trunc_normal needs a < b, got a={lo:g}, b={hi:g}", "swap a and b")]

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    p = cdf((hi - m) / s) - cdf((lo - m) / s)
    if p <= 0.3 and p * s * math.sqrt(2 * math.pi) < _MIN_ACCEPTANCE * (hi - lo):
        return [
            (
                key,
                f"trunc_normal over [{lo:g}, {hi:g}] keeps {p:.2g} of N({m:g}, {s:g}) spread "
                f"over {(hi - lo) / s:.3g} std: torch would sample it for a very long time",
                "put [a, b] around the mean (a and b are absolute values, not multiples of std)",
            )
        ]
    return []


def _init_name(text: str) -> tuple[str | None, InitFunction | None]:
    if text in SPECIAL_INITS:
        return text, None
    fns = init_functions()
    name = text if text.endswith("_") else f"{text}_"
    if name in fns:
        return name, fns[name]
    return None, None


def _parse_arg(
    arg: InitArg, value: Any, vars_: Mapping[str, float], path: DocPath, problem: Collector
) -> ArgValue | None:
    """One init argument as the rule gives it, checked against the kind the signature
    declares: a choice, an integer, or a float written as a number, an expression or (for
    ``gain``) a calculate_gain name. None when it has problems (added to ``problem``)."""
    if isinstance(value, bool) or value is None:
        problem(
            path,
            f"expected a number for {arg.name}, got {str(value).lower()}",
            "YAML reads yes/no/on/off/true/false/null as non-numbers; write a number",
        )
        return None
    if arg.kind == "choice":
        return _parse_choice(arg, value, path, problem)
    if arg.kind == "int":
        if isinstance(value, int):
            return value
        problem(path, f"expected an integer for {arg.name}, got {shorten(value)}")
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            problem(path, f"{arg.name} is too large a number", "write a float32-sized number")
            return None
    if not isinstance(value, str):
        problem(path, f"expected a number or an expression for {arg.name}, got {shorten(value)}")
        return None
    if arg.name == "gain" and _names_a_gain(value, vars_):
        return _parse_gain(value, path, problem)
    return _parse_arg_expression(arg, value, vars_, path, problem)


def _parse_choice(arg: InitArg, value: Any, path: DocPath, problem: Collector) -> str | None:
    """An argument that takes one of a few strings (``mode: fan_in``); anything else is
    reported with the closest choice."""
    if isinstance(value, str) and value in arg.choices:
        return value
    problem(
        path,
        f"{shorten(value)} is not a valid {arg.name}"
        + (did_you_mean(value, arg.choices) if isinstance(value, str) else ""),
        f"use one of {', '.join(arg.choices)}",
    )
    return None


def _names_a_gain(value: str, vars_: Mapping[str, float]) -> bool:
    """Whether a ``gain`` text is meant as a calculate_gain name rather than an expression:
    a known name, anything with a ``:slope``, or a bare identifier that is no var and no fan
    name (which an expression would only report as an unknown name)."""
    name, colon, _ = value.partition(":")
    bare = name.strip()
    if bare in gain_names():
        return True
    return bool(colon) or (bare.isidentifier() and bare not in vars_ and bare not in FAN_NAMES)


def _parse_gain(value: str, path: DocPath, problem: Collector) -> float | None:
    """The gain a calculate_gain name gives (``relu``, ``leaky_relu:0.2``), or None with the
    reason reported: a slope on a function that takes none, a slope that is no usable
    number, or a name calculate_gain does not know."""
    name, _, slope = value.partition(":")
    bare = name.strip()
    if bare not in gain_names():
        hint = f"write a number, an expression, or a calculate_gain name: {', '.join(gain_names())}"
        problem(path, f"unknown gain {shorten(value)}{did_you_mean(bare, gain_names())}", hint)
        return None
    gain = _gain_name(value)
    if gain is not None:
        return gain
    if bare != "leaky_relu":
        problem(path, f"only leaky_relu takes a slope, not {bare}", f"write gain: {bare}")
        return None
    problem(
        path,
        f"the {bare} slope {slope.strip()!r} is not a usable number",
        f"write e.g. {bare}:0.2",
    )
    return None


def _parse_arg_expression(
    arg: InitArg, value: str, vars_: Mapping[str, float], path: DocPath, problem: Collector
) -> ArgValue | None:
    """An argument written as an expression. Every name in it must be a var or a fan name;
    an expression without names is evaluated now, one with names is kept for each
    parameter (its fans are known only then)."""
    try:
        expr = parse_expression(value)
    except ExpressionError as exc:
        problem(path, exc.message, "write arithmetic over numbers, vars, fan_in, fan_out, numel")
        return None
    unknown = sorted(expr.names - set(vars_) - set(FAN_NAMES))
    for n in unknown:
        choices = [*vars_, *FAN_NAMES]
        if arg.name == "gain":
            choices += list(gain_names())
        problem(
            path,
            f"unknown name {n!r} in {value!r}{did_you_mean(n, choices)}",
            "define it under `vars:`, or use fan_in, fan_out or numel",
        )
    if unknown:
        return None
    if not expr.names:
        try:
            return expr.evaluate({})
        except ExpressionError as exc:
            problem(path, exc.message, "check the arithmetic")
            return None
    return expr


def _gain_name(text: str) -> float | None:
    """``relu`` → calculate_gain('relu'); ``leaky_relu:0.2`` → calculate_gain('leaky_relu',
    0.2); None when ``text`` is not a gain name."""
    name, colon, param = text.partition(":")
    if name.strip() not in gain_names():
        return None
    p: float | None = None
    if colon:
        # Only leaky_relu takes a slope (torch.nn.init.calculate_gain); it must be finite.
        if name.strip() != "leaky_relu":
            return None
        try:
            p = float(param)
        except ValueError:
            return None
        if not math.isfinite(p):
            return None
    try:
        gain = float(torch.nn.init.calculate_gain(name.strip(), p))  # type: ignore[arg-type]
    except (OverflowError, ValueError):
        return None
    return gain if math.isfinite(gain) else None


# A rules file names a class or two by dotted path. Each one the file may name costs an
# import check (a scan of the installed distributions, 0.1 s, for a module not imported yet)
# or a did-you-mean over a module's names, so a file is held to a few, and a file with
# thousands of them is refused in milliseconds instead of checked for minutes.
MAX_TYPE_PATHS = 64
MAX_TYPE_IMPORTS = 8


def _parse_types(
    raw: Any, path: DocPath, problem: Collector
) -> tuple[tuple[str, ...], tuple[type, ...]]:
    items = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    names: list[str] = []
    classes: list[type] = []
    for j, item in enumerate(items):
        if not isinstance(item, str):
            continue
        at = path if isinstance(raw, str) else (*path, j)
        if "." in item or ":" in item:
            cls = problem.types.get(item)
            if cls is None:
                if len(problem.types) >= MAX_TYPE_PATHS:
                    problem(
                        at,
                        f"more than {MAX_TYPE_PATHS} different dotted type paths in one file",
                        "write class names (Conv2d): a name matches subclasses too",
                    )
                    continue
                cls = problem.types[item] = _import_class(item, problem.imported)
            if isinstance(cls, str):
                problem(at, cls, "write a class name (Conv2d) or an importable path")
            else:
                classes.append(cls)
        else:
            names.append(item)
    return tuple(names), tuple(classes)


def _import_class(ref: str, imported: set[str]) -> type | str:
    """The class ``ref`` names (``torch.nn.Conv2d``, ``nn.Conv2d``, ``pkg.mod:Cls``), or a
    message saying why not.

    Importing a module runs its code, and a rules file is data. So, as for a provenance
    record (:func:`initscope.io.models.record_import_problem`), a type path may name only a
    module already imported or a regular module of an installed distribution, imported with
    the working folder off the search path; never a ``.py`` beside the rules file or in the
    working folder. ``imported`` holds the modules this file made initscope import: at most
    :data:`MAX_TYPE_IMPORTS`."""
    from initscope.errors import TargetError
    from initscope.io.targets import import_ref, split_ref

    text = ref if ":" in ref else ":".join(ref.rsplit(".", 1))
    try:
        module = split_ref(text)[0]
    except TargetError as exc:
        return f"type {shorten(ref)} names no class: {exc.message[:300]}"
    if not _is_imported(module):
        if len(imported) >= MAX_TYPE_IMPORTS:
            return (
                f"type {shorten(ref)}: {module[:100]} is not imported, and one rules file "
                f"may import at most {MAX_TYPE_IMPORTS} modules for its types"
            )
        imported.add(module)
        from initscope.io.models import record_import_problem

        try:
            refused = record_import_problem(module)
        except Exception as exc:  # a parent package that fails to import
            refused = f"{module} cannot be found ({type(exc).__name__}: {exc})"
        if refused is not None:
            return (
                f"type {shorten(ref)} is not imported: {refused[:200]} (a rules file imports "
                "only installed packages)"
            )
        try:
            with _working_folder_off_path():
                importlib.import_module(module)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"[:200]
            return f"type {shorten(ref)} names no class: importing {module[:100]} failed: {why}"
    try:
        obj = import_ref(text)
    except TargetError as exc:
        return f"type {shorten(ref)} names no class: {exc.message[:300]}"
    if not isinstance(obj, type):
        return f"type {shorten(ref)} is a {type(obj).__name__}, not a class"
    return obj


def _is_imported(module: str) -> bool:
    loaded = sys.modules.get(module)
    return loaded is not None and getattr(loaded, "__file__", None) is not None


@contextmanager
def _working_folder_off_path() -> Iterator[None]:
    """sys.path without the working folder (``''`` under ``python -m``), so that an installed
    module is imported from where :func:`~initscope.io.models.record_import_problem` found it and
    not from a same-named file in the working folder."""
    here = {"", ".", os.getcwd(), os.path.realpath(os.getcwd())}
    saved = sys.path[:]
    importlib.invalidate_caches()
    try:
        sys.path[:] = [p for p in sys.path if p not in here and os.path.realpath(p) not in here]
        yield
    finally:
        sys.path[:] = saved


def fan_env(shape: tuple[int, ...]) -> dict[str, float]:
    """``fan_in``/``fan_out`` (when the tensor has them) and ``numel`` for expressions."""
    from initscope.knowledge.tracing import fans

    env = {"numel": float(math.prod(shape))}
    f = fans(shape)
    if f is not None:
        env["fan_in"], env["fan_out"] = float(f[0]), float(f[1])
    return env
