"""torch.save files from strangers: structure is read by the weights-only unpickler onto the
meta device, values by ``pread`` one tensor at a time. Each test is a reproduction that failed
before its fix (a hang, a SIGBUS, an internal error, a misleading message)."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from initscope.io.checkpoints import open_checkpoint

ROOT = Path(__file__).resolve().parents[2]


class RunsCode:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (self.marker, "w"))


def _run(*args: str, timeout: float = 60, preamble: str = "") -> subprocess.CompletedProcess[str]:
    """``initscope ARGS`` in a fresh process (a SIGBUS would kill the test runner)."""
    code = textwrap.dedent(preamble) + "\nfrom initscope.cli import main\nmain(sys.argv[1:])\n"
    return subprocess.run(
        [sys.executable, "-c", "import sys\n" + code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_a_stride_zero_tensor_of_2_62_elements_is_refused(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "huge.pt"
    torch.save({"w": torch.zeros(1).as_strided((2**31, 2**31), (0, 0))}, path)
    for command in ("report", "check"):
        done = _run(command, str(path), timeout=30)  # walked 2^62 values before: a hang
        assert done.returncode == 2, done.stderr
        assert "tensor 'w' is larger than its storage" in done.stderr
        assert "Traceback" not in done.stderr


def test_a_conjugated_complex_tensor_reads_its_values(runner: CliRunner, tmp_path: Path) -> None:
    torch.manual_seed(0)
    z = torch.randn(64, dtype=torch.cfloat)
    path = tmp_path / "conj.pt"
    torch.save({"z": z.conj(), "n": torch.randn(8)._neg_view()}, path)
    with open_checkpoint(path) as ckpt:
        assert torch.equal(ckpt.load("z"), z.conj().resolve_conj())
    for command in (["report"], ["check"], ["diff", str(path)]):
        result = runner.invoke(app, [*command, str(path)])
        assert result.exit_code in (0, 1), result.output
        assert "internal error" not in result.stderr


def test_views_and_rows_read_only_their_elements(tmp_path: Path) -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    state = {"w": w, "wt": w.t(), "tail": w[4:], "col": w[:, 1]}
    path = tmp_path / "views.pt"
    torch.save(state, path)
    with open_checkpoint(path) as ckpt:
        for name, t in state.items():
            assert torch.equal(ckpt.load(name), t), name
        assert torch.equal(ckpt.read_rows("w", 2, 4), w[2:4])
        assert ckpt.aliases == {}  # views of one storage, but no two are the same tensor
    tied = tmp_path / "tied.pt"
    torch.save({"a": w, "b": w}, tied)
    with open_checkpoint(tied) as ckpt:
        assert ckpt.aliases == {"b": "a"}


@pytest.mark.slow
def test_a_pt_truncated_while_it_is_read_is_an_error_not_a_sigbus(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    torch.save({f"layer{i}.weight": torch.randn(256, 256) for i in range(8)}, path)
    # Truncate the file after it is opened and before the tensors are read: a mapped file
    # would kill the process with SIGBUS (-7) on the first read past the end.
    preamble = f"""
        import os
        import initscope.io.checkpoints as c
        real = c.open_checkpoint
        def opened_then_truncated(*a, **k):
            ckpt = real(*a, **k)
            os.truncate({str(path)!r}, 4096)
            return ckpt
        c.open_checkpoint = opened_then_truncated
        import initscope.io.models
        initscope.io.models.open_checkpoint = opened_then_truncated
    """
    done = _run("report", str(path), "--format", "json", preamble=preamble)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "cannot read tensor" in done.stderr
    assert "the file ends" in done.stderr


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_pickle_needing_a_global_says_unsafe_load(
    runner: CliRunner, tmp_path: Path, protocol: int
) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / f"p{protocol}.pt"
    path.write_bytes(pickle.dumps({"w": RunsCode(marker)}, protocol=protocol))
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2, result.output
    assert "is a pickle that needs io.open to load" in result.stderr
    assert "--unsafe-load" in result.stderr
    assert not marker.exists()


def test_a_torch_zip_whose_pickle_needs_a_global(runner: CliRunner, tmp_path: Path) -> None:
    import argparse

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    payload = pickle.dumps({"w": argparse.Namespace(a=1)}, protocol=4)
    path = tmp_path / "zip.pt"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, payload if item.filename.endswith("data.pkl") else src.read(item))
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2, result.output
    assert "needs argparse.Namespace to load" in result.stderr


def test_garbage_is_corrupt_not_unsafe(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\x01" + bytes(range(200, 256)) * 3)
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2, result.output
    assert "cannot read" in result.stderr and "--unsafe-load" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["pt", "safetensors"])
def test_apply_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, suffix: str) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - param: bias\n    init: zeros\nunmatched: keep\n")
    out = tmp_path / f"out.{suffix}"
    # A file-size limit makes writes past 100 kB fail as a full disk does (EFBIG, not ENOSPC).
    preamble = """
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    """
    done = _run(
        "apply", "--rules", str(rules), "torch.nn:Linear", "--arg", "in_features=300",
        "--arg", "out_features=300", "-o", str(out), "-q", preamble=preamble,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cannot write {out}: File too large" in done.stderr
    assert list(tmp_path.iterdir()) == [rules]


def crafted_inputs(folder: Path) -> dict[str, Path]:
    marker = folder / "MARKER-pickles"
    cases: dict[str, Path] = {}
    for protocol in (0, 4, 5):
        path = folder / f"protocol{protocol}.pt"
        path.write_bytes(pickle.dumps({"w": RunsCode(marker)}, protocol=protocol))
        cases[f"protocol{protocol}-runs-code"] = path
    torch.save({"w": torch.zeros(1).as_strided((2**31, 2**31), (0, 0))}, folder / "stride0.pt")
    cases["stride0"] = folder / "stride0.pt"
    torch.save({"z": torch.randn(16, dtype=torch.cfloat).conj()}, folder / "conj.pt")
    cases["conj-complex"] = folder / "conj.pt"
    torch.save({"w": torch.randn(8, 8)}, folder / "cut.pt")
    data = (folder / "cut.pt").read_bytes()
    (folder / "cut.pt").write_bytes(data[: len(data) // 2])
    cases["truncated"] = folder / "cut.pt"
    (folder / "sparse.pt").write_bytes(b"")
    torch.save({"s": torch.eye(4).to_sparse()}, folder / "sparse.pt")
    cases["sparse"] = folder / "sparse.pt"
    (folder / "json.pt").write_text(json.dumps({"w": [1, 2, 3]}))
    cases["json-named-pt"] = folder / "json.pt"
    return cases
