"""Fuzz the checkpoint readers with damaged files: truncated, bit-flipped, overwritten.

Whatever the damage, ``initscope report FILE --format json`` either works (exit 0, stdout is
strict JSON) or reports a user error (exit 2, one ``initscope: error:`` line), never an
internal error, a traceback or a hang; and at library level, opening the file and reading
every tensor raises nothing but :class:`~initscope.errors.CheckpointError`.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import signal
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from initscope.cli import app
from initscope.errors import CheckpointError
from initscope.io.checkpoints import open_checkpoint
from tests.fixtures.models import Tiny

# Per format and property; the whole file runs in seconds. Hunt longer with e.g.
# INITSCOPE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_checkpoints.py
EXAMPLES = int(os.environ.get("INITSCOPE_FUZZ_EXAMPLES", "60"))
HANG_S = 20  # hard per-example limit (the deadline below only reports slowness afterwards)
FUZZ = settings(
    max_examples=EXAMPLES,
    # No timing deadline (a loaded CI machine is slow, not wrong); HANG_S catches hangs. The
    # default run is the same every time; INITSCOPE_FUZZ_EXAMPLES hunts with fresh inputs.
    deadline=None,
    derandomize="INITSCOPE_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FORMATS = ("pt", "safetensors")


# -- the files to damage -----------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """A valid checkpoint's bytes, and the byte ranges where damage is most interesting."""

    suffix: str
    data: bytes
    hot: tuple[tuple[int, int], ...]


def _state() -> dict[str, torch.Tensor]:
    # float32 weights, BatchNorm's 0-dim int64 counter, and a float16 tensor.
    torch.manual_seed(0)
    return {**Tiny().state_dict(), "emb.weight": torch.randn(4, 2).half()}


def _pt_base() -> Base:
    buf = io.BytesIO()
    torch.save(_state(), buf)  # the zip format, as torch.save writes files
    data = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        pkl = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
    pkl_end = pkl.header_offset + 30 + len(pkl.filename) + len(pkl.extra) + pkl.compress_size
    central = data.find(b"PK\x01\x02")  # the central directory, up to the end of the file
    assert 0 < pkl_end < central < len(data)
    return Base(".pt", data, ((pkl.header_offset, pkl_end), (central, len(data))))


def _safetensors_base() -> Base:
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in _state().items()})
    header_end = 8 + int.from_bytes(data[:8], "little")
    return Base(".safetensors", data, ((0, header_end), (header_end, len(data))))


@functools.cache
def base(fmt: str) -> Base:
    return {"pt": _pt_base, "safetensors": _safetensors_base}[fmt]()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_serial = itertools.count()


def _write(scratch: Path, b: Base, data: bytes) -> Path:
    # A fresh name per example: an earlier example's file may still be memory-mapped.
    path = scratch / f"mutant{next(_serial)}{b.suffix}"
    path.write_bytes(data)
    return path


# -- mutations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    flips: tuple[tuple[int, int], ...] = ()  # (offset, bit)
    writes: tuple[tuple[int, bytes], ...] = ()  # (offset, bytes written there)
    truncate: int | None = None  # keep this many bytes

    def apply(self, data: bytes) -> bytes:
        buf = bytearray(data)
        for at, bit in self.flips:
            buf[at] ^= 1 << bit
        for at, patch in self.writes:
            buf[at : at + len(patch)] = patch[: len(buf) - at]
        if self.truncate is not None:
            del buf[self.truncate :]
        return bytes(buf)


@st.composite
def mutations(draw: st.DrawFn, b: Base) -> Mutation:
    size = len(b.data)
    offsets = st.one_of(st.integers(0, size - 1), *(st.integers(lo, hi - 1) for lo, hi in b.hot))
    kind = draw(st.sampled_from(("truncate", "overwrite", "both")))
    flips: list[tuple[int, int]] = []
    writes: list[tuple[int, bytes]] = []
    truncate: int | None = None
    if kind != "truncate":
        flips = draw(st.lists(st.tuples(offsets, st.integers(0, 7)), max_size=4))
        writes = draw(
            st.lists(
                st.tuples(offsets, st.binary(min_size=1, max_size=8)),
                min_size=0 if flips else 1,
                max_size=4,
            )
        )
    if kind != "overwrite":
        truncate = draw(offsets)
    return Mutation(tuple(flips), tuple(writes), truncate)


# -- a hard time limit ------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` swallows it."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    if not hasattr(signal, "setitimer"):  # pragma: no cover - Windows
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"one example ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- the properties ---------------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _check_cli(path: Path) -> None:
    # pytest records warnings rather than printing them; record them here (Python's default
    # filters) and count them as the stderr lines a real run would print.
    with warnings.catch_warnings(record=True) as caught, time_limit(HANG_S):
        warnings.simplefilter("always")
        for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
            warnings.simplefilter("ignore", quiet)
        warnings.simplefilter("ignore", ResourceWarning)
        result = CliRunner().invoke(app, ["report", str(path), "--format", "json"])
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 0:
        assert result.stderr == "", result.stderr
        doc = json.loads(result.stdout, parse_constant=_reject_constant)
        assert isinstance(doc, dict) and isinstance(doc.get("parameters"), list), result.stdout
    else:
        assert result.stdout == "", result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("initscope: error: "), result.stderr


def _check_library(path: Path) -> None:
    with time_limit(HANG_S):
        try:
            with open_checkpoint(path) as ckpt:
                for name in ckpt.infos:
                    t = ckpt.load(name)
                    assert isinstance(t, torch.Tensor)
                    t.clone()  # touch every byte
        except CheckpointError as exc:
            assert exc.one_line() and "\n" not in exc.one_line()


@pytest.mark.parametrize("fmt", FORMATS)
def test_undamaged_base_reports(fmt: str, scratch: Path) -> None:
    # The control: every example below starts from a file that reports cleanly.
    path = _write(scratch, base(fmt), base(fmt).data)
    result = CliRunner().invoke(app, ["report", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout, parse_constant=_reject_constant)
    assert sorted(p["name"] for p in doc["parameters"]) == sorted(_state())
    _check_library(path)


@pytest.mark.slow  # hypothesis: many examples
@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_cli_survives_damaged_checkpoint(fmt: str, scratch: Path, data: st.DataObject) -> None:
    b = base(fmt)
    mutation = data.draw(mutations(b), label="mutation")
    _check_cli(_write(scratch, b, mutation.apply(b.data)))


@pytest.mark.slow  # hypothesis: many examples
@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_open_checkpoint_raises_only_checkpoint_error(
    fmt: str, scratch: Path, data: st.DataObject
) -> None:
    b = base(fmt)
    mutation = data.draw(mutations(b), label="mutation")
    _check_library(_write(scratch, b, mutation.apply(b.data)))
