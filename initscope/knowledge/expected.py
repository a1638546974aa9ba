"""What each parameter of a report is expected to follow, and whether its values do: the
traced default (``--against default``) or a rules file's resolved distribution
(``--against rules.yaml``).

The pictures (:mod:`initscope.render.plot`, :mod:`initscope.render.html`) draw this expectation over
each histogram and mark the parameters that do not follow it. Against rules, the decision is
``check --rules``'s own: the plan from :func:`initscope.rules.plan.make_plan`, each entry's expected
distribution from :mod:`initscope.gate.check`, and the same run-wide false-alarm budget.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from initscope.errors import InitScopeError
from initscope.knowledge.distributions import Distribution
from initscope.knowledge.tracing import DefaultInit
from initscope.measure.report import ParameterReport, Report
from initscope.render.common import short_call
from initscope.rules.language import RuleSet, Unmatched, nothing_was
from initscope.rules.plan import Action, ParamSite, PlanEntry, make_plan

__all__ = [
    "Expected",
    "class_of",
    "expectations",
]


@dataclass(frozen=True)
class Expected:
    """One parameter's expectation.

    ``distribution`` is what to draw (None: nothing is known to draw); ``label`` says what it
    is (``kaiming_uniform_(a=√5) → U(±0.4472)``); ``source`` where it comes from
    (``default``, ``rules[0] (line 5)``, ``no rule``); ``follows`` whether the values follow
    it (None: too few values to tell, no values, or nothing to compare with)."""

    distribution: Distribution | None
    label: str
    source: str
    follows: bool | None

    @property
    def differs(self) -> bool:
        return self.follows is False


def _from_default(p: ParameterReport) -> Expected:
    d = p.default
    if d is None:
        return Expected(None, "no default known", "default", None)
    if not d.is_known:
        return Expected(None, f"{short_call(d)}: no distribution", "default", None)
    return Expected(
        d.distribution,
        f"{short_call(d)} → {d.label()}",
        "default",
        p.matches_default,
    )


def class_of(qualified: str | None) -> type | None:
    """The class a report names (``torch.nn.modules.conv.Conv2d``), from the modules this
    process has already imported: the report was built here, and nothing is imported anew."""
    if not qualified:
        return None
    parts = qualified.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is None:
            continue
        obj: object = module
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        return obj if isinstance(obj, type) else None
    return None


def _dtype(name: str) -> torch.dtype | None:
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def expectations(report: Report, rules: RuleSet | None = None) -> dict[str, Expected]:
    """Each parameter's expectation by name: its traced default, or with ``rules`` the
    distribution the rule covering it resolves to for its shape (a parameter no rule covers
    is expected at its default, as in ``check --rules``).

    Raises :class:`initscope.rules.language.RulesError` (file:line:col) when the rules cannot be
    planned for this model, as ``apply`` and ``check`` would."""
    if rules is None:
        return {p.name: _from_default(p) for p in report.parameters}
    from initscope.gate.check import RUN_ALPHA

    sites = _sites(report, rules)
    defaults: dict[str, DefaultInit] = {
        p.name: p.default for p in report.parameters if p.default is not None
    }
    with nothing_was("drawn"):
        plan = make_plan(
            sites,
            rules,
            unmatched=Unmatched.KEEP,
            defaults=defaults,
            resettable={s.module: True for s in sites} if report.has_model else None,
            bare=not report.has_model,
        )
    # check's budget: over the whole run, a correctly initialized model is marked with
    # probability at most RUN_ALPHA (Bonferroni over every decision).
    alpha = RUN_ALPHA / max(len(sites), 1)
    by_name: Mapping[str, ParameterReport] = {p.name: p for p in report.parameters}
    planned = {entry.site.name for entry in plan.entries}
    # Buffers and parameters no site was made for: their default.
    out = {p.name: _from_default(p) for p in report.parameters if p.name not in planned}
    for entry in plan.entries:
        p = by_name[entry.site.name]
        out[p.name] = _from_entry(entry, p, defaults, alpha)
    return out


def _sites(report: Report, rules: RuleSet) -> list[ParamSite]:
    """The report's floating-point parameters as the rules see them (buffers and integer
    tensors are no rule's). Type keys need each parameter's class, which only this
    process's imported modules can give: a report built elsewhere is refused for them."""
    sites: list[ParamSite] = []
    for p in report.parameters:
        dtype = _dtype(p.dtype)
        if p.is_buffer or dtype is None or not (dtype.is_floating_point or dtype.is_complex):
            continue
        cls = class_of(p.module_type) if report.has_model else None
        if report.has_model and cls is None and rules.uses_types:
            raise InitScopeError(
                f"cannot match the rules' type keys: class {p.module_type} of {p.name} is not "
                "imported in this process",
                "pass the model or target itself rather than a report built elsewhere",
            )
        sites.append(ParamSite(p.name, p.module, p.param, p.shape, dtype, cls))
    return sites


def _from_entry(
    entry: PlanEntry, p: ParameterReport, defaults: Mapping[str, DefaultInit], alpha: float
) -> Expected:
    """The expectation of one planned parameter, and whether its values follow it, decided
    as ``check --rules`` decides it (at level ``alpha``)."""
    from initscope.gate.check import EXACT_INITS, expected_label, expected_of
    from initscope.knowledge.identification import identify_stats

    source = entry.rule.label if entry.rule is not None else "no rule"
    expected = expected_of(entry, defaults)
    if expected is None:
        # keep, eye_/dirac_ (compared exactly by check, on the whole tensor), sparse_, or
        # no known default: drawn when there is something to draw, never marked.
        why = entry.describe()
        if entry.action is Action.INIT and entry.init in EXACT_INITS:
            why += " (exact values: not judged from a sample)"
        return Expected(entry.distribution, why, source, None)
    # The structured tests' result from the report, and the stored dtype's resolution:
    # the decision check --rules makes on the tensor itself.
    s = p.stats
    follows = (
        identify_stats(
            s,
            p.sample,
            p.shape,
            expected,
            None,
            alpha,
            structure=p.structure,
            dtype=entry.site.dtype,
        ).matches_default
        if s is not None and s.mean is not None and s.std is not None and p.sample is not None
        else None
    )
    return Expected(expected.distribution, expected_label(entry, expected), source, follows)
