"""Benchmark: `initscope report` on generated safetensors checkpoints vs plain torch.

Not a test: it prints wall times and ratios next to their targets (PASS/MISS) and writes
benchmarks/results.json and bench/results.json, the same figures (keys are added, never
renamed). Targets: on the 1.2 GB fp32 file, report/obvious-way ≤ 0.8 and report/one-sum-pass
floor ≤ 1.5; peak RSS ≤ 1.5 GB on the 4 GB bf16 file; on a file of 3,088 expert-sized bf16
tensors, whole processes, `report` ≤ 0.5 × the obvious way and ≤ 1.3 × the floor, `check`
(no rules) ≤ 1.3 × the floor, identification ≤ 0.1 ms per tensor; on a file of 20,000 tiny
tensors, ≤ 0.1 ms of `report` per tensor.

Data goes to ./bench-data (git-ignored), generated once and reused; size the large files with
INITSCOPE_BENCH_MB (default 1024, fp32) and INITSCOPE_BENCH_BF16_MB (default 4096).
INITSCOPE_BENCH_ONLY=many runs the many-tensor cases alone (about a minute).
"""

from __future__ import annotations

import compileall
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The environment the user's own processes get (the plain-torch contenders run in it).
USER_ENV = dict(os.environ)
# Then the process settings initscope makes on import (initscope.environment: transparent huge
# pages for torch's allocator, passive OpenMP waits), before torch starts, so the in-process
# figures are those of `initscope report`.
import initscope.environment

initscope.environment.tune_environment()

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


# -- many tensors --------------------------------------------------------------------------

# The plain-torch contenders, each a whole process as a user would run it. The obvious way
# computes what a report's statistics say (mean and std, extremes, zeros, NaN and inf counts);
# the floor reads every tensor and touches each value once.
OBVIOUS = """
import sys, torch
from safetensors.torch import load_file
for t in load_file(sys.argv[1]).values():
    torch.std_mean(t); torch.aminmax(t); (t == 0).sum(); t.isnan().sum(); t.isinf().sum()
"""
FLOOR = """
import sys, torch
from safetensors.torch import load_file
for t in load_file(sys.argv[1]).values():
    t.sum()
"""
# Rounds of each many-tensor contender: medians of 5 ride out this shared machine's swings
# (±20% between runs) better than of 3, for about 30 s more.
ROUNDS = 5


def make_experts(path: Path) -> None:
    """3,088 expert-sized bf16 matrices (1,544 of 256 x 512, 1,544 of 512 x 256; 805 MB):
    the up and down projections of 48 MoE layers of 32 experts, and one more layer of 8."""
    g = torch.Generator().manual_seed(2)
    tensors: dict[str, torch.Tensor] = {}
    for i in range(1544):
        p = f"layers.{i // 32}.experts.{i % 32}."
        tensors[p + "up.weight"] = (torch.randn(256, 512, generator=g) * 0.02).bfloat16()
        tensors[p + "down.weight"] = (torch.randn(512, 256, generator=g) * 0.02).bfloat16()
    save_file(tensors, str(path))


# Tiny shapes and dtypes the 20,000-tensor file cycles through (norm weights, biases, small
# matrices), in float32, bfloat16 and float16.
TINY_SHAPES = ((64,), (16, 16), (8, 32), (128,), (4, 4, 4))
TINY_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def make_tiny(path: Path, count: int) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = {
        f"blocks.{i // 10}.part{i % 10}.weight": (
            torch.randn(TINY_SHAPES[i % len(TINY_SHAPES)], generator=g) * 0.02
        ).to(TINY_DTYPES[i % len(TINY_DTYPES)])
        for i in range(count)
    }
    save_file(tensors, str(path))


