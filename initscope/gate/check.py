"""``initscope check``: a CI gate on a checkpoint's (or a fresh model's) statistics.

Every tensor is read once, streamed in chunks as ``report`` does. Three kinds of checks:

- health, always (each can be turned off or tuned in an expectations file): no NaN/Inf, no
  weight of ≥ 2 dims all zeros, ``|value|`` below a bound, no uninitialized-memory patterns,
  no two untied parameters of ≥ 1,000 elements exactly equal;
- ``rules``: a parameter a rule covers follows that rule's distribution, with the rule's
  resolved numbers; one no rule covers follows its traced default;
- ``expect``: per-match bounds on std/mean/abs_max and a ``follows`` init.

"Follows" is decided by :func:`initscope.knowledge.identification.identify` against the expected
distribution: a goodness-of-fit test on a bounded sample, so a tensor too small to tell is
counted as inconclusive, never as a violation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from initscope.gate.expectations import Check, Expectations, Health
from initscope.io.models import open_target
from initscope.io.targets import TargetOptions
from initscope.knowledge.distributions import Distribution, Family, format_number
from initscope.knowledge.identification import identify
from initscope.knowledge.names import is_statistic, is_zero_by_design
from initscope.knowledge.tracing import DefaultInit, InitCall, init_distribution
from initscope.measure.pipeline import (
    Measured,
    TensorSource,
    checkpoint_source,
    measure,
    model_source,
)
from initscope.parallel.distributed import Group
from initscope.parallel.workers import ProgressFn, spread
from initscope.rules.language import RulesError, RuleSet, Unmatched, nothing_was
from initscope.rules.plan import (
    Action,
    ParamSite,
    PlanEntry,
    make_plan,
    match_problems,
    sites_from_checkpoint,
)
from initscope.stats.tensor import DEFAULT_MAX_MEMORY, RunningStats, TensorStats

__all__ = [
    "EXACT_INITS",
    "RUN_ALPHA",
    "CheckOptions",
    "CheckResult",
    "Violation",
    "check_target",
    "expected_label",
    "expected_of",
]

# Values torch.empty / skip_init leave behind are reinterpreted bit patterns: their exponents
# spread over the whole float range. No initializer produces magnitudes ≥ 1e29 or nonzero
# values below 1e-30 (the float32 normal range ends at 1.18e-38), so a sample where ≥ 1% of
# values are that tiny, or any value that large, is flagged.
_GARBAGE_HIGH = 1e29
_GARBAGE_LOW = 1e-30
_GARBAGE_FRACTION = 0.01
# float16 tops out at 65504, so its garbage never reaches 1e29: there, ≥ 1% of sampled values
# at or above 1e3 (random float16 bits land there about one time in five; no initializer
# comes near it) is the pattern. Its subnormals are legitimate small values, so no low test.
_GARBAGE_HIGH_FP16 = 1e3
# Below this many elements, two equal tensors are plausibly equal by design (a small constant
# bias in every layer); the issue names 1,000.
_IDENTICAL_MIN = 1000
# The chance that a run over a correctly initialized model reports any "follows" violation.
# Wrong inits are rejected with p-values far below any such level once a tensor has a few
# hundred values (see README, "Which init do the values actually follow?").
RUN_ALPHA = 1e-3


@dataclass(frozen=True)
class Violation:
    """One failed check: ``<parameter>: <check>: observed <x>, expected <y>``."""

    parameter: str
    check: str
    observed: str
    expected: str
    severity: str = "error"
    source: str | None = None  # which rule/check/health setting asked for it

    def line(self) -> str:
        return f"{self.parameter}: {self.check}: observed {self.observed}, expected {self.expected}"


@dataclass(frozen=True)
class _SiteResult:
    """What checking one tensor found: mergeable across processes and ranks."""

    violations: tuple[Violation, ...] = ()
    inconclusive: bool = False
    fingerprint: tuple[Any, ...] | None = None
    count: int = 0
    matched: frozenset[int] = frozenset()


@dataclass(frozen=True)
class CheckOptions:
    """What to check besides health: rules (and whether uncovered parameters must be at
    their default), and expectations."""

    rules: RuleSet | None = None
    expect: Expectations | None = None
    default_check: bool = True
    max_memory: int = DEFAULT_MAX_MEMORY  # a tensor above it is read in blocks of rows
    workers: int | None = None  # processes; None: one per core when the work is large
    group: Group | None = None  # with --distributed: this rank's place in the torchrun job


@dataclass(frozen=True)
class CheckResult:
    """Every checked parameter, the violations, and the follows-checks too small to decide."""

    target: str
    parameters: tuple[str, ...]
    violations: tuple[Violation, ...]
    inconclusive: tuple[str, ...] = ()
    checks_run: int = 0
    has_model: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> tuple[Violation, ...]:
        """The violations that fail the check (the others are warnings)."""
        return tuple(v for v in self.violations if v.severity == "error")

    @property
    def failed_parameters(self) -> int:
        """How many parameters have at least one error."""
        return len({v.parameter for v in self.errors})

    @property
    def ok(self) -> bool:
        return not self.errors


# -- one tensor ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    """One measured tensor, as the checks read it."""

    site: ParamSite
    stats: TensorStats
    rs: RunningStats
    tensor: torch.Tensor | None  # the values, when they were read whole
    measured: Measured

    @property
    def dtype(self) -> torch.dtype:
        return self.measured.dtype


def _fmt(x: float | None) -> str:
    return format_number(x, "-")


def _shown(value: float, *bounds: float | None) -> str:
    """``value`` as short as it reads right against ``bounds``: 10000.9 against a limit of
    10000 is not "1e+04" (which reads as equal), but its full repr."""
    text = _fmt(value)
    try:
        rounded = float(text)
    except ValueError:  # "-", "inf" and the like read as they are
        return text
    if any(b is not None and (rounded == b or (rounded < b) != (value < b)) for b in bounds):
        return repr(value)
    return text


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is None:
        return f"≤ {_fmt(hi)}"
    if hi is None:
        return f"≥ {_fmt(lo)}"
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _health(t: _Tensor, health: Health) -> Iterator[Violation]:
    s, name = t.stats, t.site.name
    if health.nonfinite and (s.nan_count or s.inf_count):
        yield Violation(
            name,
            "nonfinite",
            f"{s.nan_count} NaN, {s.inf_count} Inf",
            "0",
            source="health.nonfinite",
        )
    if is_statistic(name):  # running statistics are no weights: only NaN/Inf applies
        return
    if health.zeros and len(t.site.shape) >= 2 and s.numel and s.zero_fraction == 1.0:
        yield Violation(
            name, "zeros", "all zeros", "a weight of ≥ 2 dims not all zeros", source="health.zeros"
        )
    if health.abs_max is not None and s.abs_max is not None and s.abs_max >= health.abs_max:
        yield Violation(
            name,
            "abs_max",
            _shown(s.abs_max, health.abs_max),
            f"< {_fmt(health.abs_max)}",
            source="health.abs_max",
        )
    if health.uninitialized:
        sample = t.rs.sample()
        # Counts over the finite values, without gathering them (a boolean index is a
        # parallel torch op: it wakes OpenMP's threads for 4,096 values). NaN compares
        # false, and ±inf is never below _GARBAGE_LOW.
        finite = torch.isfinite(sample)
        n = int(finite.sum())
        if n:
            a = sample.abs()
            enough = max(1, _GARBAGE_FRACTION * n)
            if t.site.dtype == torch.float16:
                tiny = 0
                count = int(((a >= _GARBAGE_HIGH_FP16) & finite).sum())
                huge = count >= enough
                what = f"{count} of {n} sampled values ≥ 1e3"
            else:
                tiny = int(((a > 0) & (a < _GARBAGE_LOW)).sum())
                huge = s.abs_max is not None and s.abs_max >= _GARBAGE_HIGH
                what = f"|max| {_fmt(s.abs_max)}"
            if huge or tiny >= enough:
                observed = what if huge else f"{tiny} of {n} sampled values nonzero below 1e-30"
                yield Violation(
                    name,
                    "uninitialized",
                    observed,
                    "values an initializer draws (torch.empty/skip_init leave memory as is)",
                    source="health.uninitialized",
                )


def _follows(
    t: _Tensor, expected: DefaultInit, label: str, source: str, alpha: float
) -> tuple[Violation | None, bool]:
    """(the violation, if any; whether it was inconclusive)."""
    found = identify(
        t.rs,
        t.site.shape,
        expected,
        t.tensor,
        alpha,
        structure=t.measured.structure,
        dtype=t.dtype,
    )
    if found.matches_default is None:
        return None, True
    if found.matches_default:
        return None, False
    observed = found.fit.label
    s = t.stats
    if observed == "inconclusive" and s.min is not None:
        # Too few values to name a scheme, but enough to see they are not the constant.
        observed = f"values from {_fmt(s.min)} to {_fmt(s.max)}"
    return Violation(t.site.name, "follows", observed, label, source=source), False


def _degenerate(d: Distribution) -> Distribution:
    """normal(std=0), uniform(a, a): a constant, which is how the values look."""
    if d.family in (Family.NORMAL, Family.UNIFORM, Family.TRUNC_NORMAL) and d.std == 0:
        return Distribution.constant(d.mean if d.mean is not None else 0.0)
    return d


# Inits whose values are a fixed structure (eye_, dirac_) are compared exactly; sparse_'s
# zero pattern has no distribution to test against, so its follows-check is skipped.
EXACT_INITS = ("eye_", "dirac_")


def expected_of(entry: PlanEntry, defaults: Mapping[str, DefaultInit]) -> DefaultInit | None:
    """What a planned parameter's values must follow, as a DefaultInit: the rule's resolved
    distribution, or the traced default for ``default``/uncovered entries; None when there is
    no distribution to test against (``keep``, exact or sparse inits, no known default).
    Shared with the pictures (:mod:`initscope.knowledge.expected`), so both judge alike."""
    if entry.action is Action.INIT and entry.distribution is not None:
        if entry.init in EXACT_INITS or entry.distribution.family is Family.SPARSE:
            return None
        call = InitCall(entry.init or "init", dict(entry.args))
        return DefaultInit(call, _degenerate(entry.distribution))
    if entry.action in (Action.DEFAULT, Action.UNMATCHED):
        d = defaults.get(entry.site.name)
        return d if d is not None and d.is_known else None
    return None


def expected_label(entry: PlanEntry, expected: DefaultInit) -> str:
    """How a violation names the expectation: the rule's init, or the default's call."""
    if entry.action is Action.INIT:
        return entry.describe()
    return f"its default {expected.call.signature()} → {expected.label()}"


def _check_expect(
    t: _Tensor,
    check: Check,
    defaults: Mapping[str, DefaultInit],
    env: Mapping[str, float],
    alpha: float,
) -> tuple[list[Violation], bool]:
    out: list[Violation] = []
    s = t.stats
    src = check.label
    for key, value in (("std", s.std), ("mean", s.mean), ("abs_max", s.abs_max)):
        bounds = getattr(check, key)
        if bounds is None or value is None:
            continue
        lo, hi = bounds
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            shown = _shown(value, lo, hi)
            out.append(Violation(t.site.name, key, shown, _range_text(lo, hi), source=src))
    inconclusive = False
    if check.follows is not None:
        expected = _follows_expected(check, t.site, defaults, env)
        if expected is None:
            out.append(
                Violation(
                    t.site.name,
                    "follows",
                    "no default known",
                    check.follows_text or "default",
                    severity="warning",
                    source=src,
                )
            )
        else:
            label = f"{check.follows_text} → {expected.label()}"
            v, inconclusive = _follows(t, expected, label, src, alpha)
            if v is not None:
                out.append(v)
    return out, inconclusive


def _follows_expected(
    check: Check, site: ParamSite, defaults: Mapping[str, DefaultInit], env: Mapping[str, float]
) -> DefaultInit | None:
    rule = check.follows
    assert rule is not None
    if rule.init == "default":
        d = defaults.get(site.name)
        return d if d is not None and d.is_known else None
    from initscope.rules.expressions import Expression, ExpressionError
    from initscope.rules.language import Problem, arg_constraints, fan_env

    values = {**env, **fan_env(site.shape)}
    args: dict[str, Any] = {}
    problems: list[Problem] = []
    for k, v in rule.args.items():
        try:
            args[k] = v.evaluate(values) if isinstance(v, Expression) else v
        except ExpressionError as exc:
            missing = "fan_in/fan_out need ≥ 2 dims; " if "fan_" in exc.message else ""
            problems.append(
                Problem(
                    rule.at(k),
                    f"checks[{rule.index}].follows.{k}",
                    f"{exc.message} for {site.name}",
                    f"{missing}restrict the check or fix the expression",
                )
            )
    for key, message, hint in arg_constraints(rule.init, args) if not problems else []:
        problems.append(Problem(rule.at(key), f"checks[{rule.index}].follows.{key}", message, hint))
    if problems:
        raise RulesError(problems, _NOTHING_CHECKED)
    dist = init_distribution(rule.init, args, site.shape)
    if dist is None:
        return None
    return DefaultInit(InitCall(rule.init, args), dist)


# -- the whole target -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensors:
    """The tensors to check: one site per tensor (tied names under their first), the tied
    groups, and where their values come from."""

    sites: list[ParamSite]
    tied: list[set[str]]
    source: TensorSource


def _tensors(traced: Any, ckpt: Any) -> _Tensors:
    """The sites of a model (with or without a checkpoint) or of a bare checkpoint."""
    if traced is None:
        file_keys, every = sites_from_checkpoint(ckpt)
        sites, tied = _untied(every)
        return _Tensors(sites, tied, checkpoint_source(ckpt, file_keys))
    from initscope.rules.plan import sites_from_model

    model = traced.model
    sites, tied = _untied(sites_from_model(model))
    if ckpt is None:
        return _Tensors(sites, tied, model_source(dict(model.named_parameters())))
    from initscope.measure.report import fitted_keys

    keys = fitted_keys(model, ckpt)

    def key_of(name: str) -> str:
        # A tied name saved under another of its names reads that one.
        if name in keys:
            return str(keys[name])
        group = next(g for g in tied if name in g)
        return str(keys[next(n for n in group if n in keys)])

    return _Tensors(sites, tied, checkpoint_source(ckpt, {s.name: key_of(s.name) for s in sites}))


def _untied(sites: list[ParamSite]) -> tuple[list[ParamSite], list[set[str]]]:
    """The sites to check (one per tensor: tied names are checked under their first) and
    the tied groups of names."""
    groups: dict[str, set[str]] = {}
    for s in sites:
        if s.tied_to is not None:
            groups.setdefault(s.tied_to, {s.tied_to}).add(s.name)
    return [s for s in sites if s.tied_to is None], list(groups.values())


@dataclass(frozen=True)
class _Judge:
    """Everything that decides one tensor's verdict, the same for every tensor of a run."""

    health: Health
    entries: Mapping[str, PlanEntry]  # the rules' plan, by parameter name
    defaults: Mapping[str, DefaultInit]
    checks: Sequence[Check]
    env: Mapping[str, float]
    alpha: float  # per decision
    default_check: bool
    bare: bool  # no model: names alone say what is zero by design

    def identifies(self, site: ParamSite) -> bool:
        """Whether a verdict on ``site`` may test what its values follow (a rule's expected
        init, an expectation's ``follows``): else the structure tests' lines are not read."""
        return site.name in self.entries or any(c.follows is not None for c in self.checks)

    def wants_values(self, site: ParamSite) -> bool:
        """Whether the verdict compares values exactly (eye_, dirac_), not statistics."""
        entry = self.entries.get(site.name)
        return entry is not None and entry.action is Action.INIT and entry.init in EXACT_INITS


