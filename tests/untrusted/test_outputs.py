"""Outputs never lose data: never an input file, never half-written, never a race lost
silently, never a temporary file left behind. Each test is a reproduction that failed before
its fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from initscope.io.saving import write_safetensors

ROOT = Path(__file__).resolve().parents[2]
RULES = "rules:\n  - param: bias\n    init: zeros\nunmatched: keep\n"


def _sharded(folder: Path, prefix: str = "a.") -> Path:
    """A folder with two shards and an index; returns the index."""
    folder.mkdir()
    torch.manual_seed(0)
    weight, bias = f"{prefix}weight", f"{prefix}bias"
    write_safetensors(folder / "m-1.safetensors", {weight: torch.randn(4, 4)})
    write_safetensors(folder / "m-2.safetensors", {bias: torch.randn(4)})
    index = folder / "m.safetensors.index.json"
    index.write_text(
        json.dumps({"weight_map": {weight: "m-1.safetensors", bias: "m-2.safetensors"}})
    )
    return index


def _bytes(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


@pytest.mark.parametrize("target_is", ["folder", "index"])
@pytest.mark.parametrize("force", [False, True])
def test_no_output_replaces_a_shard(
    runner: CliRunner, tmp_path: Path, target_is: str, force: bool
) -> None:
    index = _sharded(tmp_path / "model")
    target = str(index if target_is == "index" else index.parent)
    rules = tmp_path / "r.yaml"
    rules.write_text(RULES)
    before = _bytes(index.parent)
    shard = str(index.parent / "m-2.safetensors")
    extra = ["--force"] if force else []
    for args in (
        ["report", target, "-o", shard],
        ["report", target, "--html", shard],
        ["check", target, "-o", shard],
        ["diff", target, target, "-o", shard],
        ["apply", "--rules", str(rules), target, "-o", shard, *extra],
        ["report", target, "-o", str(index)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        said = ("is one of the files the command reads", "is one of the inputs")
        if args[0] == "apply" and not force:
            said = ("already exists",)  # refused before anything else is looked at
        assert any(s in result.stderr for s in said), result.stderr
    assert _bytes(index.parent) == before


def test_no_output_replaces_a_dcp_storage_file(runner: CliRunner, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(
            {"w": torch.randn(3, 3)}, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True
        )
    before = _bytes(folder)
    for name in ("__0_0.distcp", ".metadata"):
        result = runner.invoke(app, ["report", str(folder), "-o", str(folder / name)])
        assert result.exit_code == 2, result.output
        assert "is one of the files the command reads" in result.stderr
    assert _bytes(folder) == before


@pytest.mark.parametrize("checkpoint_is", ["file", "folder"])
def test_no_output_replaces_a_specs_checkpoint(
    runner: CliRunner, tmp_path: Path, checkpoint_is: str
) -> None:
    if checkpoint_is == "file":
        checkpoint = written = tmp_path / "m.safetensors"
        write_safetensors(checkpoint, {"weight": torch.randn(4, 4), "bias": torch.randn(4)})
    else:
        checkpoint = _sharded(tmp_path / "model", prefix="").parent
        written = checkpoint / "m-2.safetensors"
    spec = tmp_path / "s.yaml"
    spec.write_text(f"model: torch.nn:Linear\ncheckpoint: {checkpoint.name}\n"
                    "kwargs: {in_features: 4, out_features: 4}\n")  # fmt: skip
    before = _bytes(written.parent)
    for args in (
        ["report", str(spec), "-o", str(written)],
        ["report", str(spec), "--html", str(written)],
        ["check", str(spec), "-o", str(written)],
        ["diff", str(spec), str(spec), "-o", str(written)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "is one of the files the command reads" in result.stderr, result.stderr
        assert "Traceback" not in result.output
    assert _bytes(written.parent) == before


def _apply_cmd(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    rules = tmp_path / "r.yaml"
    rules.write_text(RULES)
    return [
        sys.executable, "-m", "initscope", "apply", "--rules", str(rules), "torch.nn:Linear",
        "--arg", "in_features=2000", "--arg", "out_features=2000", "-o", str(out), "-q", *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_apply_leaves_no_temporary_file(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out.safetensors"
    # Slow the write down (without changing it) so the signal lands while the file is open.
    slow = (
        "import sys, time\n"
        "import initscope.io.saving as saving\n"
        "real = saving.write_safetensors\n"
        "def slow(*a, **k):\n"
        "    time.sleep(30)\n"
        "    return real(*a, **k)\n"
        "saving.write_safetensors = slow\n"
        "from initscope.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    cmd = _apply_cmd(tmp_path, out)
    proc = subprocess.Popen(
        [sys.executable, "-c", slow, *cmd[3:]],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.safetensors.initscope-*.tmp")):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the temporary file never appeared"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "initscope: interrupted" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.mark.slow
def test_a_signalled_run_with_workers_says_one_line(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    write_safetensors(model, {f"l{i}.weight": torch.randn(64, 64) for i in range(4)})
    started = tmp_path / "started"
    started.mkdir()
    # Hold each forked worker in its start-up (workers set torch to one thread), so the
    # signal lands while they run; the pool then ends them with SIGTERM.
    slow = (
        "import os, pathlib, sys, time, torch\n"
        "parent = os.getpid()\n"
        "real = torch.set_num_threads\n"
        "def slow(n):\n"
        "    if os.getpid() != parent:\n"
        f"        pathlib.Path({str(started)!r}, str(os.getpid())).touch()\n"
        "        time.sleep(30)\n"
        "    return real(n)\n"
        "torch.set_num_threads = slow\n"
        "from initscope.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", slow, "report", str(model), "--workers", "2", "-q"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(list(started.iterdir())) < 2:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "initscope: interrupted\n"  # not a KeyboardInterrupt traceback per worker


@pytest.mark.slow
def test_a_killed_runs_temporary_file_is_cleaned_by_the_next_run(
    runner: CliRunner, tmp_path: Path
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".out.safetensors.initscope-{dead.stdout.strip()}-abcd1234.tmp"
    stale.write_bytes(b"half a file")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    alive = tmp_path / f".out.safetensors.initscope-{os.getppid()}-efgh5678.tmp"
    alive.write_bytes(b"another run's file")
    other = tmp_path / f".other.safetensors.initscope-{dead.stdout.strip()}-abcd1234.tmp"
    other.write_bytes(b"another output's file")
    os.utime(other, (old, old))
    mine = tmp_path / ".out.safetensors.tmp"  # not initscope's name pattern
    mine.write_bytes(b"the user's")
    rules = tmp_path / "r.yaml"
    rules.write_text(RULES)
    out = tmp_path / "out.safetensors"
    args = ["--arg", "in_features=3", "--arg", "out_features=2", "-o", str(out)]
    result = runner.invoke(app, ["apply", "--rules", str(rules), "nn.Linear", *args])
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert not stale.exists()
    assert alive.exists() and other.exists() and mine.exists()


@pytest.mark.slow
def test_remove_stale_temps_keeps_files_newer_than_the_run(tmp_path: Path) -> None:
    from initscope.io.output import remove_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    fresh = tmp_path / f".x.pt.initscope-{dead.stdout.strip()}-zzzz.tmp"
    fresh.write_bytes(b"")
    future = time.time() + 3600
    os.utime(fresh, (future, future))
    assert remove_stale_temps(tmp_path / "x.pt") == []
    assert fresh.exists()


@pytest.mark.slow
def test_concurrent_applies_to_one_new_output_give_one_writer(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # Every run writes only once all four are past the early "already exists" check, so
    # that check cannot be what decides: the race is on the output's name itself.
    wait = (
        "import os, pathlib, sys, time\n"
        "import initscope.io.saving as saving\n"
        "real = saving.write_safetensors\n"
        "def after_all(*a, **k):\n"
        f"    here = pathlib.Path({str(barrier)!r})\n"
        "    (here / str(os.getpid())).touch()\n"
        "    deadline = time.monotonic() + 60\n"
        "    while len(list(here.iterdir())) < 4 and time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        "    return real(*a, **k)\n"
        "saving.write_safetensors = after_all\n"
        "from initscope.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    cmd = [sys.executable, "-c", wait, *_apply_cmd(tmp_path, out)[3:]]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    assert len(list(barrier.iterdir())) == 4, results
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2, 2, 2], results
    assert all("already exists" in err for code, err in results if code == 2)
    from initscope.io.checkpoints import open_checkpoint

    with open_checkpoint(out) as ckpt:
        assert torch.equal(ckpt.load("bias"), torch.zeros(2000))
    assert not list(tmp_path.glob(".*.tmp"))


def crafted_inputs(folder: Path) -> dict[str, Path]:
    index = _sharded(folder / "sharded")
    return {"sharded-folder": index.parent, "sharded-index": index}


def test_without_hard_links_an_existing_output_is_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from initscope.io.output import OutputError, atomic_path

    def no_links(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "out.bin"
    with atomic_path(out, replace=False) as tmp:
        tmp.write_bytes(b"first")
    with pytest.raises(OutputError, match="already exists"), atomic_path(out, replace=False) as tmp:
        tmp.write_bytes(b"second")
    assert out.read_bytes() == b"first"
    # Interrupted between claiming the name and the rename: no empty file is left there.
    real = os.replace

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "new.bin", replace=False) as tmp:
        tmp.write_bytes(b"data")
    monkeypatch.setattr(os, "replace", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
