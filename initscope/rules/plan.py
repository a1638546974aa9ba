"""Matching rules to parameters: the plan ``initscope apply`` carries out, or prints.

:func:`make_plan` decides, for every parameter, the first rule that matches it, resolves the
rule's arguments to numbers for that parameter's shape (``fan_in``, expressions, gain names)
and checks that the init can apply at all (xavier on a 1-D bias cannot). Every problem is
collected before one :class:`~initscope.rules.language.RulesError` is raised, so a user fixes
the file in one go. Nothing here changes a tensor.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import torch

from initscope.io.yamlio import did_you_mean
from initscope.knowledge.distributions import Distribution, Family
from initscope.knowledge.tracing import DefaultInit, init_distribution
from initscope.naming import dtype_name, split_name
from initscope.rules.expressions import Expression, ExpressionError
from initscope.rules.language import (
    InitFunction,
    Problem,
    Rule,
    RulesError,
    RuleSet,
    Unmatched,
    arg_constraints,
    fan_env,
    init_functions,
)

if TYPE_CHECKING:
    from initscope.io.checkpoints import Checkpoint

__all__ = [
    "Action",
    "ParamSite",
    "Plan",
    "PlanEntry",
    "TieConflict",
    "make_plan",
    "shape_tuple",
    "sites_from_model",
    "sites_from_tensors",
]

# torch/nn/init.py: _calculate_fan_in_and_fan_out raises below 2 dims; orthogonal_ needs ≥ 2,
# eye_ and sparse_ exactly 2, dirac_ 3 to 5 ("Only tensors with 3, 4, or 5 dimensions").
_FAN_HINT = (
    "restrict the rule (param: weight, or ndim: [2, 5]) and give biases and other 1-D "
    "tensors a rule with init: zeros, ones or uniform"
)
_DIMS: Mapping[str, tuple[int, int, str, str]] = {
    "xavier_uniform_": (2, 99, "fan_in/fan_out need ≥ 2 dims", _FAN_HINT),
    "xavier_normal_": (2, 99, "fan_in/fan_out need ≥ 2 dims", _FAN_HINT),
    "kaiming_uniform_": (2, 99, "fan_in/fan_out need ≥ 2 dims", _FAN_HINT),
    "kaiming_normal_": (2, 99, "fan_in/fan_out need ≥ 2 dims", _FAN_HINT),
    "orthogonal_": (2, 99, "orthogonal needs ≥ 2 dims", _FAN_HINT),
    "eye_": (
        2,
        2,
        "eye needs exactly 2 dims",
        "restrict the rule with ndim: 2; for conv weights, dirac is the identity",
    ),
    "sparse_": (2, 2, "sparse needs exactly 2 dims", "restrict the rule with ndim: 2"),
    "dirac_": (
        3,
        5,
        "dirac needs 3 to 5 dims (conv weights)",
        "restrict the rule with ndim: [3, 5]; for matrices, eye is the identity",
    ),
}
# The torch.nn.init functions whose every refusal is checked here (dims, argument values,
# dirac's groups) rather than by trying them.
_CHECKED = frozenset(
    {
        "uniform_",
        "normal_",
        "trunc_normal_",
        "constant_",
        "ones_",
        "zeros_",
        "eye_",
        "dirac_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "orthogonal_",
        "sparse_",
    }
)
_BIAS_HINT = "for biases use init: zeros or uniform (inits built on fans need ≥ 2 dims)"


class Action(str, Enum):
    """What apply does to one parameter."""

    INIT = "init"  # a torch.nn.init function with resolved arguments
    DEFAULT = "default"  # the module's own default init, re-run
    KEEP = "keep"  # a rule says leave it
    UNMATCHED = "unmatched"  # no rule matched, and the unmatched policy keeps it
    TIED = "tied"  # shares its tensor with an earlier parameter, initialized with that one

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ParamSite:
    """A parameter as the rules see it: names, shape, dtype and its module's class."""

    name: str
    module: str
    param: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    module_class: type | None = None  # None in a bare state dict
    tied_to: str | None = None  # the earlier name this one shares its tensor with


