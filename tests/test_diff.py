"""initscope diff: a checkpoint against itself, before/after `apply` on a subset, hand-made
state dicts for every status, the numbers against torch, the JSON schema, and a model target
against its own checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file, save_model
from typer.testing import CliRunner, Result

from initscope.cli import app
from initscope.examples import TinyTransformer, UNet
from initscope.gate.diff import Status, diff_tensors

UNET = "initscope.examples:UNet"
STATUSES = ["unchanged", "changed", "added", "removed", "shape_changed", "dtype_changed"]
ENTRY_KEYS = {
    "name",
    "status",
    "shape_a",
    "shape_b",
    "dtype_a",
    "dtype_b",
    "rel_l2",
    "max_abs_diff",
    "cosine",
    "std_a",
    "std_b",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def diff(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(app, ["diff", "-q", *args])


def diff_json(runner: CliRunner, *args: str) -> dict[str, Any]:
    result = diff(runner, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in doc["parameters"]}


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["status"] for p in doc["parameters"]}


def unet_state() -> dict[str, torch.Tensor]:
    """The UNet as `initscope.examples:UNet` builds it (seed 0)."""
    torch.manual_seed(0)
    return {k: v.detach().clone().contiguous() for k, v in UNet().state_dict().items()}


@pytest.fixture
def unet_file(tmp_path: Path) -> Path:
    path = tmp_path / "unet.safetensors"
    save_file(unet_state(), str(path))
    return path


# -- a checkpoint with itself ---------------------------------------------------------------


@pytest.mark.parametrize("ext", ["safetensors", "pt"])
def test_checkpoint_with_itself_is_all_unchanged(
    runner: CliRunner, tmp_path: Path, ext: str
) -> None:
    sd = unet_state()
    path = tmp_path / f"unet.{ext}"
    if ext == "pt":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    doc = diff_json(runner, str(path), str(path))
    assert doc["schema"] == "initscope.diff/1"
    assert len(doc["parameters"]) == len(sd) == 56  # 48 float tensors + 8 num_batches_tracked
    assert set(statuses(doc).values()) == {"unchanged"}
    assert doc["summary"] == {s: (len(sd) if s == "unchanged" else 0) for s in STATUSES}
    assert doc["largest_changes"] == []
    for p in doc["parameters"]:
        assert p["rel_l2"] == 0.0 and p["max_abs_diff"] == 0.0, p
        assert p["std_a"] == p["std_b"]
    stem = by_name(doc)["stem.weight"]
    assert stem["cosine"] == pytest.approx(1.0, abs=1e-12)
    # an all-zero tensor has no direction: no cosine
    assert by_name(doc)["down1.1.running_mean"]["cosine"] is None
    table = diff(runner, str(path), str(path))
    assert table.exit_code == 0
    assert table.stdout.splitlines()[-1] == "56 parameters: 56 unchanged"


# -- after apply on a subset -----------------------------------------------------------------

SUBSET_RULES = 'rules:\n  - name: "down1.*"\n    init: normal\n    std: 0.01\n'
DOWN1 = {
    "down1.0.weight",
    "down1.1.weight",
    "down1.1.bias",
    "down1.3.weight",
    "down1.4.weight",
    "down1.4.bias",
}


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("subset")
    rules = tmp / "down1.yaml"
    rules.write_text(SUBSET_RULES)
    out = tmp / "out.safetensors"
    result = CliRunner().invoke(app, ["apply", "--rules", str(rules), UNET, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("before", ["checkpoint", "model"])
def test_apply_on_a_subset_changes_exactly_that_subset(
    runner: CliRunner, unet_file: Path, applied: Path, before: str
) -> None:
    a = str(unet_file) if before == "checkpoint" else UNET
    doc = diff_json(runner, a, str(applied))
    st = statuses(doc)
    assert {n for n, s in st.items() if s == "changed"} == DOWN1
    assert {n for n, s in st.items() if s != "changed"} == set(unet_state()) - DOWN1
    assert set(st.values()) == {"changed", "unchanged"}  # buffers are not touched
    assert doc["summary"]["changed"] == 6 and doc["summary"]["unchanged"] == 50
    # largest relative change first: the BatchNorm biases were all zeros (an infinite
    # relative change, written as null), then the rest by rel_l2
    assert set(doc["largest_changes"]) == DOWN1
    order = doc["largest_changes"]
    assert set(order[:2]) == {"down1.1.bias", "down1.4.bias"}
    assert all(by_name(doc)[n]["rel_l2"] is None for n in order[:2])
    rels = [by_name(doc)[n]["rel_l2"] for n in order[2:]]
    assert rels == sorted(rels, reverse=True)
    w = by_name(doc)["down1.0.weight"]
    assert w["std_b"] == pytest.approx(0.01, rel=0.05)


def test_table_lists_changed_rows_first(runner: CliRunner, unet_file: Path, applied: Path) -> None:
    result = diff(runner, str(unet_file), str(applied))
    assert result.exit_code == 0  # a difference is a result, not an error
    out = result.stdout.splitlines()
    assert out[0] == f"{unet_file}  →  {applied}"
    assert out[2].split() == [
        "parameter",
        "status",
        "rel",
        "L2",
        "max",
        "|Δ|",
        "cosine",
        "std",
        "A",
        "std",
        "B",
    ]
    rows = [s.split() for s in out[4:-2]]
    assert {r[0] for r in rows[:6]} == DOWN1 and all(r[1] == "changed" for r in rows[:6])
    assert all(r[1] == "unchanged" for r in rows[6:])
    assert out[-1] == "56 parameters: 50 unchanged, 6 changed"


def test_output_file(runner: CliRunner, tmp_path: Path, unet_file: Path) -> None:
    out = tmp_path / "d.json"
    result = diff(runner, str(unet_file), str(unet_file), "-f", "json", "-o", str(out))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert json.loads(out.read_text())["summary"]["unchanged"] == 56


# -- every status, from hand-made state dicts --------------------------------------------------


def test_added_removed_shape_and_dtype_changes(runner: CliRunner, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=g)
    a = {
        "same": w,
        "gone": torch.randn(2, generator=g),
        "reshaped": torch.randn(3, 4, generator=g),
        "cast": torch.randn(5, generator=g),
        "steps": torch.arange(6),
    }
    b = {
        "same": w.clone(),
        "reshaped": torch.randn(4, 3, generator=g),
        "cast": a["cast"].double(),
        "steps": torch.arange(6) + 1,
        "new": torch.randn(7, generator=g, dtype=torch.float64),
    }
    pa, pb = tmp_path / "a.pt", tmp_path / "b.safetensors"
    torch.save(a, pa)
    save_file(b, str(pb))
    doc = diff_json(runner, str(pa), str(pb))
    # A's order, then what only B has
    assert [p["name"] for p in doc["parameters"]] == [
        "same",
        "gone",
        "reshaped",
        "cast",
        "steps",
        "new",
    ]
    p = by_name(doc)
    assert statuses(doc) == {
        "same": "unchanged",
        "gone": "removed",
        "reshaped": "shape_changed",
        "cast": "dtype_changed",
        "steps": "changed",
        "new": "added",
    }
    assert doc["summary"] == {
        "unchanged": 1,
        "changed": 1,
        "added": 1,
        "removed": 1,
        "shape_changed": 1,
        "dtype_changed": 1,
    }
    assert p["gone"]["shape_a"] == [2] and p["gone"]["shape_b"] is None
    assert p["gone"]["dtype_a"] == "float32" and p["gone"]["dtype_b"] is None
    assert p["new"]["shape_a"] is None and p["new"]["shape_b"] == [7]
    assert p["new"]["dtype_b"] == "float64"
    assert p["reshaped"]["shape_a"] == [3, 4] and p["reshaped"]["shape_b"] == [4, 3]
    for name in ("gone", "new", "reshaped"):
        assert all(p[name][k] is None for k in ("rel_l2", "max_abs_diff", "cosine")), name
    # float32 → float64 is exact: same values, other dtype
    assert p["cast"]["dtype_a"] == "float32" and p["cast"]["dtype_b"] == "float64"
    assert p["cast"]["rel_l2"] == 0.0 and p["cast"]["max_abs_diff"] == 0.0
    # integer buffers are compared too: 0..5 → 1..6
    steps = p["steps"]
    assert steps["max_abs_diff"] == 1.0
    assert steps["rel_l2"] == pytest.approx(math.sqrt(6) / math.sqrt(55))
    assert doc["largest_changes"] == ["steps"]
    table = diff(runner, str(pa), str(pb))
    assert table.stdout.splitlines()[-1] == (
        "6 parameters: 1 unchanged, 1 changed, 1 added, 1 removed, 1 shape_changed, 1 dtype_changed"
    )


# -- the numbers, against torch ---------------------------------------------------------------


def _torch_numbers(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    x, y = a.double().flatten(), b.double().flatten()
    return {
        "rel_l2": float((y - x).norm() / x.norm()),
        "max_abs_diff": float((y - x).abs().max()),
        "cosine": float(torch.nn.functional.cosine_similarity(x, y, dim=0)),
        "std_a": float(x.std()),
        "std_b": float(y.std()),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_numbers_match_torch(runner: CliRunner, tmp_path: Path, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    a = {
        "w": (torch.randn(16, 8, generator=g) * 0.1).to(dtype),
        "v": torch.randn(33, generator=g).to(dtype),
    }
    b = {
        "w": (a["w"].double() * 1.5 + 0.01).to(dtype),
        "v": (-a["v"].double() + torch.randn(33, generator=g, dtype=torch.float64) * 0.1).to(dtype),
    }
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(a, str(pa))
    save_file(b, str(pb))
    doc = diff_json(runner, str(pa), str(pb))
    for name, entry in by_name(doc).items():
        assert entry["status"] == "changed"
        want = _torch_numbers(a[name], b[name])
        for key, value in want.items():
            assert entry[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
    assert by_name(doc)["v"]["cosine"] < 0  # flipped sign


def test_numbers_on_a_large_tensor_stream_in_chunks() -> None:
    # more than one chunk: the running sums must agree with torch on the whole tensor
    g = torch.Generator().manual_seed(4)
    a = torch.randn(1_100_000, generator=g)
    b = a + torch.randn(1_100_000, generator=g) * 1e-3
    b[123_456] = 5.0
    e = diff_tensors("big", a, b)
    want = _torch_numbers(a, b)
    assert e.status is Status.CHANGED
    assert e.max_abs_diff == pytest.approx(want["max_abs_diff"], rel=1e-12)
    for key in ("rel_l2", "cosine", "std_a", "std_b"):
        assert getattr(e, key) == pytest.approx(want[key], rel=1e-9), key


def test_zero_before_has_no_relative_change(runner: CliRunner, tmp_path: Path) -> None:
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"bias": torch.zeros(4), "one": torch.ones(1)}, pa)
    torch.save({"bias": torch.full((4,), 0.5), "one": torch.full((1,), 3.0)}, pb)
    p = by_name(diff_json(runner, str(pa), str(pb)))
    assert p["bias"]["status"] == "changed"
    assert p["bias"]["rel_l2"] is None  # ‖b − a‖ / 0: infinite, written as null
    assert p["bias"]["max_abs_diff"] == 0.5
    assert p["bias"]["cosine"] is None
    # one value: no std, but the change itself is measured
    assert p["one"]["std_a"] is None and p["one"]["std_b"] is None
    assert p["one"]["rel_l2"] == 2.0 and p["one"]["cosine"] == 1.0


def test_bit_identical_nan_is_unchanged() -> None:
    a = torch.tensor([1.0, float("nan"), 2.0])
    assert diff_tensors("x", a, a.clone()).status is Status.UNCHANGED
    b = a.clone()
    b[0] = 1.5
    assert diff_tensors("x", a, b).status is Status.CHANGED


def test_max_abs_diff_is_not_hidden_by_nan() -> None:
    e = diff_tensors("x", torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, float("nan"), 30.0]))
    assert e.max_abs_diff is not None and (math.isnan(e.max_abs_diff) or e.max_abs_diff >= 27)


def test_unchanged_nan_tensor_has_no_infinite_change() -> None:
    a = torch.tensor([1.0, float("nan"), 2.0])
    e = diff_tensors("x", a, a.clone())
    assert e.rel_l2 is None or not math.isinf(e.rel_l2)


# -- a model target against its checkpoint -----------------------------------------------------


def test_model_target_against_its_checkpoint(runner: CliRunner, unet_file: Path) -> None:
    doc = diff_json(runner, UNET, str(unet_file))
    assert doc["a"] == UNET and doc["b"] == str(unet_file)
    assert set(statuses(doc).values()) == {"unchanged"} and len(doc["parameters"]) == 56
    # another seed draws other random weights; BatchNorm's constants and buffers stay
    other = diff_json(runner, UNET, str(unet_file), "--seed", "1")
    changed = {n for n, s in statuses(other).items() if s == "changed"}
    random = {
        n
        for n, m in UNet().named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
        for n in (f"{n}.weight", f"{n}.bias")
        if n in unet_state()
    }
    assert changed == random and len(random) == 16


def test_model_target_with_tied_weights_against_pt(runner: CliRunner, tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "tt.pt"
    torch.save(TinyTransformer().state_dict(), path)
    doc = diff_json(runner, "initscope.examples:TinyTransformer", str(path))
    assert set(statuses(doc).values()) == {"unchanged"}
    assert "lm_head.weight" in statuses(doc) and len(doc["parameters"]) == 28


def test_model_target_with_tied_weights_against_save_model(
    runner: CliRunner, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    path = tmp_path / "tt.safetensors"
    save_model(TinyTransformer(), str(path))
    doc = diff_json(runner, "initscope.examples:TinyTransformer", str(path))
    assert set(statuses(doc).values()) == {"unchanged"}, doc["summary"]


def test_json_schema_shape(runner: CliRunner, unet_file: Path, applied: Path) -> None:
    doc = diff_json(runner, str(unet_file), str(applied))
    assert set(doc) == {"schema", "a", "b", "parameters", "summary", "largest_changes"}
    assert doc["schema"] == "initscope.diff/1"
    assert list(doc["summary"]) == STATUSES
    assert sum(doc["summary"].values()) == len(doc["parameters"])
    for p in doc["parameters"]:
        assert set(p) == ENTRY_KEYS
        assert p["status"] in STATUSES
        for key in ("rel_l2", "max_abs_diff", "cosine", "std_a", "std_b"):
            assert p[key] is None or (isinstance(p[key], float) and math.isfinite(p[key]))
    assert by_name(doc)["down1.1.num_batches_tracked"]["dtype_a"] == "int64"
