"""Benchmark: `report --html` on a 500-parameter model (issue 7: under 5 MB, under 10 s).

Not a test: it prints the figures and writes benchmarks/html.json. "render" is the time to turn a
built report into the page (initscope.render_html); "report --html" is the whole command in
a fresh process (import, build, statistics, page); "chromium load" opens the page in headless
Chromium when it and playwright are installed (see tests/chromium.py). Times are the best of
REPEATS runs, so that other work on the machine does not decide the figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import initscope  # noqa: E402
from initscope.measure.report import build_report  # noqa: E402

TARGET = "benchmarks.bench_html:Wide"
LIMIT_BYTES = 5 * 10**6
LIMIT_SECONDS = 10.0
REPEATS = 3


class Wide(nn.Module):
    """500 parameters: 250 Linear(64, 64) layers, each with a weight and a bias."""

    def __init__(self, layers: int = 250, d: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(d, d) for _ in range(layers)))


def best(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    report = build_report(TARGET)
    built = best(lambda: build_report(TARGET))
    pages: list[str] = []
    rendered = best(lambda: pages.append(initscope.render_html(report)))
    size = len(pages[-1].encode("utf-8"))  # the page the timing built
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "wide.html"
        argv = [sys.executable, "-m", "initscope", "report", TARGET, "--html", str(out), "-q"]
        command = best(lambda: subprocess.run(argv, cwd=ROOT, check=True, capture_output=True))
        load: float | None = None
        try:
            from tests import chromium

            if chromium.CHROMIUM.exists():
                load = min(
                    chromium.visit(out, Path(tmp) / "wide.png").load_seconds for _ in range(REPEATS)
                )
        except ImportError:
            pass
    rows = [
        ("parameters", f"{len(report.parameters)}"),
        ("build_report", f"{built:.2f} s"),
        ("render_html", f"{rendered:.2f} s"),
        ("page size", f"{size / 1e6:.2f} MB (limit {LIMIT_BYTES / 1e6:.0f} MB)"),
        (
            "report --html, whole command",
            f"{command:.2f} s (limit {LIMIT_SECONDS:.0f} s)",
        ),
        ("headless Chromium load", "not installed" if load is None else f"{load:.2f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    results = {
        "parameters": len(report.parameters),
        "build_report_s": built,
        "render_html_s": rendered,
        "bytes": size,
        "command_s": command,
        "chromium_load_s": load,
    }
    (ROOT / "benchmarks").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "html.json").write_text(json.dumps(results, indent=2) + "\n")
    if size >= LIMIT_BYTES or command >= LIMIT_SECONDS:
        sys.exit("over the issue's limits")


if __name__ == "__main__":
    main()
