"""Benchmark: `initscope report` on a generated safetensors checkpoint vs plain torch.

Not a test: it prints wall times and ratios. Targets (issue 6): report/obvious-way ≤ 0.8 and
report/one-sum-pass floor ≤ 1.5. Data goes to ./bench-data (git-ignored); size with
INITSCOPE_BENCH_MB (default 256).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data"


def make_checkpoint(path: Path, megabytes: int) -> None:
    """LLM-like shapes: square attention projections, 4x MLPs, norms, an embedding."""
    d = 512
    tensors: dict[str, torch.Tensor] = {"embed.weight": torch.randn(8000, d) * 0.02}
    layer = 0
    g = torch.Generator().manual_seed(0)
    while sum(t.numel() * 4 for t in tensors.values()) < megabytes * 2**20:
        p = f"layers.{layer}."
        for name in ("q", "k", "v", "o"):
            tensors[p + f"attn.{name}.weight"] = torch.randn(d, d, generator=g) * 0.02
        tensors[p + "mlp.up.weight"] = torch.randn(4 * d, d, generator=g) * 0.02
        tensors[p + "mlp.down.weight"] = torch.randn(d, 4 * d, generator=g) * 0.02
        tensors[p + "norm.weight"] = torch.ones(d)
        layer += 1
    save_file(tensors, str(path))


def baseline(path: Path) -> float:
    start = time.perf_counter()
    for t in load_file(str(path)).values():
        torch.std_mean(t)
        torch.aminmax(t)
        (t == 0).sum()
        t.isnan().sum()
        t.isinf().sum()
    return time.perf_counter() - start


def floor(path: Path) -> float:
    start = time.perf_counter()
    for t in load_file(str(path)).values():
        torch.sum(t)
    return time.perf_counter() - start


def library_report(path: Path) -> float:
    from initscope.render import OutputFormat, render_report
    from initscope.report import build_report

    start = time.perf_counter()
    render_report(build_report(str(path)), OutputFormat.JSON)
    return time.perf_counter() - start


def cli_report(path: Path) -> float:
    exe = Path(sys.executable).parent / "initscope"
    start = time.perf_counter()
    subprocess.run(
        [str(exe), "report", str(path), "--format", "json", "-q"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    megabytes = int(os.environ.get("INITSCOPE_BENCH_MB", "256"))
    DATA.mkdir(exist_ok=True)
    path = DATA / f"llm-{megabytes}mb.safetensors"
    if not path.exists():
        make_checkpoint(path, megabytes)
    size = path.stat().st_size / 2**20
    floor(path)  # warm the page cache once so every contender reads from memory
    runs = {
        "initscope build_report + JSON, in-process": min(library_report(path) for _ in range(3)),
        "plain torch, the obvious way": min(baseline(path) for _ in range(3)),
        "floor: one torch.sum per tensor": min(floor(path) for _ in range(3)),
    }
    print(f"checkpoint: {path.name}, {size:.0f} MiB fp32, torch {torch.__version__}")
    for name, seconds in runs.items():
        print(f"  {name:48s} {seconds:7.3f} s  ({size / seconds:7.1f} MiB/s)")
    cli = min(cli_report(path) for _ in range(2))
    print(f"  initscope report CLI, with its start-up (import torch): {cli:.3f} s")
    r, b, f = runs.values()
    print(
        f"  ratio report/obvious = {r / b:.2f} (target ≤ 0.8), report/floor = {r / f:.2f} (≤ 1.5)"
    )


if __name__ == "__main__":
    main()
