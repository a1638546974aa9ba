"""initscope: inspect, explain and check how a PyTorch model's parameters are initialized.

The API a user calls is here (see docs/api.md); everything else is importable from its module
(``initscope.io.checkpoints``, ``initscope.render.report``, ...). Names are imported on first
use, so ``import initscope`` (and ``initscope --help``) stay fast and do not import torch
until something needs it.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from initscope.environment import tune_environment

__version__ = "0.1.0"

tune_environment()

# name -> (module, attribute)
_API = {
    "report": ("initscope.measure.report", "build_report"),
    "Report": ("initscope.measure.report", "Report"),
    "ReportOptions": ("initscope.measure.report", "ReportOptions"),
    "explain": ("initscope.knowledge.explanation", "explain"),
    "Explanation": ("initscope.knowledge.explanation", "Explanation"),
    "identify": ("initscope.knowledge.identification", "identify"),
    "Identification": ("initscope.knowledge.identification", "Identification"),
    "apply": ("initscope.rules.apply", "apply_target"),
    "apply_rules": ("initscope.rules.apply", "apply_rules"),
    "ApplyOptions": ("initscope.rules.apply", "ApplyOptions"),
    "ApplyResult": ("initscope.rules.apply", "ApplyResult"),
    "load_rules": ("initscope.rules.language", "load_rules"),
    "check": ("initscope.gate.check", "check_target"),
    "CheckOptions": ("initscope.gate.check", "CheckOptions"),
    "CheckResult": ("initscope.gate.check", "CheckResult"),
    "diff": ("initscope.gate.diff", "diff_targets"),
    "DiffResult": ("initscope.gate.diff", "DiffResult"),
    "plot": ("initscope.render.plot", "plot"),
    "render_html": ("initscope.render.html", "render_html"),
    "TargetOptions": ("initscope.io.targets", "TargetOptions"),
    "InitScopeError": ("initscope.errors", "InitScopeError"),
}

# Names this package exported before the API above; they still resolve (with a
# DeprecationWarning naming the module to import them from).
_MOVED = {
    "Action": "initscope.rules.plan",
    "ApplyOptions": "initscope.rules.apply",
    "ApplyResult": "initscope.rules.apply",
    "CheckOptions": "initscope.gate.check",
    "CheckResult": "initscope.gate.check",
    "Checkpoint": "initscope.io.checkpoints",
    "CheckpointError": "initscope.errors",
    "DefaultInit": "initscope.knowledge.tracing",
    "Density": "initscope.stats.histogram",
    "DiffEntry": "initscope.gate.diff",
    "DiffResult": "initscope.gate.diff",
    "Distribution": "initscope.knowledge.distributions",
    "Expectations": "initscope.gate.expectations",
    "Expected": "initscope.knowledge.expected",
    "Explanation": "initscope.knowledge.explanation",
    "Family": "initscope.knowledge.distributions",
    "Fit": "initscope.knowledge.identification",
    "Histogram": "initscope.stats.histogram",
    "Identification": "initscope.knowledge.identification",
    "ImageFormat": "initscope.render.plot",
    "InitCall": "initscope.knowledge.tracing",
    "InitScopeError": "initscope.errors",
    "InitScopeWarning": "initscope.errors",
    "InitTracer": "initscope.knowledge.tracing",
    "MissingDependency": "initscope.render.plot",
    "ModelSpec": "initscope.io.targets",
    "OutputError": "initscope.io.output",
    "OutputFormat": "initscope.render.common",
    "Panel": "initscope.render.panels",
    "ParamExplanation": "initscope.knowledge.explanation",
    "ParameterReport": "initscope.measure.report",
    "Plan": "initscope.rules.plan",
    "PlanEntry": "initscope.rules.plan",
    "Provenance": "initscope.io.saving",
    "RULES_SCHEMA": "initscope.rules.schema",
    "Report": "initscope.measure.report",
    "ReportOptions": "initscope.measure.report",
    "Rule": "initscope.rules.language",
    "RuleSet": "initscope.rules.language",
    "RulesError": "initscope.rules.language",
    "RunningStats": "initscope.stats.tensor",
    "SpecError": "initscope.errors",
    "TargetError": "initscope.errors",
    "TargetOptions": "initscope.io.targets",
    "TensorInfo": "initscope.io.checkpoints",
    "TensorStats": "initscope.stats.tensor",
    "TracedModel": "initscope.io.models",
    "Unmatched": "initscope.rules.language",
    "UnsafeLoadRequired": "initscope.errors",
    "Violation": "initscope.gate.check",
    "apply_rules": "initscope.rules.apply",
    "apply_target": "initscope.rules.apply",
    "atomic_write": "initscope.io.output",
    "build_report": "initscope.measure.report",
    "check_target": "initscope.gate.check",
    "derive_seed": "initscope.rules.apply",
    "diff_targets": "initscope.gate.diff",
    "expectations": "initscope.knowledge.expected",
    "explain": "initscope.knowledge.explanation",
    "fans": "initscope.knowledge.tracing",
    "identify": "initscope.knowledge.identification",
    "import_ref": "initscope.io.targets",
    "load_expectations": "initscope.gate.expectations",
    "load_rules": "initscope.rules.language",
    "load_spec": "initscope.io.targets",
    "make_panels": "initscope.render.panels",
    "make_plan": "initscope.rules.plan",
    "open_checkpoint": "initscope.io.checkpoints",
    "open_target": "initscope.io.models",
    "parse_expression": "initscope.rules.expressions",
    "plan_target": "initscope.rules.apply",
    "plot": "initscope.render.plot",
    "render_apply": "initscope.render.apply",
    "render_check": "initscope.render.check",
    "render_diff": "initscope.render.diff",
    "render_explanation": "initscope.render.explain",
    "render_html": "initscope.render.html",
    "render_report": "initscope.render.report",
    "report_checkpoint": "initscope.measure.report",
    "report_model": "initscope.measure.report",
    "report_to_dict": "initscope.render.report",
    "resolve_target": "initscope.io.targets",
    "save_state_dict": "initscope.io.saving",
    "sparkline": "initscope.stats.histogram",
    "tensor_stats": "initscope.stats.tensor",
    "trace_model": "initscope.io.models",
}

__all__ = ["__version__", *sorted(_API)]

if TYPE_CHECKING:
    from initscope.errors import InitScopeError
    from initscope.gate.check import CheckOptions, CheckResult
    from initscope.gate.check import check_target as check
    from initscope.gate.diff import DiffResult
    from initscope.gate.diff import diff_targets as diff
    from initscope.io.targets import TargetOptions
    from initscope.knowledge.explanation import Explanation, explain
    from initscope.knowledge.identification import Identification, identify
    from initscope.measure.report import Report, ReportOptions
    from initscope.measure.report import build_report as report
    from initscope.render.html import render_html
    from initscope.render.plot import plot
    from initscope.rules.apply import ApplyOptions, ApplyResult, apply_rules
    from initscope.rules.apply import apply_target as apply
    from initscope.rules.language import load_rules


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attribute = _API[name]
    elif name in _MOVED:
        module, attribute = _MOVED[name], name
        warnings.warn(
            f"initscope.{name} moved: import it from {module}",
            DeprecationWarning,
            stacklevel=2,
        )
    else:
        raise AttributeError(f"module 'initscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attribute)
    if name in _API:
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