def _plan_entries(
    options: CheckOptions, sites: list[ParamSite], traced: Any
) -> Mapping[str, PlanEntry]:
    """The rules' plan for the sites (uncovered parameters kept), by parameter name."""
    if options.rules is None:
        return {}
    with nothing_was("checked"):
        plan = make_plan(
            sites,
            options.rules,
            unmatched=Unmatched.KEEP,
            defaults=traced.defaults if traced is not None else {},
            resettable={s.module: True for s in sites} if traced is not None else None,
            bare=traced is None,
        )
    return {e.site.name: e for e in plan.entries}


def _judge(options: CheckOptions, sites: list[ParamSite], traced: Any) -> _Judge:
    expect = options.expect
    checks = expect.checks if expect is not None else ()
    _validate_checks(checks, sites, bare=traced is None)
    # Each "follows" decision on values drawn exactly as expected still fails with
    # probability alpha; split the run's budget over every decision it may make
    # (Bonferroni), so a correct 7B checkpoint with hundreds of tensors passes too.
    decisions = len(sites) * (
        (options.rules is not None) + sum(c.follows is not None for c in checks)
    )
    return _Judge(
        health=expect.health if expect is not None else Health(),
        entries=_plan_entries(options, sites, traced),
        defaults=traced.defaults if traced is not None else {},
        checks=checks,
        env=dict(expect.vars) if expect is not None else {},
        alpha=RUN_ALPHA / max(decisions, 1),
        default_check=options.default_check,
        bare=traced is None,
    )


