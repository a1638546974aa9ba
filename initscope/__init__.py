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
    "Checkpoint": "initscope.io.checkpoints",
    "TensorInfo": "initscope.io.checkpoints",
    "atomic_write": "initscope.io.output",
    "OutputError": "initscope.io.output",
    "open_checkpoint": "initscope.io.checkpoints",
    "Distribution": "initscope.knowledge.distributions",
    "Family": "initscope.knowledge.distributions",
    "DefaultInit": "initscope.knowledge.tracing",
    "InitCall": "initscope.knowledge.tracing",
    "InitTracer": "initscope.knowledge.tracing",
    "fans": "initscope.knowledge.tracing",
    "Fit": "initscope.knowledge.identification",
    "Identification": "initscope.knowledge.identification",
    "identify": "initscope.knowledge.identification",
    "TracedModel": "initscope.io.models",
    "trace_model": "initscope.io.models",
    "ModelSpec": "initscope.io.targets",
    "TargetOptions": "initscope.io.targets",
    "resolve_target": "initscope.io.targets",
    "open_target": "initscope.io.models",
    "import_ref": "initscope.io.targets",
    "load_spec": "initscope.io.targets",
    "RunningStats": "initscope.stats.tensor",
    "TensorStats": "initscope.stats.tensor",
    "tensor_stats": "initscope.stats.tensor",
    "ParameterReport": "initscope.measure.report",
    "Report": "initscope.measure.report",
    "ReportOptions": "initscope.measure.report",
    "build_report": "initscope.measure.report",
    "report_checkpoint": "initscope.measure.report",
    "report_model": "initscope.measure.report",
    "Explanation": "initscope.knowledge.explanation",
    "ParamExplanation": "initscope.knowledge.explanation",
    "explain": "initscope.knowledge.explanation",
    "OutputFormat": "initscope.render.text",
    "render_report": "initscope.render.text",
    "render_explanation": "initscope.render.text",
    "report_to_dict": "initscope.render.text",
    "InitScopeWarning": "initscope.errors",
    "ApplyOptions": "initscope.rules.apply",
    "ApplyResult": "initscope.rules.apply",
    "apply_rules": "initscope.rules.apply",
    "apply_target": "initscope.rules.apply",
    "derive_seed": "initscope.rules.apply",
    "plan_target": "initscope.rules.apply",
    "Rule": "initscope.rules.language",
    "RuleSet": "initscope.rules.language",
    "RulesError": "initscope.rules.language",
    "Unmatched": "initscope.rules.language",
    "load_rules": "initscope.rules.language",
    "RULES_SCHEMA": "initscope.rules.schema",
    "Action": "initscope.rules.plan",
    "Plan": "initscope.rules.plan",
    "PlanEntry": "initscope.rules.plan",
    "make_plan": "initscope.rules.plan",
    "Provenance": "initscope.io.saving",
    "save_state_dict": "initscope.io.saving",
    "render_apply": "initscope.render.apply",
    "parse_expression": "initscope.rules.expressions",
    "CheckOptions": "initscope.gate.check",
    "CheckResult": "initscope.gate.check",
    "Violation": "initscope.gate.check",
    "check_target": "initscope.gate.check",
    "Expectations": "initscope.gate.expectations",
    "load_expectations": "initscope.gate.expectations",
    "render_check": "initscope.render.check",
    "DiffEntry": "initscope.gate.diff",
    "DiffResult": "initscope.gate.diff",
    "diff_targets": "initscope.gate.diff",
    "render_diff": "initscope.gate.diff",
    "plot": "initscope.render.plot",
    "ImageFormat": "initscope.render.plot",
    "MissingDependency": "initscope.render.plot",
    "render_html": "initscope.render.html",
    "Expected": "initscope.knowledge.expected",
    "expectations": "initscope.knowledge.expected",
    "Panel": "initscope.render.panels",
    "make_panels": "initscope.render.panels",
    "Histogram": "initscope.stats.histogram",
    "Density": "initscope.stats.histogram",
    "sparkline": "initscope.stats.histogram",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from initscope.errors import (
        CheckpointError,
        InitScopeError,
        InitScopeWarning,
        SpecError,
        TargetError,
        UnsafeLoadRequired,
    )
    from initscope.gate.check import CheckOptions, CheckResult, Violation, check_target
    from initscope.gate.diff import DiffEntry, DiffResult, diff_targets, render_diff
    from initscope.gate.expectations import Expectations, load_expectations
    from initscope.io.checkpoints import Checkpoint, TensorInfo, open_checkpoint
    from initscope.io.models import TracedModel, open_target, trace_model
    from initscope.io.output import OutputError, atomic_write
    from initscope.io.saving import Provenance, save_state_dict
    from initscope.io.targets import (
        ModelSpec,
        TargetOptions,
        import_ref,
        load_spec,
        resolve_target,
    )
    from initscope.knowledge.distributions import Distribution, Family
    from initscope.knowledge.expected import Expected, expectations
    from initscope.knowledge.explanation import Explanation, ParamExplanation, explain
    from initscope.knowledge.identification import Fit, Identification, identify
    from initscope.knowledge.tracing import DefaultInit, InitCall, InitTracer, fans
    from initscope.measure.report import (
        ParameterReport,
        Report,
        ReportOptions,
        build_report,
        report_checkpoint,
        report_model,
    )
    from initscope.render.apply import render_apply
    from initscope.render.check import render_check
    from initscope.render.html import render_html
    from initscope.render.panels import Panel, make_panels
    from initscope.render.plot import ImageFormat, MissingDependency, plot
    from initscope.render.text import (
        OutputFormat,
        render_explanation,
        render_report,
        report_to_dict,
    )
    from initscope.rules.apply import (
        ApplyOptions,
        ApplyResult,
        apply_rules,
        apply_target,
        derive_seed,
        plan_target,
    )
    from initscope.rules.expressions import parse_expression
    from initscope.rules.language import Rule, RulesError, RuleSet, Unmatched, load_rules
    from initscope.rules.plan import Action, Plan, PlanEntry, make_plan
    from initscope.rules.schema import RULES_SCHEMA
    from initscope.stats.histogram import Density, Histogram, sparkline
    from initscope.stats.tensor import RunningStats, TensorStats, tensor_stats


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'initscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