@dataclass(frozen=True)
class PlanEntry:
    """The decision for one parameter."""

    site: ParamSite
    action: Action
    rule: Rule | None = None
    init: str | None = None  # torch.nn.init function name, for INIT
    args: Mapping[str, float | int | str] = field(default_factory=dict)
    distribution: Distribution | None = None
    default_via: str | None = None  # for DEFAULT: "traced" or "reset_parameters"
    default_call: str | None = None  # for DEFAULT via traced: the call it re-runs

    @property
    def changes(self) -> bool:
        return self.action in (Action.INIT, Action.DEFAULT)

    def describe(self) -> str:
        """``xavier_uniform_(gain=1) → U(±0.2357)``, ``default → …``, ``keep``, …"""
        dist = f" → {self.distribution.label()}" if self.distribution is not None else ""
        if self.action is Action.INIT:
            args = ", ".join(f"{k}={_fmt(v)}" for k, v in self.args.items())
            return f"{self.init}({args}){dist}"
        if self.action is Action.DEFAULT:
            if self.default_via == "reset_parameters":
                return "default → reset_parameters()"
            return f"default{dist}" + (f" ({self.default_call})" if self.default_call else "")
        if self.action is Action.TIED:
            return f"tied to {self.site.tied_to}"
        if self.action is Action.KEEP:
            return "keep"
        return "no rule: kept"


def _fmt(v: float | int | str) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


@dataclass(frozen=True)
class TieConflict:
    """Two names of one tied tensor that different rules would initialize differently."""

    name: str
    tied_to: str
    rule: Rule | None
    winner: Rule | None


@dataclass(frozen=True)
class Plan:
    """Every parameter's decision, and what the rules missed."""

    entries: tuple[PlanEntry, ...]
    rules: RuleSet
    seed: int
    unmatched_policy: Unmatched
    unused: tuple[Rule, ...]
    conflicts: tuple[TieConflict, ...] = ()

    @property
    def unmatched(self) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.entries if e.rule is None and e.action is not Action.TIED)

    @property
    def changed(self) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.entries if e.changes)

    def warnings(self) -> list[str]:
        """Rules that matched nothing and ties the rules disagree on, one line each."""
        out = [
            f"{r.where}: {r.label} matched no parameter; check its type/name/param (usually a typo)"
            for r in self.unused
        ]
        for c in self.conflicts:
            if c.winner is None:
                assert c.rule is not None
                out.append(
                    f"{c.name} is tied to {c.tied_to}, which no rule covers: {c.rule.label} "
                    f"is not applied, since the shared tensor follows {c.tied_to}"
                )
            elif c.rule is None:
                out.append(
                    f"{c.name} is tied to {c.tied_to}: the shared tensor is initialized by "
                    f"{c.winner.label}, though no rule matches {c.name}"
                )
            else:
                out.append(
                    f"{c.name} is tied to {c.tied_to}: {c.rule.label} would init it "
                    f"differently from {c.winner.label}; the shared tensor is initialized "
                    f"once, by {c.winner.label}"
                )
        return out


# -- sites ---------------------------------------------------------------------------------


def sites_from_model(model: torch.nn.Module) -> list[ParamSite]:
    """Every floating-point parameter of ``model`` in ``named_parameters`` order, tied names
    included (integer parameters, as in quantized models, are not initializable)."""
    first: dict[int, str] = {}
    sites: list[ParamSite] = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if not (p.dtype.is_floating_point or p.dtype.is_complex):
            continue
        module, param = split_name(name)
        cls = type(model.get_submodule(module))
        tied = first.get(id(p))
        first.setdefault(id(p), name)
        sites.append(ParamSite(name, module, param, tuple(p.shape), p.dtype, cls, tied))
    return sites


def sites_from_tensors(
    infos: Mapping[str, tuple[tuple[int, ...], torch.dtype]], aliases: Mapping[str, str]
) -> list[ParamSite]:
    """The floating-point tensors of a bare state dict (integer buffers such as
    ``num_batches_tracked`` are not initializable and are left out)."""
    sites: list[ParamSite] = []
    for name, (shape, dtype) in infos.items():
        if not dtype.is_floating_point:
            continue
        module, param = split_name(name)
        sites.append(ParamSite(name, module, param, shape, dtype, None, aliases.get(name)))
    return sites


def sites_from_checkpoint(ckpt: Checkpoint) -> tuple[dict[str, str], list[ParamSite]]:
    """A bare checkpoint's tensors as sites (see :func:`sites_from_tensors`), named as
    :meth:`Checkpoint.keyed` names them, with those names' saved keys."""
    keys = ckpt.keyed()
    name_of = {k: n for n, k in keys.items()}
    infos = {n: (ckpt.infos[k].shape, ckpt.infos[k].dtype) for n, k in keys.items()}
    aliases = {name_of[a]: name_of[f] for a, f in ckpt.aliases.items()}
    return keys, sites_from_tensors(infos, aliases)


