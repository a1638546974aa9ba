"""Every crafted input through every command.

Each hostile file or folder below (and every ``crafted_inputs`` of the other modules in this
folder) is the TARGET of report, check, diff, apply and plot. Each run must end with exit 0, 1
or 2, print no traceback, take under ``LIMIT`` seconds, write nothing next to its input, and
leave the input's bytes unchanged. Code-execution payloads write a marker file into the corpus
folder, so "nothing ran" is part of "the folder is unchanged".
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import re
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from initscope.io.saving import METADATA_KEY, Provenance, write_safetensors

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 10.0  # seconds per command and input
# The other modules of this folder each contribute the inputs of their own area.
CONTRIBUTORS = (
    "tests.untrusted.test_readers",
    "tests.untrusted.test_pickles",
    "tests.untrusted.test_records",
    "tests.untrusted.test_patterns",
    "tests.untrusted.test_outputs",
    "tests.untrusted.test_output_escaping",
)
pytestmark = pytest.mark.slow
# What must never reach a terminal raw: C0 controls but tab and newline, DEL, C1 controls and
# the Unicode bidi overrides that reorder what a reader sees.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: if the marker exists, code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (self.marker, "w"))


def _safetensors_raw(path: Path, header: dict[str, object], data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def own_inputs(folder: Path) -> dict[str, Path]:
    """Hostile inputs that no single area owns: each is a reproduction from the field."""
    marker = folder / "MARKER-code-ran"
    cases: dict[str, Path] = {}

    def add(name: str, path: Path) -> None:
        cases[f"corpus/{name}"] = path

    add("garbage.pt", _write(folder / "garbage.pt", os.urandom(4096)))
    add("garbage.safetensors", _write(folder / "garbage.safetensors", os.urandom(4096)))
    add("empty.pt", _write(folder / "empty.pt", b""))
    add("empty.safetensors", _write(folder / "empty.safetensors", b""))
    # A torch.save zip whose pickle runs code (a raw pickle, then inside a torch zip).
    evil = pickle.dumps({"w": _RunsCode(marker)}, protocol=2)
    add("pickle-runs-code.pt", _write(folder / "pickle-runs-code.pt", evil))
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    add("zip-pickle-runs-code.pt", _zip_with_pickle(folder / "zip-evil.pt", buf.getvalue(), evil))
    for protocol in (0, 4, 5):
        data = pickle.dumps({"w": _RunsCode(marker)}, protocol=protocol)
        add(f"protocol{protocol}.pt", _write(folder / f"protocol{protocol}.pt", data))
    # safetensors headers that lie.
    add(
        "header-length-2^63.safetensors",
        _write(folder / "hlen.safetensors", (2**63).to_bytes(8, "little") + b"{}"),
    )
    add(
        "shape-2^62.safetensors",
        _safetensors_raw(
            folder / "shape.safetensors",
            {"w": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 16]}},
            bytes(16),
        ),
    )
    add(
        "offsets-past-end.safetensors",
        _safetensors_raw(
            folder / "past.safetensors",
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 10**12]}},
            bytes(16),
        ),
    )
    add("no-tensors.safetensors", _safetensors_raw(folder / "none.safetensors", {}))
    # Values a float64 sum cannot hold, and names that are terminal escape sequences.
    torch.manual_seed(0)
    add(
        "float64-1e300.safetensors",
        _st(folder / "big.safetensors", {"w": torch.rand(1000, dtype=torch.float64) * 1e300}),
    )
    add(
        "escapes-in-names.safetensors",
        _st(folder / "names.safetensors", {"\x1b[2J\x1b]0;x\x07\r=cmd|x\n.weight": torch.ones(4)}),
    )
    # Non-files where a file is expected.
    fifo = folder / "fifo.safetensors"
    os.mkfifo(fifo)
    add("fifo.safetensors", fifo)
    (folder / "dir.pt").mkdir()
    add("directory.pt", folder / "dir.pt")
    # An index that names itself, and one whose shard leaves the folder.
    (folder / "self").mkdir()
    index = folder / "self" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "model.safetensors.index.json"}}))
    add("index-names-itself", index)
    (folder / "leaves").mkdir()
    _st(folder / "outside.safetensors", {"w": torch.zeros(2)})
    leaves = folder / "leaves" / "model.safetensors.index.json"
    leaves.write_text(json.dumps({"weight_map": {"w": "../outside.safetensors"}}))
    add("index-leaves-folder", leaves)
    # A DCP-looking folder whose .metadata runs code.
    (folder / "dcp").mkdir()
    _write(folder / "dcp" / ".metadata", evil)
    _write(folder / "dcp" / "__0_0.distcp", bytes(64))
    add("dcp-metadata-runs-code", folder / "dcp")
    # Records that would import code that runs on import, or build a huge model.
    for ref in ("antigravity:Linear", "unittest.__main__:main", "this:s"):
        name = ref.split(":")[0].replace(".", "-")
        record = Provenance("0", model={"ref": ref})
        path = folder / f"record-{name}.safetensors"
        write_safetensors(path, {"w": torch.zeros(2)}, {METADATA_KEY: record.to_json()})
        add(f"record-{name}", path)
    # A record tying an all-NaN tensor to a healthy one.
    tie = Provenance("0", extra={"ties": {"b": "a"}})
    path = folder / "nan-tie.safetensors"
    good = torch.nn.Linear(8, 8).weight.detach()
    write_safetensors(
        path, {"a": good, "b": torch.full((8, 8), float("nan"))}, {METADATA_KEY: tie.to_json()}
    )
    add("record-ties-nan", path)
    # A stride-0 tensor that claims 2^62 elements over a 4-byte storage.
    huge = torch.zeros(1).as_strided((2**31, 2**31), (0, 0))
    torch.save({"w": huge}, folder / "stride0.pt")
    add("stride0-2^62.pt", folder / "stride0.pt")
    conj = torch.randn(4, dtype=torch.cfloat).conj()
    add("conj-complex.pt", _pt(folder / "conj.pt", {"w": conj}))
    return cases


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _st(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    write_safetensors(path, tensors)
    return path


def _pt(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _zip_with_pickle(path: Path, good: bytes, payload: bytes) -> Path:
    """A torch.save archive with its data.pkl replaced by ``payload``."""
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = payload if item.filename.endswith("data.pkl") else src.read(item)
            dst.writestr(item, data)
    return path


def all_inputs(folder: Path) -> dict[str, Path]:
    cases = own_inputs(folder)
    for name in CONTRIBUTORS:
        module = importlib.import_module(name)
        area = folder / name.rsplit(".", 1)[-1]
        area.mkdir()
        for case, path in module.crafted_inputs(area).items():
            cases[f"{name.rsplit('.', 1)[-1]}/{case}"] = path
    return cases


def fingerprint(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a regular file's SHA-256, else its kind (a FIFO is
    never opened: that would block)."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for entry in [*dirs, *files]:
            path = Path(root) / entry
            mode = os.lstat(path).st_mode
            rel = str(path.relative_to(folder))
            if stat.S_ISREG(mode):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = stat.filemode(mode)
    return out


def commands(target: Path, out: Path, rules: Path) -> list[tuple[str, list[str]]]:
    t = str(target)
    return [
        ("report", ["report", t, "-q"]),
        ("report-json", ["report", t, "-q", "--format", "json"]),
        ("check", ["check", t, "-q"]),
        ("diff", ["diff", t, t, "-q"]),
        ("apply", ["apply", "--rules", str(rules), t, "-o", str(out / "a.safetensors"), "-q"]),
        ("plot", ["plot", t, "-o", str(out / "plot.png"), "-q"]),
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, all_inputs(folder)


def test_every_input_through_every_command(
    corpus: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    folder, cases = corpus
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - param: bias\n    init: zeros\nunmatched: keep\n")
    before = fingerprint(folder)
    failures: list[str] = []
    for case, target in cases.items():
        out = tmp_path / f"out-{len(failures)}-{abs(hash(case))}"
        out.mkdir()
        spec = tmp_path / "spec.json"
        runs = commands(target, out, rules)
        spec.write_text(json.dumps({"limit": LIMIT, "runs": runs}))
        try:
            done = subprocess.run(
                [sys.executable, "-m", "tests.untrusted.driver", str(spec)],
                capture_output=True,
                text=True,
                cwd=folder,  # the working folder holds the hostile files too
                env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"},
                timeout=LIMIT * len(runs) + 60,
            )
        except subprocess.TimeoutExpired:
            failures.append(f"{case}: the driver hung")
            continue
        if done.returncode != 0:
            failures.append(f"{case}: the process died ({done.returncode}): {done.stderr[-600:]}")
            continue
        for command, r in json.loads(done.stdout.splitlines()[-1]).items():
            where = f"{case} × {command}"
            if r["code"] not in (0, 1, 2):
                failures.append(f"{where}: exit {r['code']}: {r['stderr'][-400:]}")
            elif "Traceback" in r["stderr"] or "Traceback" in r["stdout"]:
                failures.append(f"{where}: traceback: {r['stderr'][-400:]}")
            elif r["code"] == 2 and "initscope: error: " not in r["stderr"]:
                failures.append(f"{where}: exit 2 without an error line: {r['stderr'][-400:]}")
            elif RAW_CONTROL.search(r["stdout"] + r["stderr"]):
                failures.append(f"{where}: a raw control character reached the terminal")
        after = fingerprint(folder)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            failures.append(f"{case}: the corpus folder changed: {changed[:4]}")
            before = after
    assert not failures, "\n".join(failures)
