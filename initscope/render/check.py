"""Rendering ``initscope check`` results: text, JSON, JUnit XML and GitHub annotations.

- text: one line per violation, ``<parameter>: <check>: observed <x>, expected <y>``, then a
  summary;
- json (schema ``initscope.check/1``): ``violations`` with ``parameter``, ``check``,
  ``observed``, ``expected``, ``severity`` (and ``source``), plus the summary;
- junit: one ``<testcase>`` per checked parameter, a ``<failure>`` per violation, for CI test
  tabs;
- github: GitHub Actions workflow commands, ``::error title=...::message``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from typing import Any

from initscope.gate.check import CheckResult, Violation
from initscope.render import jsontext
from initscope.render.common import FORMATS, Format, escape_text

__all__ = [
    "CHECK_SCHEMA",
    "check_to_dict",
    "render_check",
]

CHECK_SCHEMA = "initscope.check/1"


def check_to_dict(result: CheckResult) -> dict[str, Any]:
    errors = result.errors
    return {
        "schema": CHECK_SCHEMA,
        "target": result.target,
        "ok": result.ok,
        "violations": [
            {
                "parameter": v.parameter,
                "check": v.check,
                "observed": v.observed,
                "expected": v.expected,
                "severity": v.severity,
                "source": v.source,
            }
            for v in result.violations
        ],
        "summary": {
            "parameters": len(result.parameters),
            "checks": result.checks_run,
            "errors": len(errors),
            "warnings": len(result.violations) - len(errors),
            "failed_parameters": result.failed_parameters,
            "inconclusive": list(result.inconclusive),
        },
    }


def _summary(result: CheckResult) -> str:
    errors = result.errors
    bad = result.failed_parameters
    n = len(result.parameters)
    text = f"{n} parameter{'s' if n != 1 else ''} checked: " + (
        "all checks pass" if not errors else f"{len(errors)} violation(s) in {bad}"
    )
    warnings = len(result.violations) - len(errors)
    if warnings:
        text += f", {warnings} warning(s)"
    if result.inconclusive:
        text += f"; {len(result.inconclusive)} too small to tell which init they follow"
    return text


def _escape_data(text: str) -> str:
    # GitHub workflow commands: %, CR and LF are escaped in the message...
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    # ...and additionally ':' and ',' in properties (actions/toolkit, command.ts).
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _github(result: CheckResult) -> str:
    lines = []
    for v in result.violations:
        level = "error" if v.severity == "error" else "warning"
        title = _escape_property(f"initscope {v.check}")
        # CR and LF are GitHub's to encode (%0D, %0A); every other control is shown escaped.
        message = _escape_data(escape_text(v.line(), keep="\r\n"))
        lines.append(f"::{level} title={title}::{message}")
    lines.append(f"::notice title=initscope check::{_escape_data(_summary(result))}")
    return "\n".join(lines) + "\n"


# XML 1.0 allows no control characters but tab, LF and CR, even escaped.
_XML_BAD = dict.fromkeys([*range(0, 9), 11, 12, *range(14, 32)], "\N{REPLACEMENT CHARACTER}")


def _xml(text: str) -> str:
    return escape_text(text).translate(_XML_BAD)


def _xml_lines(lines: list[str]) -> str:
    """Element text of several lines: each escaped on its own, so the newlines that join
    them stay newlines while one inside a name is shown as ``\\x0a``."""
    return "\n".join(_xml(line) for line in lines)


def _junit(result: CheckResult) -> str:
    by_param: dict[str, list[Violation]] = defaultdict(list)
    for v in result.violations:
        by_param[v.parameter].append(v)
    suite = ET.Element(
        "testsuite",
        name=_xml(f"initscope check {result.target}"),
        tests=str(len(result.parameters)),
        failures=str(result.failed_parameters),
        errors="0",
        skipped="0",
    )
    for name in result.parameters:
        case = ET.SubElement(suite, "testcase", classname=_xml(result.target), name=_xml(name))
        found = by_param.get(name, [])
        bad = [v for v in found if v.severity == "error"]
        if bad:
            # One <failure> per testcase (some CI readers accept no more), naming them all.
            failure = ET.SubElement(
                case,
                "failure",
                message=_xml("; ".join(v.line() for v in bad)),
                type=",".join(dict.fromkeys(v.check for v in bad)),
            )
            failure.text = _xml_lines(
                [f"{v.line()} (from {v.source})" if v.source else v.line() for v in bad]
            )
        notes = [f"warning: {v.line()}" for v in found if v.severity != "error"]
        if notes:
            ET.SubElement(case, "system-out").text = _xml_lines(notes)
    root = ET.Element(
        "testsuites", tests=str(len(result.parameters)), failures=str(result.failed_parameters)
    )
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def render_check(result: CheckResult, fmt: Format | str = Format.TEXT) -> str:
    fmt = Format(fmt).require("check", FORMATS["check"]).value
    if fmt == "json":
        return jsontext.dumps(check_to_dict(result)) + "\n"
    if fmt == "junit":
        return _junit(result)
    if fmt == "github":
        return _github(result)
    lines = [
        escape_text(v.line() if v.severity == "error" else f"warning: {v.line()}")
        for v in result.violations
    ]
    lines.append(_summary(result))
    return "\n".join(lines) + "\n"