def process(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system, its child processes included) of one
    process run to its end, output discarded. A failure stops the bench with its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[:3])} ... failed ({done.returncode}): {done.stderr[-2000:]!r}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def alternating(variants: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Each variant ROUNDS times, one after another in each round (so that a change in the
    machine's load falls on all of them), as the median wall and CPU seconds."""
    walls: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(ROUNDS):
        for name, argv in variants.items():
            # initscope gets the user's environment too: its CLI sets its own tuning.
            wall, cpu = process(argv, USER_ENV)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {
        k: {"wall": statistics.median(walls[k]), "cpu": statistics.median(cpus[k])}
        for k in variants
    }


def verdict(value: float, limit: float) -> str:
    return "PASS" if value <= limit else "MISS"


def in_process_breakdown(path: Path) -> dict[str, float]:
    """Seconds per tensor of `build_report` (one process, --workers 1) and of its JSON,
    with the time spent in each stage: the fused scan, the sample positions, the structure
    tests' lines (row_lines, structure_of_rows) and identification (identify_many, which
    takes a batch of tensors: its time per tensor is amortised over the batch)."""
    import initscope.measure.pipeline as pipeline
    import initscope.measure.report as report
    import initscope.stats.tensor as tensor
    from initscope.io.targets import TargetOptions
    from initscope.render.common import OutputFormat
    from initscope.render.report import render_report

    spent: Counter[str] = Counter()
    stages = [
        (report, "identify_many", "identification (identify_many)"),
        (pipeline, "structure_of_rows", "structure tests (structure_of_rows)"),
        (pipeline, "row_lines", "structure lines chosen (row_lines)"),
        (tensor.fused, "scan", "fused scan (kernel + its Python call)"),
        (tensor, "sample_positions", "sample positions"),
    ]
    saved: list[tuple[Any, str, Callable[..., Any]]] = []

    def timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[label] += time.perf_counter() - start

        return wrapper

    for module, attr, label in stages:
        if hasattr(module, attr):
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, timed(getattr(module, attr), label))
    try:
        options = report.ReportOptions(workers=1)
        report.build_report(str(path), TargetOptions(), options)  # warm: imports, caches
        spent.clear()
        start = time.perf_counter()
        built = report.build_report(str(path), TargetOptions(), options)
        build = time.perf_counter() - start
        start = time.perf_counter()
        render_report(built, OutputFormat.JSON)
        rendered = time.perf_counter() - start
    finally:
        for module, attr, fn in saved:
            setattr(module, attr, fn)
    n = len(built.parameters)
    out = {"build_report (workers 1)": build / n, "JSON (render_report)": rendered / n}
    out.update({label: seconds / n for label, seconds in spent.items()})
    inner = sum(v for k, v in spent.items() if k.startswith(("identification", "structure t")))
    inner += spent["fused scan (kernel + its Python call)"] + spent["sample positions"]
    inner += spent["structure lines chosen (row_lines)"]
    out["the rest of build_report (objects, reading, spread)"] = (build - inner) / n
    return out


def many_tensors(results: dict[str, object]) -> None:
    experts = DATA / "experts-3088-bf16.safetensors"
    if not experts.exists():
        make_experts(experts)
    tiny_count = 20000
    tiny = DATA / f"tiny-{tiny_count}.safetensors"
    if not tiny.exists():
        make_tiny(tiny, tiny_count)
    one = DATA / "tiny-1.safetensors"
    if not one.exists():
        make_tiny(one, 1)
    py = sys.executable
    size = experts.stat().st_size / 1e6
    print(f"many tensors: {experts.name}, 3,088 bf16 tensors, {size:.0f} MB; whole processes,")
    print(f"  medians of {ROUNDS} rounds, the variants alternating in each round")
    process([py, "-c", FLOOR, str(experts)], USER_ENV)  # the page cache warm for all
    runs = alternating(
        {
            "report": [str(EXE), "report", str(experts), "--format", "json"],
            "check": [str(EXE), "check", str(experts)],
            "obvious": [py, "-c", OBVIOUS, str(experts)],
            "floor": [py, "-c", FLOOR, str(experts)],
        }
    )
    labels = {
        "report": "initscope report FILE --format json",
        "check": "initscope check FILE (no rules)",
        "obvious": "plain torch, the obvious way",
        "floor": "floor: load_file + one sum per tensor",
    }
    for k, label in labels.items():
        print(f"  {label:48s} {runs[k]['wall']:6.2f} s wall  {runs[k]['cpu']:6.2f} s CPU")
    report, check = runs["report"]["wall"], runs["check"]["wall"]
    obvious, floor_s = runs["obvious"]["wall"], runs["floor"]["wall"]
    ratios = {
        "report_to_obvious": (report / obvious, 0.5),
        "report_to_floor": (report / floor_s, 1.3),
        "check_to_floor": (check / floor_s, 1.3),
    }
    for k, (value, limit) in ratios.items():
        print(f"  {k:48s} {value:6.2f}   (target ≤ {limit})  {verdict(value, limit)}")

    stages = in_process_breakdown(experts)
    print("  in one process (--workers 1), per tensor:")
    for label, seconds in stages.items():
        print(f"    {label:52s} {seconds * 1e3:7.3f} ms")
    ident = stages.get("identification (identify_many)", 0.0)
    print(
        f"  identification per tensor {ident * 1e3:.3f} ms (target ≤ 0.1)  {verdict(ident, 1e-4)}"
    )

    print(f"{tiny_count:,} tiny tensors ({tiny.name}, {tiny.stat().st_size / 1e6:.0f} MB): report")
    print("  minus the same command on a one-tensor file (start-up, imports, rendering)")
    small = alternating(
        {
            "many": [str(EXE), "report", str(tiny), "--format", "json"],
            "one": [str(EXE), "report", str(one), "--format", "json"],
        }
    )
    per = (small["many"]["wall"] - small["one"]["wall"]) / (tiny_count - 1)
    print(
        f"  {small['many']['wall']:.2f} s vs {small['one']['wall']:.2f} s: "
        f"{per * 1e3:.3f} ms per tensor (target ≤ 0.1)  {verdict(per, 1e-4)}"
    )
    tiny_stages = in_process_breakdown(tiny)
    print("  in one process, per tensor:")
    for label, seconds in tiny_stages.items():
        print(f"    {label:52s} {seconds * 1e3:7.3f} ms")

    results["many_tensors"] = {
        "file": "3,088 bf16 tensors, 1,544 of 256x512 and 1,544 of 512x256, 805 MB",
        "rounds": ROUNDS,
        "wall_seconds": {labels[k]: round(v["wall"], 3) for k, v in runs.items()},
        "cpu_seconds": {labels[k]: round(v["cpu"], 3) for k, v in runs.items()},
        "ratios": {k: round(v, 2) for k, (v, _) in ratios.items()},
        "in_process_ms_per_tensor": {k: round(v * 1e3, 4) for k, v in stages.items()},
        "identification_ms_per_tensor": round(ident * 1e3, 4),
    }
    results["tiny_tensors"] = {
        "tensors": tiny_count,
        "shapes": [list(s) for s in TINY_SHAPES],
        "dtypes": [str(d).removeprefix("torch.") for d in TINY_DTYPES],
        "baseline": "the same report command on a one-tensor file",
        "wall_seconds": {k: round(v["wall"], 3) for k, v in small.items()},
        "report_ms_per_tensor": round(per * 1e3, 4),
        "in_process_ms_per_tensor": {k: round(v * 1e3, 4) for k, v in tiny_stages.items()},
    }


def large_files(results: dict[str, object]) -> None:
    megabytes = int(os.environ.get("INITSCOPE_BENCH_MB", "1024"))
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
        f"  ratio report/obvious = {r / b:.2f} (target ≤ 0.8) {verdict(r / b, 0.8)}, "
        f"report/floor = {r / f:.2f} (≤ 1.5) {verdict(r / f, 1.5)}"
    )
    results.update(
        {
            "checkpoint_mib": round(size),
            "seconds": {k: round(v, 3) for k, v in runs.items()},
            "cli_seconds": round(cli, 3),
            "ratio_obvious": round(r / b, 2),
            "ratio_floor": round(r / f, 2),
        }
    )

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
    print(
        f"  report on {bf16_mb} MiB bf16: {wall:.1f} s, peak RSS {rss:.0f} MiB (target ≤ 1536) "
        f"{verdict(rss, 1536)}"
    )
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