def _judge_rules(t: _Tensor, judge: _Judge) -> tuple[list[Violation], bool, int]:
    """The rules' verdict on one tensor: (violations, inconclusive, checks run)."""
    entry = judge.entries.get(t.site.name)
    if entry is None or (entry.action is Action.UNMATCHED and not judge.default_check):
        return [], False, 0
    found: list[Violation] = []
    count, unsure = 0, False
    if entry.action is Action.INIT and entry.init in EXACT_INITS:
        count += 1
        v = _exact(t, entry, entry.rule.label if entry.rule else "rules")
        if v is not None:
            found.append(v)
    expected = expected_of(entry, judge.defaults)
    if expected is not None:
        source = entry.rule.label if entry.rule is not None else "traced default"
        v, unsure = _follows(t, expected, expected_label(entry, expected), source, judge.alpha)
        count += 1
        if v is not None:
            found.append(v)
    return found, unsure, count


def _zeros_by_design(t: _Tensor, judge: _Judge, matched: Sequence[Check]) -> bool:
    """Whether all-zero values are what this tensor is meant to hold: a rule asks for zeros,
    an expectation says it follows zeros_/constant_, the model's own code zeroes it (a
    zero-initialized projection), or, with no model, its name is of a family zero by design
    (:data:`initscope.knowledge.names.ZERO_BY_DESIGN`)."""
    entry = judge.entries.get(t.site.name)
    if entry is not None and _is_zero_init(entry):
        return True
    if any(c.follows is not None and c.follows.init in ("zeros_", "constant_") for c in matched):
        return True
    if judge.bare and is_zero_by_design(t.site.name):
        return True
    default = judge.defaults.get(t.site.name)
    return (
        default is not None and default.is_known and _degenerate(default.distribution).value == 0.0
    )


