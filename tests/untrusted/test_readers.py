"""Folders, indexes, shards and DCP checkpoints from strangers: no code runs, nothing blocks,
no path leaves the folder. Each test is a reproduction that failed before its fix."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from initscope.errors import CheckpointError
from initscope.io.checkpoints import open_checkpoint
from initscope.io.saving import write_safetensors

ROOT = Path(__file__).resolve().parents[2]


class RunsCode:
    """Unpickling this creates ``marker``: a test asserting the marker is absent proves the
    payload never ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (self.marker, "w"))


@dataclass(frozen=True)
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _cli(args: list[str], timeout: float = 60) -> Ran:
    """``initscope ARGS`` in a subprocess with a hard timeout: what blocks in a system call
    (opening a FIFO waits for a writer forever) fails the test instead of hanging the suite."""
    done = subprocess.run(
        [sys.executable, "-m", "initscope", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def _dcp(folder: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    state = {"w": torch.randn(8, 4), "b": torch.zeros(4)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)
    return folder


def _errors(result: object) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    return stderr


# -- DCP .metadata is data, not code -------------------------------------------------------------


def test_a_dcp_metadata_pickle_runs_no_code(runner: CliRunner, tmp_path: Path) -> None:
    folder = _dcp(tmp_path / "ckpt")
    marker = tmp_path / "MARKER"
    (folder / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    for command in (["report"], ["check"], ["diff", str(folder)]):
        result = runner.invoke(app, [*command, str(folder)])
        assert result.exit_code == 2, result.output
        assert "is not a DCP checkpoint initscope can read safely" in _errors(result)
        assert "--unsafe-load" in result.stderr
    assert not marker.exists()


def test_a_genuine_dcp_folder_still_reads(runner: CliRunner, tmp_path: Path) -> None:
    from initscope.io.checkpoints import checkpoint_files

    folder = _dcp(tmp_path / "ckpt")
    result = runner.invoke(app, ["report", str(folder), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["parameters"]}
    assert rows["w"]["shape"] == [8, 4]
    files = checkpoint_files(folder)
    assert folder / ".metadata" in files
    assert any(f.suffix == ".distcp" for f in files)


def test_dcp_metadata_naming_a_file_outside_the_folder(tmp_path: Path) -> None:
    folder = _dcp(tmp_path / "ckpt")
    from initscope.io.dcp import read_metadata

    metadata = read_metadata(folder)
    for info in metadata.storage_data.values():
        info.relative_path = "../secret.distcp"
    (tmp_path / "secret.distcp").write_bytes(bytes(10_000))
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match="not a file in"):
        open_checkpoint(folder)


def test_dcp_declaring_a_huge_tensor_is_refused_before_allocating(tmp_path: Path) -> None:
    folder = _dcp(tmp_path / "ckpt")
    from initscope.io.dcp import read_metadata

    metadata = read_metadata(folder)
    md = metadata.state_dict_metadata["w"]
    md.size = torch.Size([2**31, 2**31])
    md.chunks[0].sizes = torch.Size([2**31, 2**31])
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match="declares 'w' chunk 0"):
        open_checkpoint(folder)


def test_dcp_missing_its_distcp_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    folder = _dcp(tmp_path / "ckpt")
    for f in folder.glob("*.distcp"):
        f.unlink()
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2, result.output
    assert "__0_0.distcp named by" in _errors(result)
    assert "is missing" in result.stderr


def _rewrite_chunks(folder: Path, change: Callable[[bytes], bytes]) -> None:
    """Each .distcp chunk of the DCP folder replaced by ``change(chunk)``, the metadata's
    offsets and lengths updated to match."""
    from initscope.io.dcp import read_metadata

    metadata = read_metadata(folder)
    files: dict[str, bytearray] = {}
    for info in metadata.storage_data.values():
        with open(folder / info.relative_path, "rb") as fh:
            fh.seek(info.offset)
            chunk = change(fh.read(info.length))
        out = files.setdefault(info.relative_path, bytearray())
        info.offset, info.length = len(out), len(chunk)
        out += chunk
    for rel, data in files.items():
        (folder / rel).write_bytes(bytes(data))
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def _deflated(chunk: bytes) -> bytes:
    """The torch.save archive ``chunk`` with its records deflated: torch's reader still loads
    it, inflating each record to the size its header claims."""
    source = zipfile.ZipFile(io.BytesIO(chunk))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            archive.writestr(info.filename, source.read(info.filename))
    return out.getvalue()


def _junk_archive(chunk: bytes) -> bytes:
    """A stored zip as long as ``chunk`` whose pickle is junk: torch.load fails inside DCP."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", b"junk")
        archive.writestr("archive/pad", bytes(len(chunk)))
    return out.getvalue()


def _moved_zip64(chunk: bytes) -> bytes:
    """The archive with its zip64 locator pointing at its start: torch's reader follows the
    locator, Python's zipfile looks just before the end record, so they would read two
    different central directories."""
    at = len(chunk) - 22 - 20 + 8  # the locator's offset field
    return chunk[:at] + bytes(8) + chunk[at + 8 :]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_deflated, "holds compressed or overlapping records"),
        (_moved_zip64, "its zip64 record is not before its end record"),
        (lambda chunk: chunk + b"junk", "no end-of-archive record at its end"),
    ],
)
def test_a_dcp_chunk_archive_that_could_expand_is_refused(
    runner: CliRunner, tmp_path: Path, change: Callable[[bytes], bytes], message: str
) -> None:
    # torch's zip reader allocates the inflated size a record's header claims: a deflated
    # record of zeros is a bomb (1 MB of file, 1 GB of memory). torch.save never deflates.
    folder = _dcp(tmp_path / "ckpt")
    _rewrite_chunks(folder, change)
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2, result.output
    assert message in _errors(result)


def test_a_dcp_chunk_torch_cannot_load_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    folder = _dcp(tmp_path / "ckpt")
    _rewrite_chunks(folder, _junk_archive)
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2, result.output
    assert f"cannot read tensor 'b' from {folder}" in _errors(result)
    assert "Traceback" not in result.stderr and "CheckpointException" not in result.stderr


def test_dcp_chunks_that_do_not_cover_the_tensor(runner: CliRunner, tmp_path: Path) -> None:
    # One 8x4 chunk for a tensor declared 64x4: the other 56 rows would be uninitialized
    # memory read as weights.
    folder = _dcp(tmp_path / "ckpt")
    from initscope.io.dcp import read_metadata

    metadata = read_metadata(folder)
    metadata.state_dict_metadata["w"].size = torch.Size([64, 4])
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2, result.output
    assert "the chunks of 'w' hold 32 elements, not the [64, 4] it declares" in _errors(result)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("chunks", 5, "'w' has no list of chunks"),
        ("offsets", torch.Size([9, 0]), "chunk 0 of 'w' lies outside its [8, 4] tensor"),
        ("sizes", torch.Size([32]), "chunk 0 of 'w' has no valid size"),
        ("relative_path", "a\x00b", "embedded null byte"),
        ("transform_descriptors", ["zstd/1"], "does not expand compressed DCP storage"),
    ],
)
def test_dcp_metadata_with_fields_of_the_wrong_kind(
    runner: CliRunner, tmp_path: Path, field: str, value: object, message: str
) -> None:
    from initscope.io.dcp import read_metadata

    folder = _dcp(tmp_path / "ckpt")
    metadata = read_metadata(folder)
    md = metadata.state_dict_metadata["w"]
    if field == "chunks":
        md.chunks = value
    elif field in ("offsets", "sizes"):
        object.__setattr__(md.chunks[0], field, value)
    else:
        for info in metadata.storage_data.values():
            setattr(info, field, value)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2, result.output
    assert message in _errors(result)


def test_a_stray_metadata_file_does_not_make_a_model_folder_dcp(
    runner: CliRunner, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    folder = tmp_path / "model"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": torch.ones(3, 3)})
    (folder / "config.json").write_text("{}")
    (folder / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    result = runner.invoke(app, ["report", str(folder), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)["parameters"]] == ["w"]
    assert not marker.exists()


# -- FIFOs, devices and folders where a file is read ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["x.safetensors", "x.pt", "x.bin"])
def test_a_fifo_named_like_a_checkpoint_is_refused(
    runner: CliRunner, tmp_path: Path, name: str
) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    result = _cli(["report", str(fifo)])
    assert result.exit_code == 2, result.output
    assert "is not a regular file" in _errors(result)


@pytest.mark.slow
def test_a_fifo_as_a_shard_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-1.safetensors", {"a": torch.ones(2)})
    os.mkfifo(tmp_path / "model-2.safetensors")
    folder = _cli(["report", str(tmp_path)])
    assert folder.exit_code == 2, folder.output
    assert "model-2.safetensors is not a regular file" in _errors(folder)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(
        json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})
    )
    result = _cli(["report", str(index)])
    assert result.exit_code == 2, result.output
    assert (
        "shard model-2.safetensors listed in model.safetensors.index.json is not a regular file"
        in (_errors(result))
    )


@pytest.mark.slow
def test_a_device_and_a_folder_named_like_checkpoints(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "dir.pt").mkdir()
    write_safetensors(tmp_path / "dir.pt" / "inner.safetensors", {"a": torch.ones(2)})
    os.symlink("/dev/zero", tmp_path / "zero.safetensors")
    device = _cli(["report", str(tmp_path / "zero.safetensors")])
    assert device.exit_code == 2, device.output
    assert "is not a regular file" in _errors(device)
    # A folder of shards never descends into a sub-folder named like a shard.
    (tmp_path / "shards").mkdir()
    write_safetensors(tmp_path / "shards" / "a.safetensors", {"a": torch.ones(2)})
    os.symlink(tmp_path / "shards", tmp_path / "shards" / "loop.safetensors")
    loop = _cli(["report", str(tmp_path / "shards")])
    assert loop.exit_code == 2, loop.output
    assert "loop.safetensors is a folder" in _errors(loop)


@pytest.mark.slow
def test_a_fifo_index_in_a_folder_is_refused(tmp_path: Path) -> None:
    # The folder's *.index.json is found by glob, not named on the command line.
    write_safetensors(tmp_path / "model-1.safetensors", {"a": torch.ones(2)})
    os.mkfifo(tmp_path / "model.safetensors.index.json")
    result = _cli(["report", str(tmp_path)], timeout=30)
    assert result.exit_code == 2, result.output
    assert "model.safetensors.index.json is not a regular file" in _errors(result)


# -- indexes: no cycles, no paths leaving the folder -----------------------------------------------


def test_an_index_naming_itself_or_another_index(runner: CliRunner, tmp_path: Path) -> None:
    a = tmp_path / "a.safetensors.index.json"
    b = tmp_path / "b.safetensors.index.json"
    a.write_text(json.dumps({"weight_map": {"w": a.name}}))
    b.write_text(json.dumps({"weight_map": {"w": a.name, "v": b.name}}))
    for index in (a, b):
        result = runner.invoke(app, ["report", str(index)])
        assert result.exit_code == 2, result.output
        assert "which is not a checkpoint file" in _errors(result)


def test_an_index_whose_weight_map_is_not_strings(runner: CliRunner, tmp_path: Path) -> None:
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": {"nested": 1}}}))
    result = runner.invoke(app, ["report", str(index)])
    assert result.exit_code == 2, result.output
    assert "cannot read" in _errors(result)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_shards_must_stay_in_the_index_folder(runner: CliRunner, tmp_path: Path, how: str) -> None:
    outside = tmp_path / "secret.safetensors"
    write_safetensors(outside, {"w": torch.ones(2)})
    folder = tmp_path / "model"
    folder.mkdir()
    shard = {"dotdot": "../secret.safetensors", "absolute": str(outside)}.get(
        how, "link.safetensors"
    )
    if how == "symlink":
        os.symlink(outside, folder / "link.safetensors")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard}}))
    result = runner.invoke(app, ["report", str(index)])
    assert result.exit_code == 2, result.output
    assert "lies outside" in _errors(result)
    assert "--allow-outside" in result.stderr
    allowed = runner.invoke(app, ["report", str(index), "--allow-outside"])
    assert allowed.exit_code == 0, allowed.output


@pytest.mark.parametrize("allow_outside", [False, True])
def test_an_index_naming_a_symlink_loop_or_a_nul_byte(
    runner: CliRunner, tmp_path: Path, allow_outside: bool
) -> None:
    os.symlink("loop.safetensors", tmp_path / "loop.safetensors")
    flag = ["--allow-outside"] if allow_outside else []
    for shard, message in (
        ("loop.safetensors", "Too many levels of symbolic links"),
        ("a\x00.safetensors", "embedded null byte"),
    ):
        index = tmp_path / "m.safetensors.index.json"
        index.write_text(json.dumps({"weight_map": {"w": shard}}))
        result = runner.invoke(app, ["report", str(index), *flag])
        assert result.exit_code == 2, result.output
        assert message in _errors(result)
        assert "listed in m.safetensors.index.json" in result.stderr


def test_checkpoint_files_lists_the_index_and_its_shards(tmp_path: Path) -> None:
    from initscope.io.checkpoints import checkpoint_files

    write_safetensors(tmp_path / "m-1.safetensors", {"a": torch.ones(2)})
    write_safetensors(tmp_path / "m-2.safetensors", {"b": torch.ones(2)})
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}))
    assert set(checkpoint_files(index)) == {
        index,
        tmp_path / "m-1.safetensors",
        tmp_path / "m-2.safetensors",
    }


def crafted_inputs(folder: Path) -> dict[str, Path]:
    marker = folder / "MARKER-readers"
    cases: dict[str, Path] = {}
    dcp = _dcp(folder / "dcp-evil")
    (dcp / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    cases["dcp-metadata-runs-code"] = dcp
    missing = _dcp(folder / "dcp-missing")
    for f in missing.glob("*.distcp"):
        f.unlink()
    cases["dcp-missing-distcp"] = missing
    stray = folder / "stray"
    stray.mkdir()
    write_safetensors(stray / "model.safetensors", {"w": torch.ones(3, 3)})
    (stray / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    cases["stray-metadata"] = stray
    shards = folder / "fifo-shard"
    shards.mkdir()
    write_safetensors(shards / "a.safetensors", {"a": torch.ones(2)})
    os.mkfifo(shards / "b.safetensors")
    cases["fifo-shard-folder"] = shards
    cycle = folder / "cycle"
    cycle.mkdir()
    a = cycle / "a.safetensors.index.json"
    a.write_text(json.dumps({"weight_map": {"w": "b.safetensors.index.json"}}))
    (cycle / "b.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": a.name}}))
    cases["index-cycle"] = a
    outside = folder / "outside"
    outside.mkdir()
    shutil.copy(stray / "model.safetensors", folder / "secret.safetensors")
    os.symlink(folder / "secret.safetensors", outside / "link.safetensors")
    index = outside / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "link.safetensors"}}))
    cases["index-symlink-leaves"] = index
    deflated = _dcp(folder / "dcp-deflated")
    _rewrite_chunks(deflated, _deflated)
    cases["dcp-deflated-chunk"] = deflated
    short = _dcp(folder / "dcp-short-chunks")
    from initscope.io.dcp import read_metadata

    metadata = read_metadata(short)
    metadata.state_dict_metadata["w"].size = torch.Size([2**20, 4])
    (short / ".metadata").write_bytes(pickle.dumps(metadata))
    cases["dcp-chunks-short-of-size"] = short
    fifo_index = folder / "fifo-index"
    fifo_index.mkdir()
    write_safetensors(fifo_index / "model-1.safetensors", {"a": torch.ones(2)})
    os.mkfifo(fifo_index / "model.safetensors.index.json")
    cases["fifo-index-in-folder"] = fifo_index
    loop = folder / "loop"
    loop.mkdir()
    os.symlink("loop.safetensors", loop / "loop.safetensors")
    (loop / "m.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "loop.safetensors"}})
    )
    cases["index-symlink-loop"] = loop / "m.safetensors.index.json"
    overlap = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    cases["safetensors-overlap"] = _raw_safetensors(folder / "overlap.safetensors", overlap, 24)
    dims = {"w": {"dtype": "F32", "shape": [2**62] * 100_000, "data_offsets": [0, 16]}}
    cases["safetensors-many-dims"] = _raw_safetensors(folder / "dims.safetensors", dims, 16)
    return cases


# -- a record's ties are claims to verify --------------------------------------------------------


def _tied(path: Path, b: torch.Tensor) -> Path:
    from initscope.io.saving import METADATA_KEY, Provenance

    torch.manual_seed(0)
    a = torch.nn.Linear(16, 16).weight.detach()
    record = Provenance("0", extra={"ties": {"b": "a"}})
    write_safetensors(path, {"a": a, "b": b}, {METADATA_KEY: record.to_json()})
    return path


def test_a_record_tie_to_other_values_is_not_trusted(runner: CliRunner, tmp_path: Path) -> None:
    path = _tied(tmp_path / "t.safetensors", torch.full((16, 16), float("nan")))
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 1, result.output
    assert "b" in result.stdout and "NaN" in result.stdout
    with open_checkpoint(path) as ckpt:
        assert "b" not in ckpt.aliases
        assert torch.isnan(ckpt.load("b")).all()


def test_a_record_tie_is_taken_only_between_equal_tensors(tmp_path: Path) -> None:
    with open_checkpoint(_tied(tmp_path / "shape.safetensors", torch.zeros(4))) as ckpt:
        assert "b" not in ckpt.aliases
    torch.manual_seed(0)
    same = torch.nn.Linear(16, 16).weight.detach().clone()
    with open_checkpoint(_tied(tmp_path / "same.safetensors", same)) as ckpt:
        assert ckpt.aliases == {"b": "a"}


# -- safetensors headers are checked, and the file is never mapped whole -------------------------


def _raw_safetensors(path: Path, header: dict[str, object], size: int | None = None) -> Path:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little") + text)
        fh.truncate(8 + len(text) + (size or 0))  # sparse: no disk, no memory
    return path


def test_a_30_gb_safetensors_is_read_not_called_corrupt(tmp_path: Path) -> None:
    big = 30 * 2**30
    header = {
        "small": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
        "big": {"dtype": "BF16", "shape": [big // 2 // 4096, 4096], "data_offsets": [64, 64 + big]},
    }
    path = _raw_safetensors(tmp_path / "big.safetensors", header, 64 + big)
    with open_checkpoint(path) as ckpt:
        assert ckpt.infos["big"].numel * 2 == big
        assert torch.equal(ckpt.load("small"), torch.zeros(4, 4))
        assert torch.equal(ckpt.read_rows("big", 7, 9), torch.zeros(2, 4096, dtype=torch.bfloat16))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 16]}, "but spans 16 bytes"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 10**12]}, "spans"),
        ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, "no valid shape"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}, "no valid data_offsets"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [4096, 4112]}, "is truncated"),
        ({"dtype": "C64", "shape": [4], "data_offsets": [0, 32]}, "has dtype C64"),
    ],
)
def test_a_lying_safetensors_header_is_one_line(
    runner: CliRunner, tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    path = _raw_safetensors(tmp_path / "lies.safetensors", {"w": entry}, 16)
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2, result.output
    assert message in _errors(result)


def test_safetensors_entries_sharing_bytes_are_refused(runner: CliRunner, tmp_path: Path) -> None:
    # The safetensors crate refuses overlapping entries; initscope's own parser must too.
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    path = _raw_safetensors(tmp_path / "overlap.safetensors", header, 24)
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2, result.output
    assert "tensors 'a' and 'b' overlap" in _errors(result)


@pytest.mark.slow
def test_a_shape_of_many_huge_dimensions_is_refused_quickly(tmp_path: Path) -> None:
    # The full product of 100000 dimensions of 2**62 is a 6-million-bit integer: computing it
    # took 24 s; the check stops once the product passes what the entry's bytes can hold.
    entry = {"dtype": "F32", "shape": [2**62] * 100_000, "data_offsets": [0, 16]}
    path = _raw_safetensors(tmp_path / "dims.safetensors", {"w": entry}, 16)
    result = _cli(["report", str(path)], timeout=15)
    assert result.exit_code == 2, result.output
    assert "'w' is over 16 bytes (F32, shape [4611686018427387904, " in _errors(result)
    assert "but spans 16 bytes" in result.stderr


def test_a_header_length_past_the_file(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    path.write_bytes((2**63).to_bytes(8, "little") + b"{}")
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2, result.output
    assert "header length" in _errors(result)


def test_a_safetensors_file_with_no_tensors(runner: CliRunner, tmp_path: Path) -> None:
    path = _raw_safetensors(tmp_path / "none.safetensors", {"__metadata__": {"a": "b"}})
    for command in (["report"], ["check"], ["diff", str(path)]):
        result = runner.invoke(app, [*command, str(path)])
        assert result.exit_code == 2, result.output
        assert "holds no tensors" in _errors(result)


def test_a_model_folder_with_only_a_stray_metadata_is_not_dcp(
    runner: CliRunner, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "holds no checkpoint files" in _errors(result)
    assert not marker.exists()
