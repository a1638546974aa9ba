"""Regenerate docs/report.png: the example UNet's `report --html` page in headless Chromium.

`make docs` runs it. The page compares the UNet's fresh values with the xavier preset (what
`apply --rules xavier` would make them), so the screenshot shows marked and unmarked panels.
Needs /usr/bin/chromium (Debian's package) and playwright (the dev extra); see
tests/chromium.py.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import chromium  # noqa: E402

OUT = ROOT / "docs" / "report.png"
COMMAND = ["report", "initscope.examples:UNet", "--against", "xavier", "-q"]


def main() -> None:
    why = chromium.install_chromium()
    if why is not None:
        sys.exit(f"cannot take the screenshot: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        argv = [sys.executable, "-m", "initscope", *COMMAND, "--html", str(page)]
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        visit = chromium.visit(page, OUT, width=1400, height=1000)
    if visit.errors or len(visit.requests) != 1:
        sys.exit(f"the page was not clean: {visit.errors} {visit.requests}")
    print(f"wrote {OUT.relative_to(ROOT)} (page loaded in {visit.load_seconds:.2f} s)")


if __name__ == "__main__":
    main()