# -- planning ------------------------------------------------------------------------------


class _Problems:
    """Problems grouped by (where, message) so one bad rule over 50 biases is one line."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str, str, str | None], list[str]] = {}
        self.messages: dict[tuple[str, str, str, str | None], str] = {}

    def add(
        self,
        where: str,
        path: str,
        message: str,
        hint: str | None,
        name: str,
        kind: str | None = None,
    ) -> None:
        """``kind`` groups messages that differ only in a number (the first one is shown)."""
        key = (where, path, kind or message, hint)
        self.messages.setdefault(key, message)
        self.groups.setdefault(key, []).append(name)

    def problems(self) -> list[Problem]:
        out = []
        for key, names in self.groups.items():
            where, path, _, hint = key
            message = self.messages[key]
            shown = ", ".join(names[:3])
            if len(names) > 3:
                shown += f" and {len(names) - 3} more"
            out.append(Problem(where, path, message.replace("{name}", shown), hint))
        return out


def _known_type_names(modules: Sequence[type]) -> set[str]:
    names = {k.__name__ for cls in modules for k in cls.__mro__}
    names |= {n for n in dir(torch.nn) if isinstance(getattr(torch.nn, n, None), type)}
    return names


def _type_problems(
    rules: Sequence[Rule], sites: Sequence[ParamSite], bare: bool, found: _Problems
) -> set[int]:
    """Type names no class of the model (or torch.nn) has, and type rules on a bare state
    dict: added to ``found``; the indices of the rules they make unusable returned."""
    broken: set[int] = set()
    classes = [s.module_class for s in sites if s.module_class is not None]
    known = _known_type_names(classes)
    for r in rules:
        if bare and r.has_type:
            found.add(
                r.at("type"),
                f"{r.section}[{r.index}].type",
                "this rule matches by type, but the target is a bare state dict without "
                "module types",
                "pass --model pkg.module:Class or --spec FILE so types are known (a model "
                "folder with its config.json knows them too), or match by name/param/ndim",
                "",
            )
            broken.add(r.index)
            continue
        for t in r.type_names:
            if t not in known:
                found.add(
                    r.at("type"),
                    f"{r.section}[{r.index}].type",
                    f"type {t!r} names no class in the model or torch.nn{did_you_mean(t, known)}",
                    "write a module class name such as Conv2d, or a dotted path",
                    "",
                )
                broken.add(r.index)
    return broken


def match_problems(
    rules: Sequence[Rule], sites: Sequence[ParamSite], *, bare: bool
) -> list[Problem]:
    """The problems of rules' match keys against a model: unknown type names, and types on a
    bare state dict; also, for rules whose init is a torch function, inits that cannot
    apply to a tensor they match (xavier on a bias). Used for expectations files."""
    found = _Problems()
    _type_problems(rules, sites, bare, found)
    if found.groups:
        return found.problems()
    for r in rules:
        dims = _DIMS.get(r.init)
        if dims is None:
            continue
        for site in sites:
            if (
                r.matches_name(site.module, site.param, len(site.shape))
                and r.matches_type(site.module_class)
                and not dims[0] <= len(site.shape) <= dims[1]
            ):
                found.add(
                    r.at("init"),
                    f"{r.section}[{r.index}].follows",
                    f"{r.init.removesuffix('_')} cannot describe {{name}}: {dims[2]}",
                    "restrict the check (param: weight, or ndim), or expect zeros/uniform",
                    f"{site.name} {shape_tuple(site.shape)}",
                )
    return found.problems()


def make_plan(
    sites: Sequence[ParamSite],
    rules: RuleSet,
    *,
    seed: int | None = None,
    unmatched: Unmatched | None = None,
    defaults: Mapping[str, DefaultInit] | None = None,
    resettable: Mapping[str, bool] | None = None,
    bare: bool = False,
) -> Plan:
    """Decide every parameter's init; raise :class:`RulesError` with every problem.

    ``defaults`` are the traced default inits (by parameter name) and ``resettable`` says
    which module paths have ``reset_parameters``: together they decide whether ``default``
    can be carried out. ``bare`` means the sites come from a state dict without a model.
    """
    policy = unmatched or rules.unmatched
    found = _Problems()
    broken = _type_problems(rules.rules, sites, bare, found)
    # Rules with an unusable type are left out of matching, so the problems of the other
    # rules are found in the same run.
    active = [r for r in rules.rules if r.index not in broken]
    how = _Decide(policy, rules.vars, defaults, resettable, found)
    matched = _match_sites(sites, active, how)
    problems = found.problems()
    if matched.missed:
        problems.append(_unmatched_problem(matched.missed, rules, unmatched))
    if problems:
        raise RulesError(problems)
    unused = tuple(r for r in rules.rules if r.index not in matched.used)
    return Plan(
        matched.entries,
        rules,
        seed if seed is not None else (rules.seed if rules.seed is not None else 0),
        policy,
        unused,
        matched.conflicts,
    )


@dataclass(frozen=True)
class _Decide:
    """What decides an untied parameter's entry besides its rule: the unmatched policy, the
    file's vars, the traced defaults and resettable modules; problems go to ``found``."""

    policy: Unmatched
    vars: Mapping[str, float]
    defaults: Mapping[str, DefaultInit] | None
    resettable: Mapping[str, bool] | None
    found: _Problems