def machine() -> str:
    """Cores, CPU model and torch version, for the record."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip() + ", "
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}torch {torch.__version__}"


def main() -> None:
    only = os.environ.get("INITSCOPE_BENCH_ONLY", "")
    if only not in ("", "many"):
        sys.exit(f"INITSCOPE_BENCH_ONLY={only}: the one choice is 'many' (the many-tensor cases)")
    DATA.mkdir(exist_ok=True)
    # initscope's modules byte-compiled, as `pip install` leaves them: the CLI's processes
    # would otherwise compile its source on every start where PYTHONDONTWRITEBYTECODE is
    # set (as in some sandboxes and CI images: 0.3-0.4 s a command, measured).
    compileall.compile_dir(str(ROOT / "initscope"), quiet=1)
    out = ROOT / "benchmarks" / "results.json"
    # Figures of the parts not run this time stay as the last full run left them.
    results: dict[str, object] = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = machine()
    load = os.getloadavg()[0]
    print(f"machine: {results['machine']}; load average {load:.2f} at the start")
    if not only:
        large_files(results)
    many_tensors(results)
    results["load_average_at_start"] = round(load, 2)
    text = json.dumps(results, indent=2) + "\n"
    # benchmarks/results.json, where the figures have always been, and bench/results.json,
    # the path the many-tensor targets were given with: the same figures.
    for path in (out, ROOT / "bench" / "results.json"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    print("figures written to benchmarks/results.json and bench/results.json")


if __name__ == "__main__":
    main()
