"""Sharded checkpoints: a folder of shards, a transformers index, a torch.distributed.checkpoint
folder. Each must give the same report as the single file holding the same tensors."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from initscope.cli import app
from initscope.parallel.workers import Advance

pytestmark = pytest.mark.usefixtures("one_thread")


def _state() -> dict[str, torch.Tensor]:
    from initscope.examples import UNet

    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in UNet(width=4).state_dict().items()}


def _split(state: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    names = list(state)
    return [{n: state[n] for n in names[i::parts]} for i in range(parts)]


def _report(runner: CliRunner, target: str, *extra: str) -> list[dict[str, object]]:
    result = runner.invoke(app, ["report", target, "-f", "json", "-q", "--buffers", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["parameters"]  # type: ignore[no-any-return]


@pytest.fixture
def single(tmp_path: Path) -> Path:
    path = tmp_path / "single.safetensors"
    save_file(_state(), str(path))
    return path


def test_folder_of_shards(runner: CliRunner, tmp_path: Path, single: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, part in enumerate(_split(_state(), 3)):
        save_file(part, str(folder / f"model-{i + 1:05d}-of-00003.safetensors"))
    assert _report(runner, str(folder)) == _report(runner, str(single))


def test_transformers_index(runner: CliRunner, tmp_path: Path, single: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    weight_map = {}
    for i, part in enumerate(_split(_state(), 2)):
        name = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    expected = _report(runner, str(single))
    assert _report(runner, str(index)) == expected
    assert _report(runner, str(folder)) == expected  # the folder finds its index
    # with the model: types and defaults too
    model = ["--model", "initscope.examples:UNet", "--arg", "width=4"]
    assert _report(runner, str(index), *model) == _report(runner, str(single), *model)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_folder(runner: CliRunner, tmp_path: Path, single: Path) -> None:
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    dcp.save({"model": _state(), "step": 3}, checkpoint_id=str(folder), no_dist=True)  # type: ignore[attr-defined]
    assert _report(runner, str(folder)) == _report(runner, str(single))


def test_a_corrupt_shard_is_named(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    parts = _split(_state(), 2)
    save_file(parts[0], str(folder / "a.safetensors"))
    save_file(parts[1], str(folder / "b.safetensors"))
    bad = folder / "b.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2
    assert "b.safetensors" in result.stderr and "Traceback" not in result.stderr


def test_index_naming_a_missing_shard(runner: CliRunner, tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    result = runner.invoke(app, ["report", str(index)])
    assert result.exit_code == 2
    assert "shard model-00001-of-00002.safetensors listed in" in result.stderr


def test_a_tensor_in_two_shards(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(folder / "a.safetensors"))
    save_file({"w": torch.ones(2)}, str(folder / "b.safetensors"))
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2
    assert "tensor 'w' is in both a.safetensors and b.safetensors" in result.stderr


def test_check_and_diff_on_shards(runner: CliRunner, tmp_path: Path, single: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, part in enumerate(_split(_state(), 2)):
        save_file(part, str(folder / f"part{i}.safetensors"))
    checked = runner.invoke(app, ["check", str(folder), "-q"])
    assert checked.exit_code == 0, checked.output
    diffed = runner.invoke(app, ["diff", str(single), str(folder), "-q", "-f", "json"])
    assert diffed.exit_code == 0, diffed.output
    assert {p["status"] for p in json.loads(diffed.stdout)["parameters"]} == {"unchanged"}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_tensors_over_the_budget_are_read_in_rows(
    runner: CliRunner, tmp_path: Path, suffix: str
) -> None:
    torch.manual_seed(0)
    state = {"big.weight": torch.randn(300, 200) * 0.02, "small.bias": torch.zeros(10)}
    path = tmp_path / f"m{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    whole = _report(runner, str(path))
    # 4 KiB: the 240 KB weight is read 5 rows (4 KB) at a time
    pieces = _report(runner, str(path), "--max-memory", "4KiB")
    for a, b in zip(whole, pieces, strict=True):
        assert a["fit"]["label"] == b["fit"]["label"] and a["shape"] == b["shape"]
        assert a["fit"]["p_value"] == pytest.approx(b["fit"]["p_value"], rel=1e-9)
        for key in ("mean", "std", "min", "max"):
            assert a["stats"][key] == pytest.approx(b["stats"][key], rel=1e-12, abs=1e-15)
    checked = runner.invoke(app, ["check", str(path), "-q", "--max-memory", "4KiB"])
    assert checked.exit_code == 0, checked.output


def test_chunks_cover_the_tensor_once(tmp_path: Path) -> None:
    from initscope.io.checkpoints import open_checkpoint

    t = torch.arange(7 * 5, dtype=torch.float32).reshape(7, 5)
    path = tmp_path / "t.safetensors"
    save_file({"t": t}, str(path))
    with open_checkpoint(path) as ckpt:
        pieces = list(ckpt.chunks("t", budget=2 * 5 * 4))  # two rows at a time
    assert [o for o, _ in pieces] == [0, 10, 20, 30]
    assert torch.equal(torch.cat([p for _, p in pieces]), t.reshape(-1))


def test_max_memory_must_be_a_size(runner: CliRunner, linear_pt: Path) -> None:
    result = runner.invoke(app, ["report", str(linear_pt), "--max-memory", "lots"])
    assert result.exit_code == 2
    assert "--max-memory 'lots' is not a size" in result.stderr


def test_diff_over_the_budget_compares_rows(runner: CliRunner, tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = {"w": torch.randn(300, 200), "same": torch.ones(50, 50)}
    b = {"w": a["w"] + 0.1 * torch.randn(300, 200), "same": torch.ones(50, 50)}
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.pt"
    save_file(a, str(pa))
    torch.save(b, pb)

    def rows(*extra: str) -> dict[str, dict[str, object]]:
        result = runner.invoke(app, ["diff", str(pa), str(pb), "-q", "-f", "json", *extra])
        assert result.exit_code == 0, result.output
        return {p["name"]: p for p in json.loads(result.stdout)["parameters"]}

    whole, pieces = rows(), rows("--max-memory", "8KiB")  # w: 5 rows of each side at a time
    assert pieces["same"]["status"] == "unchanged" and pieces["w"]["status"] == "changed"
    for key in ("rel_l2", "max_abs_diff", "cosine", "std_a", "std_b"):
        assert pieces["w"][key] == pytest.approx(whole["w"][key], rel=1e-12)


def test_workers_give_the_single_process_report(runner: CliRunner, single: Path) -> None:
    one = _report(runner, str(single), "--workers", "1")
    two = _report(runner, str(single), "--workers", "2")
    assert [p["name"] for p in one] == [p["name"] for p in two]
    for a, b in zip(one, two, strict=True):
        assert a["fit"]["label"] == b["fit"]["label"], a["name"]
        for key in ("mean", "std", "min", "max"):  # one thread per worker: last-bit rounding
            assert a["stats"][key] == pytest.approx(b["stats"][key], rel=1e-12, abs=1e-15)
    model = ["--model", "initscope.examples:UNet", "--arg", "width=4"]
    assert [p["matches_default"] for p in _report(runner, str(single), *model, "--workers", "2")]


def test_an_error_in_a_worker_keeps_its_hint() -> None:
    from initscope.errors import CheckpointError
    from initscope.parallel.workers import can_fork, parallel_map

    if not can_fork():
        pytest.skip("workers fork, on Linux only")

    def task(i: int) -> int:
        if i == 3:
            raise CheckpointError(f"cannot read tensor {i}", "re-download it")
        return i * i

    with pytest.raises(CheckpointError) as info:
        parallel_map(task, [1, 2, 3, 4, 5], workers=2)
    assert info.value.one_line() == "cannot read tensor 3; re-download it"
    assert parallel_map(lambda i: i * i, [5, 1, 9, 2], workers=2) == [0, 1, 4, 9]


def test_small_tasks_go_to_workers_in_batches_large_ones_alone() -> None:
    from initscope.parallel.workers import BATCH, batches, can_fork, parallel_map

    if not can_fork():
        pytest.skip("workers fork, on Linux only")
    # Four large tensors and 300 small ones: every result in its place, computed in a
    # worker, every one ticked once (in the order they finish, which two workers race); the
    # large ones go out first and alone, the small ones together.
    import os

    weights = [10**6] * 4 + [100] * 300
    ticked: list[int] = []
    out = parallel_map(lambda i: (i, os.getpid()), weights, workers=2, tick=ticked.append)
    assert [i for i, _ in out] == list(range(len(weights)))
    assert sorted(ticked) == list(range(len(weights)))
    assert os.getpid() not in {pid for _, pid in out}
    order = sorted(range(len(weights)), key=lambda i: -weights[i])
    cut = batches(order, weights, 2)
    assert [i for b in cut for i in b] == order
    assert all(len(b) == 1 for b in cut[:4])
    assert all(1 < len(b) <= BATCH for b in cut[4:])


def test_a_batched_task_gets_its_indices_together_in_a_worker_and_in_process() -> None:
    """A Batched task (a report's: measure a batch, identify it together) is called with up
    to BATCH indices at once, in process and in workers, and its results land in place."""
    import os

    from initscope.parallel.workers import BATCH, Batched, can_fork, parallel_map

    calls: list[list[int]] = []

    def many(ids: Any) -> list[tuple[int, int, int]]:
        calls.append(list(ids))
        return [(i, len(ids), os.getpid()) for i in ids]

    n = 2 * BATCH + BATCH // 2
    weights = [100] * n
    out = parallel_map(Batched(many), weights, workers=1)
    assert [i for i, _, _ in out] == list(range(n))
    # at most BATCH at once, and at most a 16th of the work in process (the progress moves)
    sixteenth = -(-n // 16)
    assert all(len(c) == min(BATCH, sixteenth) for c in calls[:-1]), [len(c) for c in calls]
    assert sum(len(c) for c in calls) == n
    calls.clear()
    out = parallel_map(Batched(many), [100] * (BATCH * 40), workers=1)
    assert [len(c) for c in calls] == [BATCH] * 40
    if can_fork():
        # batches are also cut at a 32nd of the work: 400 equal tasks go 12 at a time
        out = parallel_map(Batched(many), [100] * 400, workers=2)
        assert [i for i, _, _ in out] == list(range(400))
        assert max(n for _, n, _ in out) > 1  # several at a time
        assert os.getpid() not in {pid for _, _, pid in out}


def test_many_tensors_are_shared_out_however_small() -> None:
    """Workers start for much data, or for many tensors of little data (a fixed cost each),
    not for a few small ones."""
    from initscope.parallel.workers import MIN_PARALLEL_TENSORS, auto_workers, can_fork

    budget = 2**30
    assert auto_workers(10 * 2**20, 2**10, budget, count=10) == 1
    many = auto_workers(10 * 2**20, 2**10, budget, count=MIN_PARALLEL_TENSORS)
    assert many == (min(os.cpu_count() or 1, budget // 2**10) if can_fork() else 1)


def test_a_run_gives_the_garbage_collector_back_its_objects() -> None:
    # The objects alive before a run are frozen out of the collector while it lasts (and
    # after an error in it), and collected as usual once it ends.
    import gc

    from initscope.parallel.workers import parallel_map

    frozen: list[int] = []

    def task(i: int) -> int:
        frozen.append(gc.get_freeze_count())
        if i == 2:
            raise ValueError("a task fails")
        return i

    assert parallel_map(task, [1, 1], workers=1) == [0, 1]
    assert frozen[0] > 1000 and gc.get_freeze_count() == 0
    with pytest.raises(ValueError):
        parallel_map(task, [1, 1, 1], workers=1)
    assert gc.get_freeze_count() == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node=2 initscope ARGS --workers 1 --distributed`` on localhost
    (skips where torchrun is not installed; a port taken in the meantime is retried once)."""
    torchrun = Path(sys.executable).parent / "torchrun"
    exe = Path(sys.executable).parent / "initscope"
    if not torchrun.exists() or not exe.exists():
        pytest.skip("torchrun or the initscope script is not installed beside this python")
    launch = [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    for _ in range(2):
        done = subprocess.run(
            [
                *launch,
                f"--master_port={_free_port()}",
                str(exe),
                *args,
                "--workers",
                "1",
                "--distributed",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        if "Address already in use" not in done.stderr:
            break
    return done


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(runner: CliRunner, single: Path) -> None:
    done = _torchrun("report", str(single), "-f", "json", "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    ranked = json.loads(done.stdout)["parameters"]  # rank 0 alone printed: one document
    alone = _report(runner, str(single), "--workers", "1")
    assert [p["name"] for p in ranked] == [p["name"] for p in alone]
    for a, b in zip(alone, ranked, strict=True):
        assert a["fit"]["label"] == b["fit"]["label"]
        assert a["stats"]["std"] == pytest.approx(b["stats"]["std"], rel=1e-12)


@pytest.mark.slow
def test_check_with_workers_and_ranks_equals_one_process(
    runner: CliRunner, single: Path, tmp_path: Path
) -> None:
    broken = _state()
    broken["down1.0.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    args = ["check", str(path), "-q", "-f", "json"]
    one = runner.invoke(app, [*args, "--workers", "1"])
    two = runner.invoke(app, [*args, "--workers", "2"])
    assert one.exit_code == two.exit_code == 1, one.output
    assert json.loads(one.stdout) == json.loads(two.stdout)
    done = _torchrun(*args)
    assert done.returncode != 0  # torchrun reports the ranks' exit 1 as a failure
    assert json.loads(done.stdout) == json.loads(one.stdout)


@pytest.mark.slow
def test_diff_with_workers_and_ranks_equals_one_process(
    runner: CliRunner, single: Path, tmp_path: Path
) -> None:
    changed = _state()
    changed["down1.0.weight"] *= 1.5
    changed["up.weight"] = torch.zeros(3)  # a shape change and an added name
    del changed[next(iter(changed))]  # a removed name
    after = tmp_path / "after.safetensors"
    save_file(changed, str(after))
    args = ["diff", str(single), str(after), "-q", "-f", "json"]
    one = runner.invoke(app, [*args, "--workers", "1"])
    two = runner.invoke(app, [*args, "--workers", "2"])
    assert one.exit_code == two.exit_code == 0, one.output
    want = json.loads(one.stdout)
    assert {"changed", "removed"} <= {k for k, v in want["summary"].items() if v}
    assert json.loads(two.stdout) == want
    done = _torchrun(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == want  # rank 0 alone printed, the same document


def test_distributed_without_torchrun_says_how(runner: CliRunner, single: Path) -> None:
    result = runner.invoke(app, ["report", str(single), "--distributed"])
    assert result.exit_code == 2
    assert "--distributed needs torchrun's environment" in result.stderr


def test_assign_balances_largest_first() -> None:
    from initscope.parallel.distributed import assign

    owner = assign([100, 1, 60, 50, 10], world=2)
    load = [
        sum(s for s, r in zip([100, 1, 60, 50, 10], owner, strict=True) if r == k) for k in (0, 1)
    ]
    assert owner[0] != owner[2] and sorted(load) == [110, 111]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _bar_output(monkeypatch: pytest.MonkeyPatch, after: float, steps: list[Advance]) -> str:
    from initscope.cli import runtime

    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(runtime, "PROGRESS_AFTER", after)
    with runtime.progress_bar(True, "statistics") as update:
        assert update is not None
        for step in steps:
            update(step)
            time.sleep(0.02)  # rich computes the rate from samples apart in time
    return term.getvalue()


def test_progress_bar_shows_bytes_tensors_rate_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    mib = 2**20
    steps = [Advance(0, 300 * mib, 0, 3), Advance(100 * mib, 300 * mib, 1, 3)]
    steps.append(Advance(200 * mib, 300 * mib, 2, 3))
    text = _bar_output(monkeypatch, 0.0, steps)
    assert "statistics" in text
    assert "2/3 tensors" in text
    assert "209.7/314.6 MB" in text  # rich's DownloadColumn, in decimal units
    assert re.search(r"[\d.]+ [kMG]?B/s", text)  # the rate
    assert re.search(r"\d+:\d\d:\d\d|-:--:--", text)  # the ETA


def test_progress_bar_stays_silent_for_quick_runs_and_pipes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from initscope.cli import runtime

    steps = [Advance(0, 10, 0, 1), Advance(10, 10, 1, 1)]
    assert _bar_output(monkeypatch, 60.0, steps) == ""
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    with runtime.progress_bar(True) as update:
        assert update is None


def test_progress_reaches_the_totals_through_workers(single: Path) -> None:
    from initscope.io.targets import TargetOptions
    from initscope.measure.report import ReportOptions, build_report

    seen: list[Advance] = []
    build_report(str(single), TargetOptions(), ReportOptions(workers=2), progress=seen.append)
    size = sum(t.numel() * t.element_size() for t in _state().values())
    assert seen[0] == Advance(0, size, 0, len(_state()))
    assert seen[-1] == Advance(size, size, len(_state()), len(_state()))
    assert [a.done_bytes for a in seen] == sorted(a.done_bytes for a in seen)


def test_worker_results_keep_lazy_conjugate_and_negative_views() -> None:
    import pickle

    from initscope.parallel.workers import _dumps

    z = torch.randn(4, dtype=torch.complex64)
    x = torch.randn(4)
    m = torch.randn(3, 5)
    back = pickle.loads(_dumps([z.conj(), torch._neg_view(x), m.T]))
    assert torch.equal(back[0], z.conj().resolve_conj())
    assert torch.equal(back[1], -x)
    assert torch.equal(back[2], m.T)