@dataclass(frozen=True)
class _Matching:
    """Every parameter's entry, in order, with what the matching found on the way: the
    indices of the rules that matched something, the parameters no rule matched under
    ``unmatched: error`` (``name (shape)``), and tied names the rules disagree on."""

    entries: tuple[PlanEntry, ...]
    used: frozenset[int]
    missed: tuple[str, ...]
    conflicts: tuple[TieConflict, ...]


def _match_sites(sites: Sequence[ParamSite], active: Sequence[Rule], how: _Decide) -> _Matching:
    """Match each parameter to the first rule that covers it and decide its entry. A name
    tied to an earlier one is initialized with that one: it gets a TIED entry, and a
    :class:`TieConflict` when its own rule would differ from the earlier name's."""
    used: set[int] = set()
    entries: list[PlanEntry] = []
    by_name: dict[str, PlanEntry] = {}
    first_rule: dict[str, Rule | None] = {}
    conflicts: list[TieConflict] = []
    missed: list[str] = []
    for site in sites:
        rule = _first_match(site, active)
        first_rule[site.name] = rule
        if rule is not None:
            used.add(rule.index)
        if site.tied_to is not None and site.tied_to in by_name:
            winner = first_rule.get(site.tied_to)
            if _differ(rule, winner):
                conflicts.append(TieConflict(site.name, site.tied_to, rule, winner))
            entry = PlanEntry(site, Action.TIED, rule)
        else:
            if rule is None and how.policy is Unmatched.ERROR:
                missed.append(f"{site.name} {shape_tuple(site.shape)}")
            entry = _entry(site, rule, how)
        entries.append(entry)
        by_name.setdefault(site.name, entry)
    return _Matching(tuple(entries), frozenset(used), tuple(missed), tuple(conflicts))


def _first_match(site: ParamSite, active: Sequence[Rule]) -> Rule | None:
    """The first rule, in file order, whose match keys cover the parameter: the first match
    wins, as the rules file documents."""
    return next(
        (
            r
            for r in active
            if r.matches_name(site.module, site.param, len(site.shape))
            and r.matches_type(site.module_class)
        ),
        None,
    )


def _entry(site: ParamSite, rule: Rule | None, how: _Decide) -> PlanEntry:
    """The entry of an untied parameter: by the unmatched policy when no rule matches it,
    else by its rule's init (keep, default, or a torch.nn.init function resolved for it)."""
    if rule is None:
        if how.policy is Unmatched.DEFAULT:
            return _default(site, None, how.defaults, how.resettable, how.found)
        return PlanEntry(site, Action.UNMATCHED)
    if rule.init == "keep":
        return PlanEntry(site, Action.KEEP, rule)
    if rule.init == "default":
        return _default(site, rule, how.defaults, how.resettable, how.found)
    return _resolve(site, rule, how.vars, how.found)


def _unmatched_problem(
    missed: Sequence[str], rules: RuleSet, unmatched: Unmatched | None
) -> Problem:
    """The one problem for every parameter no rule matches under ``unmatched: error``, placed
    at the file's ``unmatched:`` key or at ``--unmatched error`` when the option set it."""
    shown = ", ".join(missed[:3]) + (f" and {len(missed) - 3} more" if len(missed) > 3 else "")
    where = rules.unmatched_where if unmatched is None else "--unmatched error"
    return Problem(
        where,
        "unmatched" if unmatched is None else "",
        f"no rule matches {len(missed)} parameter{'s' if len(missed) != 1 else ''}: {shown}",
        "add rules for them (`init: keep` leaves one as it is), or set unmatched: keep",
    )