def _fingerprint(t: _Tensor, judge: _Judge) -> tuple[Any, ...] | None:
    """What two copies of one tensor share, for the identical-tensors check; None for a
    tensor too small or constant (norm weights of 1, zero biases are equal by design), or
    computed without a draw (Mamba's A_log is log(arange) in every layer)."""
    s, health = t.stats, judge.health
    if is_statistic(t.site.name):  # equal running statistics are no copied weights
        return None
    default = judge.defaults.get(t.site.name)
    if default is not None and default.distribution.family is Family.DETERMINISTIC:
        return None
    if health.identical and s.numel >= _IDENTICAL_MIN and s.mean is not None and s.min != s.max:
        return (t.site.shape, str(t.dtype), s.mean, s.std, s.min, s.max, s.nan_count)
    return None


def evaluate(t: _Tensor, judge: _Judge) -> _SiteResult:
    """Every check on one measured tensor."""
    found = list(_health(t, judge.health))
    count = 4
    found_rules, unsure, ran = _judge_rules(t, judge)
    found += found_rules
    count += ran
    site = t.site
    matched = [
        c
        for c in judge.checks
        if c.match.matches_name(site.module, site.param, len(site.shape))
        and c.match.matches_type(site.module_class)
    ]
    for check in matched:
        vs, unsure_here = _check_expect(t, check, judge.defaults, judge.env, judge.alpha)
        count += 1
        found += vs
        unsure = unsure or unsure_here
    if _zeros_by_design(t, judge, matched):
        found = [v for v in found if v.check != "zeros"]
    return _SiteResult(
        tuple(found),
        unsure,
        _fingerprint(t, judge),
        count,
        frozenset(c.match.index for c in matched),
    )


