"""Headless Chromium for the HTML report: Debian's ``chromium`` package driven by playwright.

playwright (PyPI, in the ``dev`` extra) is only the driver: it is pointed at the system's
``/usr/bin/chromium`` and never downloads a browser of its own. Shared by tests/test_html.py
and docs/make_screenshot.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# What this machine needs to run Chromium headless (no sandbox as root, no GPU), and nothing
# that would reach the network behind the page's back (QUIC probes, component updates, sync).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Installing the package downloads ~100 MB of .debs: minutes at worst.
INSTALL_TIMEOUT = 900


def install_chromium() -> str | None:
    """Make sure ``/usr/bin/chromium`` exists: ``apt-get install -y chromium`` when running
    as root with apt-get. Returns None when it is there, else why it cannot be."""
    if CHROMIUM.exists():
        return None
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"{CHROMIUM} is absent and cannot be installed here (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for args in ([apt, "update"], [apt, "install", "-y", "chromium"]):
            subprocess.run(args, env=env, check=True, capture_output=True, timeout=INSTALL_TIMEOUT)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"apt-get install chromium failed: {exc}"
    return None if CHROMIUM.exists() else f"apt-get installed chromium but {CHROMIUM} is absent"


@dataclass
class Visit:
    """What opening one page did: console messages and page errors, every request made,
    the load time, and the screenshot's path."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    load_seconds: float = 0.0
    screenshot: Path | None = None


def visit(page_file: Path, screenshot: Path, width: int = 1400, height: int = 1000) -> Visit:
    """Open ``page_file`` in headless Chromium (a fresh profile), record console errors and
    requests, and take a screenshot of the first screen."""
    from playwright.sync_api import sync_playwright

    out = Visit()
    with (
        tempfile.TemporaryDirectory(prefix="initscope-chromium-") as profile,
        sync_playwright() as pw,
    ):
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": width, "height": height},
        )
        try:
            page = context.new_page()
            page.on(
                "console",
                lambda m: (
                    out.errors.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: out.errors.append(f"page error: {e}"))
            context.on("request", lambda r: out.requests.append(r.url))
            start = time.perf_counter()
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            out.load_seconds = time.perf_counter() - start
            page.screenshot(path=str(screenshot))
            out.screenshot = screenshot
        finally:
            context.close()
    return out