def _differ(a: Rule | None, b: Rule | None) -> bool:
    if a is None or b is None:
        return a is not b
    return a.index != b.index and (a.init, dict(a.args)) != (b.init, dict(b.args))


def _resolve(
    site: ParamSite, rule: Rule, vars_: Mapping[str, float], found: _Problems
) -> PlanEntry:
    """The INIT entry of a parameter whose rule names a torch.nn.init function: its
    arguments resolved to numbers for the parameter's shape, and the distribution they
    draw from. Each step stops at its first problem (added to ``found``), and the entry is
    then left without arguments: the plan is refused anyway."""
    fn = init_functions()[rule.init]
    if not _fits_dims(site, rule, found):
        return PlanEntry(site, Action.INIT, rule, rule.init)
    args = _resolve_args(site, rule, vars_, found)
    if args is None or not _args_allowed(site, rule, args, found):
        return PlanEntry(site, Action.INIT, rule, rule.init)
    trial = _try_init(fn, rule, site.shape, args)
    if trial.error is not None:
        found.add(
            rule.at("init"),
            _label(rule),
            f"torch.nn.init.{rule.init} refuses {{name}}: {trial.error}",
            "change the rule's arguments or restrict what it matches",
            _who(site),
        )
        return PlanEntry(site, Action.INIT, rule, rule.init)
    if _beyond_dtype(site, rule, trial.distribution, found):
        return PlanEntry(site, Action.INIT, rule, rule.init)
    return PlanEntry(site, Action.INIT, rule, rule.init, args, trial.distribution)


def _label(rule: Rule) -> str:
    """``rules[2]``: the document path of a rule, the start of each problem's path."""
    return f"{rule.section}[{rule.index}]"


def _who(site: ParamSite) -> str:
    """``name (shape)``: how a problem names the parameter it is about."""
    return f"{site.name} {shape_tuple(site.shape)}"


def _fits_dims(site: ParamSite, rule: Rule, found: _Problems) -> bool:
    """Whether the init can take a tensor of the parameter's number of dims (xavier on a
    1-D bias cannot); if not, reported with a hint for biases when the rule matches them."""
    dims = _DIMS.get(rule.init)
    if dims is None or dims[0] <= len(site.shape) <= dims[1]:
        return True
    hint = dims[3]
    if dims[3] is _FAN_HINT and rule.param != "*" and fnmatch.fnmatchcase("bias", rule.param):
        hint = _BIAS_HINT
    found.add(
        rule.at("init"),
        f"{_label(rule)}.init",
        f"{rule.init.removesuffix('_')} cannot initialize {{name}}: {dims[2]}",
        hint,
        _who(site),
    )
    return False


def _resolve_args(
    site: ParamSite, rule: Rule, vars_: Mapping[str, float], found: _Problems
) -> dict[str, float | int | str] | None:
    """The rule's arguments for this parameter: each expression evaluated over the vars and
    the parameter's fans, constants as they are. None when an expression cannot be: it
    uses a fan the shape has none of, or its arithmetic fails (division by zero)."""
    env = {**vars_, **fan_env(site.shape)}
    label, who = _label(rule), _who(site)
    args: dict[str, float | int | str] = {}
    for key, value in rule.args.items():
        if not isinstance(value, Expression):
            args[key] = value
            continue
        missing = sorted(value.names - set(env))
        if missing:
            found.add(
                rule.at(key),
                f"{label}.{key}",
                f"{value.text!r} uses {', '.join(missing)}, undefined for {{name}}: "
                "fan_in/fan_out need ≥ 2 dims",
                "restrict the rule (param: weight or ndim: [2, 5]) or use numel",
                who,
            )
            return None
        try:
            args[key] = value.evaluate(env)
        except ExpressionError as exc:
            found.add(
                rule.at(key),
                f"{label}.{key}",
                f"{exc.message} for {{name}}",
                "fix the expression",
                who,
            )
            return None
    return args


def _args_allowed(
    site: ParamSite, rule: Rule, args: Mapping[str, float | int | str], found: _Problems
) -> bool:
    """Whether the resolved arguments are ones torch accepts for this parameter: the value
    constraints (:func:`arg_constraints`, the first broken one reported), and dirac's
    groups dividing dim 0."""
    label, who = _label(rule), _who(site)
    for key, message, hint in arg_constraints(rule.init, args):
        found.add(rule.at(key), f"{label}.{key}", f"{message} for {{name}}", hint, who, key)
        return False
    if rule.init == "dirac_" and site.shape[0] % int(args.get("groups", 1)) != 0:
        # torch/nn/init.py dirac_: "dim 0 must be divisible by groups".
        found.add(
            rule.at("groups"),
            f"{label}.groups",
            "dirac needs dim 0 divisible by groups, not so for {name}",
            "use a groups that divides the output channels",
            who,
        )
        return False
    return True