def check_target(
    target: str,
    how: TargetOptions = TargetOptions(),
    options: CheckOptions = CheckOptions(),
    progress: ProgressFn | None = None,
) -> CheckResult:
    """Run every check on TARGET (a checkpoint, or a model built fresh)."""
    with open_target(target, how) as (traced, ckpt):
        tensors = _tensors(traced, ckpt)
        sites = tensors.sites
        judge = _judge(options, sites, traced)

        def one(i: int) -> _SiteResult:
            site = sites[i]
            source = tensors.source.readable(
                site.name, options.max_memory, judge.wants_values(site)
            )
            m = measure(
                site.name,
                source,
                max_memory=options.max_memory,
                structure=judge.identifies(site),
            )
            if m.stats is None:  # on the meta device: no values to check
                return _SiteResult()
            return evaluate(_Tensor(site, m.stats.result(), m.stats, m.values, m), judge)

        results = spread(
            one,
            [math.prod(s.shape) for s in sites],
            workers=options.workers,
            max_memory=options.max_memory,
            group=options.group,
            nbytes=[math.prod(s.shape) * s.dtype.itemsize for s in sites],
            progress=progress,
        )
        return _result(target, traced is not None, sites, results, judge, tensors)


def _result(
    target: str,
    has_model: bool,
    sites: Sequence[ParamSite],
    results: Sequence[_SiteResult],
    judge: _Judge,
    tensors: _Tensors,
) -> CheckResult:
    """The run's result from each tensor's: the identical-copies check across tensors, and
    a note for each expectation that matched nothing (usually a typo)."""
    violations: list[Violation] = []
    inconclusive: list[str] = []
    fingerprints: dict[tuple[Any, ...], list[str]] = {}
    matched: set[int] = set()
    for site, result in zip(sites, results, strict=True):
        violations += result.violations
        matched |= result.matched
        if result.inconclusive:
            inconclusive.append(site.name)
        if result.fingerprint is not None:
            fingerprints.setdefault(result.fingerprint, []).append(site.name)
    if judge.health.identical:
        violations += _identical(fingerprints, tensors.source.load, tensors.tied)
    notes = tuple(
        f"{c.match.where}: {c.label} matched no parameter; check its type/name/param "
        "(usually a typo)"
        for c in judge.checks
        if c.match.index not in matched
    )
    return CheckResult(
        target,
        tuple(s.name for s in sites),
        tuple(violations),
        tuple(dict.fromkeys(inconclusive)),
        sum(r.count for r in results),
        has_model,
        notes,
    )


