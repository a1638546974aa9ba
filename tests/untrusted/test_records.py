"""A checkpoint's provenance record is data from a file: it may name a model to rebuild, but
never make initscope import code nobody chose, nor build a model larger than --max-memory,
nor hang or take unbounded memory while trying. Each test is a reproduction that failed
before its fix; names introduced by the fixes are imported inside the tests that use them."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from initscope.io.models import open_target
from initscope.io.saving import METADATA_KEY, PROVENANCE_FORMAT, Provenance, write_safetensors
from initscope.io.targets import TargetOptions
from initscope.measure.report import build_report


def _recorded(
    path: Path,
    ref: str,
    tensors: dict[str, torch.Tensor] | None = None,
    **model: object,
) -> Path:
    record = Provenance("0", model={"ref": ref, "args": [], "kwargs": {}, **model})
    write_safetensors(path, tensors or {"w": torch.zeros(2, 2)}, {METADATA_KEY: record.to_json()})
    return path


class ImportsWhenBuilt(torch.nn.Module):
    """Stands in for an installed model whose constructor imports an optional module on
    first use (transformers models look for optional kernels that way)."""

    def __init__(self) -> None:
        super().__init__()
        importlib.import_module("initscope_records_optional_kernel")
        self.w = torch.nn.Parameter(torch.zeros(2, 2))


def _cli(
    args: list[str], cwd: Path, *, timeout: float = 60, memory_headroom: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``initscope ARGS`` in a fresh process, under a hard time limit; with
    ``memory_headroom``, its address space is capped that many bytes above what importing
    initscope and torch took, so that a large allocation fails instead of happening."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        import torch
        from initscope.cli import main
        headroom = {memory_headroom!r}
        if headroom is not None:
            with open("/proc/self/status") as fh:
                size = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
            cap = size * 1024 + headroom
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        main({args!r})
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- what a record may import -------------------------------------------------------------


def test_a_namespace_package_does_not_import_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner
) -> None:
    # matplotlib installs mpl_toolkits as a namespace package: any folder on the path named
    # mpl_toolkits adds to it, the working folder included.
    pytest.importorskip("mpl_toolkits")
    marker = tmp_path / "MARKER"
    (tmp_path / "mpl_toolkits").mkdir()
    (tmp_path / "mpl_toolkits" / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "import torch\nclass M(torch.nn.Linear):\n    pass\n"
    )
    path = _recorded(tmp_path / "ns.safetensors", "mpl_toolkits.evil:M")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m initscope` would have it
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "namespace package" in result.stderr
    assert "reading it as a bare state dict" in result.stderr
    assert not marker.exists()
    assert "mpl_toolkits.evil" not in sys.modules


@pytest.mark.parametrize(
    "ref",
    [
        "unittest.__main__:main",
        "venv.__main__:main",
        "antigravity:geohash",
        "this:s",
        "__hello__:x",
    ],
)
def test_a_record_never_imports_modules_that_run_on_import(tmp_path: Path, ref: str) -> None:
    module = ref.split(":")[0]
    assert module not in sys.modules
    path = _recorded(tmp_path / "r.safetensors", ref)
    with pytest.warns(UserWarning, match="importing it would run code the record names"):
        report = build_report(str(path))
    assert not report.has_model
    assert module not in sys.modules


def test_record_import_rules() -> None:
    from initscope.io.models import record_import_problem

    assert record_import_problem("torch.nn") is None
    assert record_import_problem("initscope.examples") is None  # an editable install counts
    assert "__main__" in (record_import_problem("torch.__main__") or "")
    assert "not an installed package" in (record_import_problem("tests.no_such_module") or "")
    assert "not a module name" in (record_import_problem("os;rm") or "")


def test_a_dist_info_in_the_working_folder_does_not_install_its_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner
) -> None:
    # A downloaded folder may hold a module with a *.dist-info claiming it: distributions are
    # looked up with the working folder (and the checkpoint's) off the path too.
    marker = tmp_path / "MARKER"
    (tmp_path / "initscope_dist_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "import torch\nclass M(torch.nn.Linear):\n    pass\n"
    )
    dist = tmp_path / "initscope_dist_evil-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: initscope_dist_evil\nVersion: 1.0\n"
    )
    (dist / "top_level.txt").write_text("initscope_dist_evil\n")
    _recorded(tmp_path / "d.safetensors", "initscope_dist_evil:M")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m initscope` would have it
    result = runner.invoke(app, ["report", "d.safetensors"])
    assert result.exit_code == 0, result.output
    assert (
        "d.safetensors's record names initscope_dist_evil:M, a module in the working folder; "
        "initscope does not import it from a record; pass --model initscope_dist_evil:M to "
        "trust it"
    ) in result.stderr
    assert not marker.exists()
    assert "initscope_dist_evil" not in sys.modules
    from initscope.io.models import record_import_problem

    assert record_import_problem("initscope_dist_evil") == (
        "initscope_dist_evil is not an installed package"
    )


def test_a_submodule_outside_its_packages_folder_is_not_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A regular package whose __path__ reaches another folder (pkgutil.extend_path adds every
    # folder of that name on sys.path, the working folder included, when it is imported).
    import initscope

    marker = tmp_path / "MARKER"
    (tmp_path / "initscope").mkdir()
    (tmp_path / "initscope" / "evilrecord.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "import torch\nclass M(torch.nn.Linear):\n    pass\n"
    )
    monkeypatch.setattr(initscope, "__path__", [*initscope.__path__, str(tmp_path / "initscope")])
    path = _recorded(tmp_path / "ext.safetensors", "initscope.evilrecord:M")
    with pytest.warns(UserWarning, match="outside its package's folder"):
        report = build_report(str(path))
    assert not report.has_model
    assert not marker.exists()
    assert "initscope.evilrecord" not in sys.modules


def test_the_working_folder_stays_on_the_path_only_when_a_pth_file_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `pip install -e .` of a flat-layout project writes a .pth naming the project's root:
    # from that folder, a record may use the project as from anywhere else.
    import site

    from initscope.io.models import installed_paths_only

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.syspath_prepend("")  # as under `python -m`
    monkeypatch.setattr(site, "ENABLE_USER_SITE", False)
    site_packages = tmp_path / "site-packages"
    site_packages.mkdir()
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(site_packages)])
    with installed_paths_only():
        assert str(project) not in sys.path
        assert "" not in sys.path
    (site_packages / "__editable__.project.pth").write_text(f"{project}\n")
    with installed_paths_only():
        assert str(project) in sys.path
    assert sys.path[:2] == ["", str(project)]


def test_the_recorded_constructor_does_not_import_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner
) -> None:
    marker = tmp_path / "MARKER"
    (tmp_path / "initscope_records_optional_kernel.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
    )
    path = _recorded(
        tmp_path / "m.safetensors",
        f"{__name__}:ImportsWhenBuilt",
        {"w": torch.zeros(2, 2)},
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "initscope_records_optional_kernel" in result.stderr  # the build failed, and said so
    assert "bare state dict" in result.stderr
    assert not marker.exists()
    assert "initscope_records_optional_kernel" not in sys.modules


def test_a_record_naming_a_function_is_not_called(tmp_path: Path) -> None:
    # torch.manual_seed is importable and callable, but not an nn.Module class.
    path = _recorded(tmp_path / "f.safetensors", "torch:manual_seed")
    with pytest.warns(UserWarning, match="not an nn.Module class"):
        report = build_report(str(path))
    assert not report.has_model


def test_arguments_that_are_not_plain_data_are_refused_however_deep(
    tmp_path: Path, runner: CliRunner
) -> None:
    # A nested {model: ...} spec would call another factory; JSON may nest it as deep as its
    # parser allows (the check used to recurse, and crashed with RecursionError).
    text = json.dumps(
        {"format": PROVENANCE_FORMAT, "version": "0", "model": {"ref": "torch.nn:Linear"}}
    )
    nested = "[" * 900 + '{"model": "torch.nn:Linear"}' + "]" * 900
    text = text.replace('"ref"', f'"args": [{nested}], "ref"')
    path = tmp_path / "deep.safetensors"
    write_safetensors(path, {"bias": torch.zeros(1)}, {METADATA_KEY: text})
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "will not rebuild from a file" in result.stderr
    assert "Traceback" not in result.output


# -- what a record may cost -----------------------------------------------------------------


def test_a_record_that_builds_on_meta_but_not_for_real_falls_back(
    tmp_path: Path, runner: CliRunner
) -> None:
    # Linear(2^50, 1) is nothing on the meta device; for real its weight takes 4 PiB, which no
    # allocator grants (past the 128 TiB of a process's address space). The file holds only
    # the bias, so the names and shapes match.
    path = _recorded(
        tmp_path / "alloc.safetensors",
        "torch.nn:Linear",
        {"bias": torch.zeros(1)},
        kwargs={"in_features": 2**50, "out_features": 1},
    )
    result = runner.invoke(app, ["report", str(path), "--max-memory", "10000TiB"])
    assert result.exit_code == 0, result.output
    assert "building it failed" in result.stderr
    assert "bare state dict" in result.stderr


def test_a_record_over_the_memory_budget_is_not_built(tmp_path: Path) -> None:
    # 160 KB on disk (a sparse file), but the record asks for Linear(40000, 40000): 6.4 GB.
    record = Provenance(
        "0",
        model={"ref": "torch.nn:Linear", "kwargs": {"in_features": 40000, "out_features": 40000}},
    )
    path = tmp_path / "huge.safetensors"
    write_safetensors(
        path,
        {"weight": torch.zeros(1, 40000), "bias": torch.zeros(40000)},
        {METADATA_KEY: record.to_json()},
    )
    # Rewrite the header so weight is [40000, 40000], then extend the file sparsely.
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    w = 40000 * 40000 * 4
    header["weight"] = {"dtype": "F32", "shape": [40000, 40000], "data_offsets": [0, w]}
    header["bias"] = {"dtype": "F32", "shape": [40000], "data_offsets": [w, w + 160000]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little") + text)
        fh.truncate(8 + len(text) + w + 160000)
    assert path.stat().st_blocks * 512 < 2**20
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with open_target(str(path), TargetOptions(max_memory=2 * 2**30)) as (traced, ckpt):
            assert traced is None
            assert ckpt is not None
    assert any("over --max-memory" in str(w.message) for w in seen)


def _linear_40000(folder: Path) -> Path:
    """160 KB: the bias of Linear(40000, 40000), whose record asks for the whole 6.4 GB."""
    return _recorded(
        folder / "linear-40000.safetensors",
        "torch.nn:Linear",
        {"bias": torch.zeros(40000)},
        kwargs={"in_features": 40000, "out_features": 40000},
    )


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_small_file_cannot_make_report_allocate_what_its_record_asks(tmp_path: Path) -> None:
    path = _linear_40000(tmp_path)
    assert path.stat().st_size < 200_000
    # 3 GiB of address space above start-up: the 6.4 GB weight could not even be allocated.
    done = _cli(["report", str(path)], tmp_path, memory_headroom=3 * 2**30)
    assert done.returncode == 0, done.stderr
    assert "over --max-memory" in done.stderr
    assert "raise it" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_lazy_models_recorded_input_counts_against_the_budget(
    tmp_path: Path, runner: CliRunner
) -> None:
    # LazyLinear sizes its weight from the input's last dimension, so a record may ask for an
    # 8 TiB input ([2^40, 2]) to a model of three numbers. On meta that costs nothing.
    path = _recorded(
        tmp_path / "lazy.safetensors",
        "torch.nn:LazyLinear",
        {"bias": torch.zeros(1)},
        kwargs={"out_features": 1},
        input_shape=[2**40, 2],
    )
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "over --max-memory" in result.stderr
    assert "Traceback" not in result.output
    # The same model with the input shape initscope apply records for it is rebuilt.
    lazy = torch.nn.LazyLinear(3)
    lazy(torch.zeros(2, 5))
    path = _recorded(
        tmp_path / "lazy-ok.safetensors",
        "torch.nn:LazyLinear",
        dict(lazy.state_dict()),
        kwargs={"out_features": 3},
        input_shape=[2, 5],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_report(str(path)).has_model


@pytest.mark.slow
def test_a_record_asking_for_millions_of_layers_is_refused_quickly(tmp_path: Path) -> None:
    # nn.LSTM registers 4 parameters per layer, each in time linear in the layers so far:
    # a million layers on meta is days of work and gigabytes of Python objects.
    path = _recorded(
        tmp_path / "lstm.safetensors",
        "torch.nn:LSTM",
        {"weight_ih_l0": torch.zeros(4, 1)},
        kwargs={"input_size": 1, "hidden_size": 1, "num_layers": 10**6},
    )
    start = time.monotonic()
    done = _cli(["report", str(path)], tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "registers more than" in done.stderr
    assert "bare state dict" in done.stderr
    assert time.monotonic() - start < 30
    # An LSTM that matches its file is rebuilt.
    lstm = torch.nn.LSTM(4, 4, num_layers=3)
    path = _recorded(
        tmp_path / "lstm-ok.safetensors",
        "torch.nn:LSTM",
        dict(lstm.state_dict()),
        kwargs={"input_size": 4, "hidden_size": 4, "num_layers": 3},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_report(str(path)).has_model


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_record_asking_for_a_million_deep_copies_is_refused_quickly(tmp_path: Path) -> None:
    # nn.TransformerEncoder deep-copies its layer num_layers times (no registration hook sees
    # a deep copy): tensor operations are counted instead.
    path = _recorded(
        tmp_path / "transformer.safetensors",
        "torch.nn:Transformer",
        {"encoder.norm.weight": torch.zeros(4)},
        kwargs={
            "d_model": 4,
            "nhead": 1,
            "num_encoder_layers": 10**6,
            "num_decoder_layers": 1,
            "dim_feedforward": 4,
        },
    )
    done = _cli(["report", str(path)], tmp_path, timeout=60, memory_headroom=3 * 2**30)
    assert done.returncode == 0, done.stderr
    assert "tensor operations" in done.stderr
    assert "bare state dict" in done.stderr


def test_a_record_whose_build_runs_too_long_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import initscope.io.models as models

    # 5000 tensors in the file allow 24,096 registrations, so the LSTM's quadratic build
    # (minutes by then) is left to the time limit.
    monkeypatch.setattr(models, "RECORD_BUILD_SECONDS", 1.0)
    tensors = {f"t{i}": torch.zeros(1) for i in range(5000)}
    path = _recorded(
        tmp_path / "slow.safetensors",
        "torch.nn:LSTM",
        tensors,
        kwargs={"input_size": 1, "hidden_size": 1, "num_layers": 10**6},
    )
    start = time.monotonic()
    with pytest.warns(UserWarning, match="takes more than 1 s"):
        report = build_report(str(path))
    assert not report.has_model
    assert time.monotonic() - start < 20


def crafted_inputs(folder: Path) -> dict[str, Path]:
    cases: dict[str, Path] = {}
    for ref in ("unittest.__main__:main", "venv.__main__:main", "antigravity:geohash"):
        name = ref.split(":")[0].replace(".", "-")
        cases[f"record-{name}"] = _recorded(folder / f"{name}.safetensors", ref)
    (folder / "mpl_toolkits").mkdir()
    (folder / "mpl_toolkits" / "evil.py").write_text(
        f"open({str(folder / 'MARKER-records')!r}, 'w').write('ran')\n"
    )
    cases["record-namespace-package"] = _recorded(folder / "ns.safetensors", "mpl_toolkits.evil:M")
    cases["record-function"] = _recorded(folder / "function.safetensors", "torch:manual_seed")
    cases["record-linear-40000"] = _linear_40000(folder)
    cases["record-lstm-million-layers"] = _recorded(
        folder / "lstm.safetensors",
        "torch.nn:LSTM",
        {"weight_ih_l0": torch.zeros(4, 1)},
        kwargs={"input_size": 1, "hidden_size": 1, "num_layers": 10**6},
    )
    cases["record-transformer-million-copies"] = _recorded(
        folder / "transformer.safetensors",
        "torch.nn:Transformer",
        {"encoder.norm.weight": torch.zeros(4)},
        kwargs={"d_model": 4, "nhead": 1, "num_encoder_layers": 10**6, "dim_feedforward": 4},
    )
    cases["record-lazy-8tib-input"] = _recorded(
        folder / "lazy.safetensors",
        "torch.nn:LazyLinear",
        {"bias": torch.zeros(1)},
        kwargs={"out_features": 1},
        input_shape=[2**40, 2],
    )
    text = json.dumps({"format": PROVENANCE_FORMAT, "version": "0", "model": {"ref": "x:Y"}})
    text = text.replace('"ref"', '"args": [' + "[" * 900 + "]" * 900 + '], "ref"')
    write_safetensors(folder / "deep.safetensors", {"w": torch.zeros(2)}, {METADATA_KEY: text})
    cases["record-deep-arguments"] = folder / "deep.safetensors"
    return cases
