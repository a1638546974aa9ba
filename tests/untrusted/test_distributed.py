"""``torchrun ... --distributed`` ends with exit 0 every time: each rank waits for the others
and closes its process group before it exits (rank 0 aborted in 2-3 of 6 runs before). A rank
whose share fails does not leave the others waiting: every rank stops on its error."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from initscope.io.saving import write_safetensors

pytestmark = pytest.mark.slow
RUNS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_check_exits_0_every_time(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    torchrun, exe = bin_dir / "torchrun", bin_dir / "initscope"
    if not torchrun.exists() or not exe.exists():
        pytest.skip("torchrun or the initscope script is not installed beside this python")
    torch.manual_seed(0)
    for i in range(3):
        layer = torch.nn.Linear(64, 64)
        write_safetensors(
            tmp_path / f"m-{i}.safetensors",
            {f"l{i}.weight": layer.weight.detach(), f"l{i}.bias": layer.bias.detach()},
        )
    codes = []
    for _ in range(RUNS):
        done = subprocess.run(
            [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1",
             f"--master_port={_free_port()}", str(exe), "check", str(tmp_path), "-q",
             "--distributed"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if "Address already in use" in done.stderr:
            continue  # the port was taken between choosing and binding it: not this test's
        codes.append(done.returncode)
        assert done.returncode == 0, done.stderr[-1500:]
    assert len(codes) >= RUNS - 2


# One rank's share fails (a tensor only it reads is unreadable); the job runs as the CLI does:
# map_over_ranks, then finish() on the way out. Each rank notes its pid, for the test to end
# it if it hangs (torchrun starts its workers in sessions of their own).
_ONE_RANK_FAILS = """
import os
import sys
from pathlib import Path
from initscope.parallel.distributed import finish, init_from_env, map_over_ranks
from initscope.errors import CheckpointError

(Path(sys.argv[1]) / f"pid-{os.getpid()}").touch()
group = init_from_env()

def task(i):
    if group.rank == 1:
        raise CheckpointError(f"tensor {i} cannot be read", "rank 1 only")
    return i

try:
    map_over_ranks(task, [8, 8, 8, 8], group, lambda f, mine: [f(j) for j in range(len(mine))])
except CheckpointError as exc:
    print(f"rank {group.rank}: {exc.one_line()}", file=sys.stderr)
    sys.exit(2)
finally:
    finish()
"""


def test_a_failing_rank_stops_every_rank_with_its_error(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this python")
    script, pids, log = tmp_path / "job.py", tmp_path / "pids", tmp_path / "log"
    script.write_text(textwrap.dedent(_ONE_RANK_FAILS))
    pids.mkdir()
    with log.open("w") as out:
        job = subprocess.Popen(
            [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1",
             f"--master_port={_free_port()}", str(script), str(pids)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            job.wait(timeout=60)  # before: both ranks waited for gloo's timeout, 30 minutes
        except subprocess.TimeoutExpired:
            for pid in [job.pid, *(int(f.name[4:]) for f in pids.iterdir())]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            job.wait()
            pytest.fail("the ranks kept waiting on each other after rank 1 failed")
    err = log.read_text()
    assert job.returncode != 0, err[-1500:]
    for rank in (0, 1):  # rank 0, which renders, says why the job failed: rank 1's error
        assert f"rank {rank}: tensor 1 cannot be read; rank 1 only" in err, err[-1500:]
    assert "SIGABRT" not in err, err[-1500:]  # (torchrun itself reports the exit 2s)