_NOTHING_CHECKED = "in the expectations; nothing was checked"


def _validate_checks(checks: Sequence[Check], sites: Sequence[ParamSite], *, bare: bool) -> None:
    """Expectations that cannot mean anything for this target: unknown type names, types
    on a bare state dict, an init that cannot describe a tensor it matches."""
    from dataclasses import replace

    rules = []
    for c in checks:
        rule = c.match
        if c.follows is not None:
            rule = replace(
                c.match,
                init=c.follows.init,
                arg_paths={**c.match.arg_paths, "init": c.follows.where},
            )
        rules.append(rule)
    problems = match_problems(rules, sites, bare=bare)
    if problems:
        raise RulesError(problems, _NOTHING_CHECKED)


def _is_zero_init(entry: PlanEntry) -> bool:
    d = entry.distribution
    if entry.init == "sparse_":
        return True  # sparsity 1 zeroes everything, on purpose
    return d is not None and _degenerate(d).value == 0.0


def _exact(t: _Tensor, entry: PlanEntry, source: str) -> Violation | None:
    """eye_/dirac_: the values must be exactly what the function writes."""
    assert entry.init is not None
    from initscope.rules.language import init_functions

    if t.tensor is None:
        return None  # read in pieces: too large to hold twice
    want = init_functions()[entry.init](torch.empty(t.site.shape), **dict(entry.args))
    if torch.equal(t.tensor.to(torch.float32), want):
        return None
    return Violation(t.site.name, "follows", "other values", entry.describe(), source=source)


def _identical(
    fingerprints: Mapping[tuple[Any, ...], Sequence[str]],
    load: Callable[[str], torch.Tensor],
    tied: Sequence[set[str]],
) -> list[Violation]:
    """Parameters with equal statistics, confirmed equal value by value (and not tied)."""
    out: list[Violation] = []
    for names in fingerprints.values():
        if len(names) < 2:
            continue
        first = names[0]
        a = load(first)
        for other in names[1:]:
            if any(first in g and other in g for g in tied):
                continue
            if torch.equal(a, load(other)):
                out.append(
                    Violation(
                        other,
                        "identical",
                        f"equal to {first}",
                        "independently initialized values (not a copy)",
                        source="health.identical",
                    )
                )
    return out
