"""Benchmark: `initscope report` on a generated safetensors checkpoint vs plain torch.

Not a test: it prints wall times and ratios. Targets (issue 6): report/obvious-way ≤ 0.8,
report/one-sum-pass floor ≤ 1.5, peak RSS ≤ 1.5 GB on the 4 GB bf16 file. Data goes to
./bench-data (git-ignored); size with INITSCOPE_BENCH_MB (default 1024, fp32) and
INITSCOPE_BENCH_BF16_MB (default 4096).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# As initscope's CLI does (cli.main): torch's allocator asks for transparent huge pages and
# OpenMP's idle threads wait passively, so the in-process figures are those of `initscope
# report`. Set before torch is imported.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data"
EXE = Path(sys.executable).parent / "initscope"


def make_checkpoint(path: Path, megabytes: int) -> None:
    """LLM-like shapes (a 1.5B-class decoder: d_model 2048, 4x MLP, 32k vocabulary): square
    attention projections, MLP matrices, norms, an embedding."""
    d = 2048
    g = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {"embed.weight": torch.randn(32000, d, generator=g) * 0.02}
    layer = 0
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
    from initscope.measure.report import build_report
    from initscope.render.common import OutputFormat
    from initscope.render.report import render_report

    start = time.perf_counter()
    render_report(build_report(str(path)), OutputFormat.JSON)
    return time.perf_counter() - start


def cli_report(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [str(EXE), "report", str(path), "--format", "json", "-q"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def make_shards(path: Path, folder: Path, parts: int) -> None:
    """The same tensors as ``path``, split over ``parts`` files with a transformers index."""
    folder.mkdir(exist_ok=True)
    tensors = load_file(str(path))
    names = list(tensors)
    weight_map = {}
    for i in range(parts):
        shard = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {n: tensors[n] for n in names[i::parts]}
        save_file(chunk, str(folder / shard))
        weight_map.update(dict.fromkeys(chunk, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def make_dcp(path: Path, folder: Path) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": load_file(str(path))}, checkpoint_id=str(folder), no_dist=True)  # type: ignore[attr-defined]


def make_bf16(path: Path, megabytes: int) -> None:
    """LLM-like shapes in bfloat16, saved with initscope's own streaming writer."""
    from initscope.io.saving import write_safetensors

    d = 1024
    g = torch.Generator().manual_seed(1)
    tensors: dict[str, torch.Tensor] = {}
    layer = 0
    while sum(t.numel() * 2 for t in tensors.values()) < megabytes * 2**20:
        p = f"layers.{layer}."
        for name in ("q", "k", "v", "o"):
            tensors[p + f"attn.{name}.weight"] = (torch.randn(d, d, generator=g) * 0.02).bfloat16()
        tensors[p + "mlp.up.weight"] = (torch.randn(4 * d, d, generator=g) * 0.02).bfloat16()
        tensors[p + "mlp.down.weight"] = (torch.randn(d, 4 * d, generator=g) * 0.02).bfloat16()
        layer += 1
    write_safetensors(path, tensors)


def peak_rss(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of ``initscope ARGS`` as /usr/bin/time -v reports."""
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-v", str(EXE), *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - start
    kb = next(
        int(line.split(":")[1]) for line in done.stderr.splitlines() if "Maximum resident" in line
    )
    return wall, kb / 1024


def torchrun_vs_single(path: Path) -> tuple[float, float | None]:
    """CLI wall times (start-up included) of one process and of two torchrun ranks."""
    import socket

    torchrun = Path(sys.executable).parent / "torchrun"
    args = ["report", str(path), "--format", "json", "-q"]
    one = cli_report(path)  # the same command, one process
    if not torchrun.exists():
        return one, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    launch = [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    subprocess.run(
        [*launch, f"--master_port={port}", str(EXE), *args, "--distributed"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return one, time.perf_counter() - start


def main() -> None:
    megabytes = int(os.environ.get("INITSCOPE_BENCH_MB", "1024"))
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
    results: dict[str, object] = {
        "machine": f"{os.cpu_count()} cores, torch {torch.__version__}",
        "checkpoint_mib": round(size),
        "seconds": {k: round(v, 3) for k, v in runs.items()},
        "cli_seconds": round(cli, 3),
        "ratio_obvious": round(r / b, 2),
        "ratio_floor": round(r / f, 2),
    }

    def timed(workers: int) -> float:
        from initscope.io.targets import TargetOptions
        from initscope.measure.report import ReportOptions, build_report

        start = time.perf_counter()
        build_report(str(path), TargetOptions(), ReportOptions(workers=workers))
        return time.perf_counter() - start

    w1, w2 = min(timed(1) for _ in range(2)), min(timed(2) for _ in range(2))
    print(f"  --workers 1 / --workers 2: {w1:.3f} s / {w2:.3f} s (speed-up x{w1 / w2:.2f})")
    results["workers_1_2_seconds"] = [round(w1, 3), round(w2, 3)]

    shards = DATA / f"llm-{megabytes}mb-4-shards"
    if not shards.exists():
        make_shards(path, shards, 4)
    dcp_dir = DATA / f"llm-{megabytes}mb-dcp"
    if not dcp_dir.exists():
        make_dcp(path, dcp_dir)
    for label, target in (("4 shards + index", shards), ("DCP folder", dcp_dir)):
        seconds = min(library_report(target) for _ in range(2))
        print(f"  {label:48s} {seconds:7.3f} s  (x{seconds / r:.2f} the single file)")
        results[f"seconds_{label}"] = round(seconds, 3)

    bf16_mb = int(os.environ.get("INITSCOPE_BENCH_BF16_MB", "4096"))
    bf16 = DATA / f"llm-{bf16_mb}mb-bf16.safetensors"
    if not bf16.exists():
        make_bf16(bf16, bf16_mb)
    wall, rss = peak_rss(["report", str(bf16), "--format", "json", "-q"])
    print(f"  report on {bf16_mb} MiB bf16: {wall:.1f} s, peak RSS {rss:.0f} MiB (target ≤ 1536)")
    results["bf16"] = {"mib": bf16_mb, "seconds": round(wall, 1), "peak_rss_mib": round(rss)}

    one, ranked = torchrun_vs_single(path)
    if ranked is not None:
        print(
            f"  CLI single process / torchrun --nproc_per_node=2 --distributed: {one:.2f} s / "
            f"{ranked:.2f} s (x{one / ranked:.2f})"
        )
        results["torchrun_2_vs_single_seconds"] = [round(one, 2), round(ranked, 2)]

    wall, rss = peak_rss(
        ["report", "tests.fixtures.hf_models:llama_7b", "--meta", "-f", "json", "-q"]
    )
    print(f"  report --meta on a LLaMA-7B-sized config: {wall:.1f} s, peak RSS {rss:.0f} MiB")
    results["llama_7b_meta"] = {"seconds": round(wall, 1), "peak_rss_mib": round(rss)}

    def start_up(args: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run([str(EXE), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    version = min(start_up(["--version"]) for _ in range(5))
    usage = min(start_up(["report", "x.pt", "--frobnicate"]) for _ in range(5))
    print(f"  start-up: --version {version:.3f} s, a usage error {usage:.3f} s (target < 0.3)")
    results["start_up_seconds"] = {"version": round(version, 3), "usage_error": round(usage, 3)}

    out = ROOT / "benchmarks" / "results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"  figures written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
