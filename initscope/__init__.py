"""initscope: inspect, explain and check how a PyTorch model's parameters are initialized.

The public API is re-exported here. Names are imported on first use, so ``import initscope``
(and ``initscope --help``) stay fast and do not import torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "initscope.errors",
    "InitScopeError": "initscope.errors",
    "SpecError": "initscope.errors",
    "TargetError": "initscope.errors",
    "UnsafeLoadRequired": "initscope.errors",
    "Checkpoint": "initscope.checkpoints",
    "TensorInfo": "initscope.checkpoints",
    "atomic_write": "initscope.output",
    "OutputError": "initscope.output",
    "open_checkpoint": "initscope.checkpoints",
    "Distribution": "initscope.distributions",
    "Family": "initscope.distributions",
    "DefaultInit": "initscope.tracing",
    "InitCall": "initscope.tracing",
    "InitTracer": "initscope.tracing",
    "fans": "initscope.tracing",
    "Fit": "initscope.identification",
    "Identification": "initscope.identification",
    "identify": "initscope.identification",
    "TracedModel": "initscope.models",
    "trace_model": "initscope.models",
    "ModelSpec": "initscope.targets",
    "TargetOptions": "initscope.targets",
    "resolve_target": "initscope.targets",
    "open_target": "initscope.models",
    "import_ref": "initscope.targets",
    "load_spec": "initscope.targets",
    "RunningStats": "initscope.stats",
    "TensorStats": "initscope.stats",
    "tensor_stats": "initscope.stats",
    "ParameterReport": "initscope.report",
    "Report": "initscope.report",
    "ReportOptions": "initscope.report",
    "build_report": "initscope.report",
    "report_checkpoint": "initscope.report",
    "report_model": "initscope.report",
    "Explanation": "initscope.explanation",
    "ParamExplanation": "initscope.explanation",
    "explain": "initscope.explanation",
    "OutputFormat": "initscope.render",
    "render_report": "initscope.render",
    "render_explanation": "initscope.render",
    "report_to_dict": "initscope.render",
    "InitScopeWarning": "initscope.errors",
    "ApplyOptions": "initscope.apply",
    "ApplyResult": "initscope.apply",
    "apply_rules": "initscope.apply",
    "apply_target": "initscope.apply",
    "derive_seed": "initscope.apply",
    "plan_target": "initscope.apply",
    "Rule": "initscope.rules",
    "RuleSet": "initscope.rules",
    "RulesError": "initscope.rules",
    "Unmatched": "initscope.rules",
    "load_rules": "initscope.rules",
    "RULES_SCHEMA": "initscope.rules_schema",
    "Action": "initscope.plan",
    "Plan": "initscope.plan",
    "PlanEntry": "initscope.plan",
    "make_plan": "initscope.plan",
    "Provenance": "initscope.saving",
    "save_state_dict": "initscope.saving",
    "render_apply": "initscope.render_plan",
    "parse_expression": "initscope.expressions",
    "CheckOptions": "initscope.check",
    "CheckResult": "initscope.check",
    "Violation": "initscope.check",
    "check_target": "initscope.check",
    "Expectations": "initscope.expect",
    "load_expectations": "initscope.expect",
    "render_check": "initscope.render_check",
    "DiffEntry": "initscope.diff",
    "DiffResult": "initscope.diff",
    "diff_targets": "initscope.diff",
    "render_diff": "initscope.diff",
    "plot": "initscope.plotting",
    "ImageFormat": "initscope.plotting",
    "MissingDependency": "initscope.plotting",
    "render_html": "initscope.html_report",
    "Expected": "initscope.expected",
    "expectations": "initscope.expected",
    "Panel": "initscope.panels",
    "make_panels": "initscope.panels",
    "Histogram": "initscope.histogram",
    "Density": "initscope.histogram",
    "sparkline": "initscope.histogram",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from initscope.apply import (
        ApplyOptions,
        ApplyResult,
        apply_rules,
        apply_target,
        derive_seed,
        plan_target,
    )
    from initscope.check import CheckOptions, CheckResult, Violation, check_target
    from initscope.checkpoints import Checkpoint, TensorInfo, open_checkpoint
    from initscope.diff import DiffEntry, DiffResult, diff_targets, render_diff
    from initscope.distributions import Distribution, Family
    from initscope.errors import (
        CheckpointError,
        InitScopeError,
        InitScopeWarning,
        SpecError,
        TargetError,
        UnsafeLoadRequired,
    )
    from initscope.expect import Expectations, load_expectations
    from initscope.expected import Expected, expectations
    from initscope.explanation import Explanation, ParamExplanation, explain
    from initscope.expressions import parse_expression
    from initscope.histogram import Density, Histogram, sparkline
    from initscope.html_report import render_html
    from initscope.identification import Fit, Identification, identify
    from initscope.models import TracedModel, open_target, trace_model
    from initscope.output import OutputError, atomic_write
    from initscope.panels import Panel, make_panels
    from initscope.plan import Action, Plan, PlanEntry, make_plan
    from initscope.plotting import ImageFormat, MissingDependency, plot
    from initscope.render import OutputFormat, render_explanation, render_report, report_to_dict
    from initscope.render_check import render_check
    from initscope.render_plan import render_apply
    from initscope.report import (
        ParameterReport,
        Report,
        ReportOptions,
        build_report,
        report_checkpoint,
        report_model,
    )
    from initscope.rules import Rule, RulesError, RuleSet, Unmatched, load_rules
    from initscope.rules_schema import RULES_SCHEMA
    from initscope.saving import Provenance, save_state_dict
    from initscope.stats import RunningStats, TensorStats, tensor_stats
    from initscope.targets import (
        ModelSpec,
        TargetOptions,
        import_ref,
        load_spec,
        resolve_target,
    )
    from initscope.tracing import DefaultInit, InitCall, InitTracer, fans


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'initscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