@dataclass(frozen=True)
class _Trial:
    """What trying an init on a stand-in tensor found: the distribution it draws from
    (None when unknown), or ``error``, torch's refusal on one line of at most 200
    characters."""

    distribution: Distribution | None = None
    error: str | None = None


def _try_init(
    fn: InitFunction, rule: Rule, shape: tuple[int, ...], args: Mapping[str, float | int | str]
) -> _Trial:
    """Whatever else torch itself refuses, and the distribution the init draws from.

    The functions whose every refusal :func:`_fits_dims` and :func:`_args_allowed` check
    (``_CHECKED``) are run for real on empty tensors only (they return at once); any other
    init function (a newer torch's) on a meta tensor of the same shape. (On meta, torch
    imports its Python decompositions, seconds on first use, and skips the value checks
    those steps do.)"""
    try:
        if rule.init not in _CHECKED or math.prod(shape) == 0:
            device = "cpu" if math.prod(shape) == 0 else "meta"
            fn(torch.empty(shape, device=device), **args)
        return _Trial(distribution=init_distribution(rule.init, args, shape))
    except Exception as exc:
        return _Trial(error=" ".join(str(exc).split())[:200])


def _beyond_dtype(site: ParamSite, rule: Rule, dist: Distribution | None, found: _Problems) -> bool:
    """Whether the init would write values beyond the largest finite number of the
    parameter's floating dtype (they would become inf); reported if so."""
    reach = _reach(dist)
    if reach is None or not site.dtype.is_floating_point:
        return False
    limit = torch.finfo(site.dtype).max
    if reach <= limit:
        return False
    found.add(
        rule.at("init"),
        _label(rule),
        f"{rule.init.removesuffix('_')} would write values up to {reach:.3g} into "
        f"{{name}}, beyond {dtype_name(site.dtype)}'s {limit:.3g}",
        "use smaller numbers (they would become inf)",
        _who(site),
        "reach",
    )
    return True


def _reach(d: Distribution | None) -> float | None:
    """How far from 0 the values may land: the bounds, or 10 std beyond the mean for a
    normal (a draw past 10σ has probability 1.5e-23)."""
    if d is None:
        return None
    if d.low is not None and d.high is not None:
        return max(abs(d.low), abs(d.high))
    if d.value is not None and d.family is Family.CONSTANT:
        return abs(d.value)
    if d.mean is not None and d.std is not None:
        return abs(d.mean) + 10 * d.std
    return None


# The families a traced default can be re-drawn from with a torch.nn.init function.
_REDRAWABLE = (Family.UNIFORM, Family.NORMAL, Family.TRUNC_NORMAL, Family.CONSTANT)


def _default(
    site: ParamSite,
    rule: Rule | None,
    defaults: Mapping[str, DefaultInit] | None,
    resettable: Mapping[str, bool] | None,
    found: _Problems,
) -> PlanEntry:
    d = (defaults or {}).get(site.name)
    if (
        d is not None
        and d.is_known
        and not d.partial
        and d.distribution.family in _REDRAWABLE
        and d.distribution.std is not None
    ):
        return PlanEntry(
            site,
            Action.DEFAULT,
            rule,
            distribution=d.distribution,
            default_via="traced",
            default_call=d.call.signature(),
        )
    if (resettable or {}).get(site.module):
        return PlanEntry(site, Action.DEFAULT, rule, default_via="reset_parameters")
    where = rule.at("init") if rule is not None else "unmatched: default"
    path = f"{rule.section}[{rule.index}].init" if rule is not None else "unmatched"
    reason = (
        "the target is a bare state dict"
        if site.module_class is None
        else "its module has no reset_parameters() and its traced default is not a plain "
        "distribution"
    )
    found.add(
        where,
        path,
        f"no default init is known for {{name}}: {reason}",
        "give it an explicit init, or pass --model/--spec so the default can be traced"
        if site.module_class is None
        else "give it an explicit init",
        f"{site.name} {shape_tuple(site.shape)}",
    )
    return PlanEntry(site, Action.DEFAULT, rule)


def shape_tuple(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
