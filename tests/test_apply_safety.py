"""``initscope apply`` is deterministic and safe with the user's files.

1. The same rules and seed give byte-identical outputs; another seed gives other weights; a
   rule for one layer changes nothing else (each parameter draws from its own generator).
2. Low-precision parameters keep their dtype and get the float32 draw rounded; buffers and
   parameters no rule matches are bit-identical afterwards.
3. A tied tensor (TinyTransformer's lm_head.weight is embed.weight) is initialized once; rules
   that disagree on it are reported, and the tie survives.
4. A failing run leaves the input checkpoint and any existing output alone; refusals are one
   line and exit 2; --force and --in-place replace files atomically; --dry-run writes nothing.
5. A run killed with SIGKILL while writing leaves no file at the output path.

Every file and output is also checked for what the library promises in docstrings: the
float32 draw rounded for low precision (init: default included), outputs with the mode a new
file gets (or the replaced file had), .pt outputs byte-reproducible, the global RNG untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from initscope.cli import main
from initscope.errors import EXIT_OK, EXIT_USAGE
from initscope.examples import TinyTransformer, UNet
from initscope.rules.apply import apply_rules
from initscope.rules.language import presets_dir
from initscope.rules.plan import Action

ROOT = Path(__file__).resolve().parent.parent
UNET = ["initscope.examples:UNet", "--arg", "width=4"]

# -- helpers -----------------------------------------------------------------------------------


def run_cli(*argv: str | Path) -> tuple[int, str, str]:
    """``initscope ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return (0 if code is None else int(code)), out.getvalue(), err.getvalue()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry of ``folder`` with its inode and mtime: what a failing run must not touch."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("initscope: error: ")]


def assert_refused(code: int, out: str, err: str, *needles: str) -> None:
    """Exit 2 and exactly one ``initscope: error:`` line naming the problem."""
    assert code == EXIT_USAGE, (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_rules(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def xavier_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((presets_dir() / "xavier.yaml").read_text())
    return doc


@pytest.fixture
def unet_ckpt(tmp_path: Path) -> Path:
    """A UNet(width=4) checkpoint written by safetensors itself, readable by everyone."""
    torch.manual_seed(0)
    path = tmp_path / "ckpt" / "unet.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in UNet(width=4).state_dict().items()}, str(path))
    path.chmod(0o644)
    return path


def ckpt_args(ckpt: Path) -> list[str | Path]:
    return [ckpt, "--model", "initscope.examples:UNet", "--arg", "width=4"]


# -- 1. determinism ------------------------------------------------------------------------------


def test_same_rules_and_seed_give_identical_safetensors(tmp_path: Path) -> None:
    for name in ("a", "b"):
        code, _, err = run_cli(
            "apply", "--rules", "xavier", *UNET, "-o", tmp_path / f"{name}.safetensors"
        )
        assert code == EXIT_OK, err
    a, b = (tmp_path / "a.safetensors").read_bytes(), (tmp_path / "b.safetensors").read_bytes()
    assert a == b
    tensors = load_file(str(tmp_path / "a.safetensors"))
    assert set(tensors) == set(UNet(width=4).state_dict())


def test_same_rules_and_seed_give_identical_pt_values(tmp_path: Path) -> None:
    for name in ("a", "b"):
        code, _, err = run_cli("apply", "--rules", "xavier", *UNET, "-o", tmp_path / f"{name}.pt")
        assert code == EXIT_OK, err
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]), k
        else:
            assert v == b[k], k  # the provenance record


def test_same_rules_and_seed_give_identical_pt_bytes(tmp_path: Path) -> None:
    # Under other names and in other folders too: nothing about the path may leak into the
    # bytes (torch.save given a path names the zip archive's root folder after it).
    outputs = [tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "sub" / "a.pth"]
    outputs[2].parent.mkdir()
    for out in outputs:
        code, _, err = run_cli("apply", "--rules", "xavier", *UNET, "-o", out)
        assert code == EXIT_OK, err
    first = outputs[0].read_bytes()
    for out in outputs[1:]:
        assert out.read_bytes() == first, out


def test_another_seed_gives_other_weights(tmp_path: Path) -> None:
    for seed in ("0", "1"):
        out = tmp_path / f"seed{seed}.safetensors"
        code, _, err = run_cli("apply", "--rules", "xavier", *UNET, "-o", out, "--seed", seed)
        assert code == EXIT_OK, err
    a, b = (load_file(str(tmp_path / f"seed{s}.safetensors")) for s in ("0", "1"))
    drawn = [k for k in a if k.endswith("weight") and a[k].ndim == 4]  # conv weights: xavier
    assert len(drawn) >= 10
    for k in drawn:
        assert not torch.equal(a[k], b[k]), k
    # BatchNorm's default weight is all ones whatever the seed; buffers are never drawn.
    for k in a:
        if "running" in k or "num_batches" in k or (k.endswith("1.weight") and a[k].ndim == 1):
            assert torch.equal(a[k], b[k]), k


def test_a_rule_for_one_layer_changes_nothing_else(tmp_path: Path) -> None:
    plain = write_rules(tmp_path / "plain.yaml", xavier_doc())
    doc = xavier_doc()
    doc["rules"].insert(0, {"name": "head", "init": "zeros"})
    with_head = write_rules(tmp_path / "head.yaml", doc)
    for rules, out in ((plain, "plain.safetensors"), (with_head, "head.safetensors")):
        code, _, err = run_cli("apply", "--rules", rules, *UNET, "-o", tmp_path / out)
        assert code == EXIT_OK, err
    a = load_file(str(tmp_path / "plain.safetensors"))
    b = load_file(str(tmp_path / "head.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("head."):
            assert not torch.equal(a[k], b[k]) or not a[k].any(), k
            assert not b[k].any(), k
        else:
            assert torch.equal(a[k], b[k]), f"{k} changed when a rule for head was added"


def test_python_api_matches_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli.safetensors"
    code, _, err = run_cli("apply", "--rules", "xavier", *UNET, "-o", out)
    assert code == EXIT_OK, err
    model = UNet(width=4)
    apply_rules(model, "xavier", seed=0)
    saved = load_file(str(out))
    for k, v in model.state_dict().items():
        if k.endswith(("weight", "bias")):  # buffers come from whatever the model was built with
            assert torch.equal(v, saved[k]), k


# -- 2. dtypes, buffers, unmatched parameters ------------------------------------------------

DTYPE_RULES: dict[str, list[dict[str, Any]]] = {
    "xavier+normal": [
        {"param": "weight", "init": "xavier_uniform"},
        {"param": "bias", "init": "normal", "std": 0.5},
    ],
    "kaiming+uniform": [
        {"param": "weight", "init": "kaiming_normal", "nonlinearity": "relu"},
        {"param": "bias", "init": "uniform", "a": -0.3, "b": 0.3},
    ],
    "trunc_normal": [{"init": "trunc_normal", "std": 0.02}],
    "orthogonal+const": [
        {"param": "weight", "init": "orthogonal", "gain": "relu"},
        {"param": "bias", "init": "constant", "val": 0.1},
    ],
    "eye+expr": [
        {"param": "weight", "init": "eye"},
        {"param": "bias", "init": "normal", "std": "0.02 / sqrt(numel)"},
    ],
    "xavier_normal+expr": [
        {"param": "weight", "init": "xavier_normal", "gain": "leaky_relu:0.2"},
        {"param": "bias", "init": "uniform", "a": "-1 / sqrt(numel)", "b": "1 / sqrt(numel)"},
    ],
    "sparse+expr": [
        {"param": "weight", "init": "sparse", "sparsity": 0.25, "std": "1 / sqrt(fan_in)"},
        {"param": "bias", "init": "normal", "std": "0.02 / sqrt(numel)"},
    ],
    "default": [{"init": "default"}],
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", sorted(DTYPE_RULES))
def test_low_precision_keeps_dtype_and_gets_the_float32_draw(dtype: torch.dtype, case: str) -> None:
    rules = {"rules": DTYPE_RULES[case]}
    torch.manual_seed(0)
    reference = torch.nn.Linear(64, 64)
    low = torch.nn.Linear(64, 64).to(dtype)
    apply_rules(reference, rules, seed=3)
    plan = apply_rules(low, rules, seed=3)
    assert len(plan.changed) == 2
    for name in ("weight", "bias"):
        got, want = getattr(low, name), getattr(reference, name)
        assert got.dtype == dtype, name
        assert torch.equal(got, want.to(dtype)), f"{name}: not the float32 draw rounded"


def _bn_model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    bn = model[1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    assert bn.running_mean is not None and bn.running_var is not None
    assert bn.num_batches_tracked is not None
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(7)
        bn.weight.normal_()
        bn.bias.normal_()
    return model


SPARSE = {"param": "weight", "init": "sparse", "sparsity": 0.5}


def test_sparse_ignores_the_global_rng() -> None:
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(0)
        model = torch.nn.Linear(16, 16)
        torch.manual_seed(global_seed)
        apply_rules(model, {"rules": [SPARSE]}, seed=0)
        weights.append(model.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_a_sparse_rule_for_one_layer_leaves_another_alone() -> None:
    weights = []
    for rules in ([{"name": "1", **SPARSE}], [{"name": "0", **SPARSE}, {"name": "1", **SPARSE}]):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))
        torch.manual_seed(5)
        apply_rules(model, {"rules": rules}, seed=0)
        second = model[1]
        assert isinstance(second, torch.nn.Linear)
        weights.append(second.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


@pytest.mark.parametrize("case", ["default", "xavier", "sparse"])
def test_apply_leaves_the_global_rng_alone(case: str) -> None:
    """Every init draws from its own generator; reset_parameters() runs under fork_rng."""
    rules = {
        "default": {"rules": [{"type": "BatchNorm2d", "init": "default"}, {"init": "default"}]},
        "xavier": xavier_doc(),
        "sparse": {"rules": [{"type": "Linear", **SPARSE}, {"init": "zeros"}]},
    }[case]
    model = _bn_model()
    torch.manual_seed(9)
    plan = apply_rules(model, rules, seed=0)
    assert plan.changed
    after = torch.rand(3)
    torch.manual_seed(9)
    assert torch.equal(after, torch.rand(3))


def test_buffers_and_unmatched_parameters_stay_bit_identical() -> None:
    model = _bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rules = {
        "rules": [
            {"type": "Conv2d", "param": "weight", "init": "xavier_uniform"},
            {"type": "BatchNorm2d", "init": "default"},  # reset_parameters() also resets stats
        ]
    }
    plan = apply_rules(model, rules, seed=0)
    after = model.state_dict()
    assert {e.site.name for e in plan.changed} == {"0.weight", "1.weight", "1.bias"}
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(after[k], before[k]), f"buffer {k} changed"
    for k in ("0.bias", "3.weight", "3.bias"):  # no rule matches them
        assert torch.equal(after[k], before[k]), f"unmatched {k} changed"
    assert not torch.equal(after["0.weight"], before["0.weight"])
    assert torch.equal(after["1.weight"], torch.ones(4))  # BatchNorm's default
    assert torch.equal(after["1.bias"], torch.zeros(4))


def test_dry_run_changes_nothing() -> None:
    model = _bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = apply_rules(model, {"rules": [{"init": "default"}]}, seed=0, dry_run=True)
    assert plan.changed
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_parameters_get_the_cpu_values() -> None:
    rules = {"rules": DTYPE_RULES["xavier+normal"]}
    torch.manual_seed(0)
    cpu = torch.nn.Linear(64, 64)
    gpu = torch.nn.Linear(64, 64).to("cuda", torch.bfloat16)
    apply_rules(cpu, rules, seed=5)
    apply_rules(gpu, rules, seed=5)
    assert gpu.weight.device.type == "cuda" and gpu.weight.dtype == torch.bfloat16
    assert torch.equal(gpu.weight.cpu(), cpu.weight.to(torch.bfloat16))
    assert torch.equal(gpu.bias.cpu(), cpu.bias.to(torch.bfloat16))


# -- 3. tied parameters ------------------------------------------------------------------------

TIE_DISAGREE = {
    "rules": [
        {"name": "lm_head", "init": "zeros"},
        {"type": "Embedding", "init": "normal", "std": 0.02},
    ]
}


def test_a_tied_tensor_is_initialized_once_and_stays_tied() -> None:
    torch.manual_seed(0)
    model = TinyTransformer()
    assert model.lm_head.weight is model.embed.weight
    plan = apply_rules(model, TIE_DISAGREE, seed=0)
    assert model.lm_head.weight is model.embed.weight, "the tie was broken"
    by_name = {e.site.name: e for e in plan.entries}
    assert by_name["embed.weight"].action is Action.INIT
    assert by_name["lm_head.weight"].action is Action.TIED
    assert by_name["lm_head.weight"].site.tied_to == "embed.weight"
    assert sum(1 for e in plan.changed if e.site.name in by_name and "embed" in e.site.name) == 1
    assert "lm_head.weight" not in {e.site.name for e in plan.changed}
    # The tensor got the embedding rule's draw, once, not the zeros of rules[0].
    torch.manual_seed(0)
    alone = TinyTransformer()
    apply_rules(alone, {"rules": [TIE_DISAGREE["rules"][1]]}, seed=0)
    assert model.embed.weight.any()
    assert torch.equal(model.embed.weight, alone.embed.weight)


def test_rules_that_disagree_on_a_tie_are_reported() -> None:
    plan = apply_rules(TinyTransformer(), TIE_DISAGREE, seed=0, dry_run=True)
    warnings = plan.warnings()
    tie = [w for w in warnings if "tied" in w]
    assert len(tie) == 1, warnings
    assert "lm_head.weight" in tie[0] and "embed.weight" in tie[0], tie[0]
    assert "rules[0]" in tie[0] and "rules[1]" in tie[0], tie[0]
    assert tie[0].splitlines() == [tie[0]]
    assert len(plan.conflicts) == 1


@pytest.mark.parametrize(
    "rules",
    [
        [{"name": "re:embed|lm_head", "init": "normal", "std": 0.02}],
        [
            {"name": "lm_head", "init": "normal", "std": 0.02},
            {"type": "Embedding", "init": "normal", "std": 0.02},
        ],
    ],
    ids=["one-rule", "two-equal-rules"],
)
def test_rules_that_agree_on_a_tie_are_not_reported(rules: list[dict[str, Any]]) -> None:
    plan = apply_rules(TinyTransformer(), {"rules": rules}, seed=0, dry_run=True)
    assert not plan.conflicts
    assert not [w for w in plan.warnings() if "tied" in w]


def test_a_tie_that_only_one_name_matches_is_reported() -> None:
    """lm_head (a Linear) matches no rule, so unmatched: keep would keep it, while the
    Embedding rule redraws the shared tensor: worth a warning."""
    rules = {"rules": [{"type": "Embedding", "init": "normal", "std": 0.02}]}
    plan = apply_rules(TinyTransformer(), rules, seed=0, dry_run=True)
    assert [w for w in plan.warnings() if "tied" in w and "lm_head.weight" in w]


def test_cli_reports_the_tie_and_saves_both_names(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "tie.yaml", TIE_DISAGREE)
    out = tmp_path / "tt.safetensors"
    code, _, err = run_cli(
        "apply", "--rules", rules, "initscope.examples:TinyTransformer", "-o", out
    )
    assert code == EXIT_OK, err
    assert any(
        line.startswith("initscope: warning: ") and "tied" in line for line in err.splitlines()
    )
    saved = load_file(str(out))
    assert torch.equal(saved["lm_head.weight"], saved["embed.weight"])
    assert saved["embed.weight"].any()
    model = TinyTransformer()
    model.load_state_dict(saved, strict=True)  # both names present, one tensor after loading
    assert model.lm_head.weight is model.embed.weight


# -- 4. the user's files -----------------------------------------------------------------------


def _bad_rules(tmp_path: Path) -> Path:
    return write_rules(
        tmp_path / "bad.yaml", {"rules": [{"param": "weight", "init": "xavier_uniformm"}]}
    )


def _strict_failure(tmp_path: Path) -> Path:
    return write_rules(
        tmp_path / "strict.yaml",
        {"rules": [{"name": "no_such_layer", "init": "zeros"}, {"init": "keep"}]},
    )


@pytest.mark.parametrize("failure", ["bad-rules", "strict", "plan-error", "exists", "is-input"])
def test_a_failing_run_leaves_every_file_alone(
    tmp_path: Path, unet_ckpt: Path, failure: str
) -> None:
    folder = unet_ckpt.parent
    existing = folder / "out.safetensors"
    existing.write_bytes(b"an earlier output")
    before = listing(folder)
    input_hash = sha256(unet_ckpt)
    rules: Path | str = "xavier"
    extra: list[str] = []
    out: Path = folder / "new.safetensors"
    needles: tuple[str, ...] = ()
    if failure == "bad-rules":
        rules = _bad_rules(tmp_path)
        needles = ("xavier_uniformm", "did you mean")
    elif failure == "strict":
        rules, extra = _strict_failure(tmp_path), ["--strict"]
        needles = ("no parameter", "--strict")
    elif failure == "plan-error":  # xavier cannot initialize a 1-D bias
        rules = write_rules(tmp_path / "plan.yaml", {"rules": [{"init": "xavier_uniform"}]})
        needles = ("xavier_uniform", "bias")
    elif failure == "exists":
        out, needles = existing, ("already exists", "--force")
    else:
        out, needles = unet_ckpt, ("is the input checkpoint", "--in-place")
    code, stdout, err = run_cli("apply", "--rules", rules, *ckpt_args(unet_ckpt), "-o", out, *extra)
    assert_refused(code, stdout, err, *needles)
    assert sha256(unet_ckpt) == input_hash, "the input checkpoint changed"
    assert existing.read_bytes() == b"an earlier output"
    assert listing(folder) == before, "files were created, replaced or touched"


def test_the_input_is_recognized_under_another_spelling(unet_ckpt: Path) -> None:
    folder = unet_ckpt.parent
    input_hash = sha256(unet_ckpt)
    for other in (folder / ".." / folder.name / unet_ckpt.name, folder / "link.safetensors"):
        if other.name == "link.safetensors":
            other.symlink_to(unet_ckpt.name)
        code, out, err = run_cli("apply", "--rules", "xavier", *ckpt_args(unet_ckpt), "-o", other)
        assert_refused(code, out, err, "is the input checkpoint")
        assert sha256(unet_ckpt) == input_hash
    assert (folder / "link.safetensors").is_symlink()


def _valid_unet_file(path: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(path))
    UNet(width=4).load_state_dict(tensors, strict=True)
    with safe_open(str(path), "pt") as fh:
        assert "initscope" in (fh.metadata() or {})  # the provenance record
    return tensors


def test_force_replaces_an_existing_output(unet_ckpt: Path) -> None:
    out = unet_ckpt.parent / "out.safetensors"
    out.write_bytes(b"an earlier output")
    input_hash = sha256(unet_ckpt)
    code, _, err = run_cli(
        "apply", "--rules", "xavier", *ckpt_args(unet_ckpt), "-o", out, "--force"
    )
    assert code == EXIT_OK, err
    _valid_unet_file(out)
    assert sha256(unet_ckpt) == input_hash
    assert temp_files(out.parent) == []


def test_in_place_rewrites_the_input_atomically(unet_ckpt: Path) -> None:
    folder = unet_ckpt.parent
    old = load_file(str(unet_ckpt))
    inode = unet_ckpt.stat().st_ino
    code, _, err = run_cli("apply", "--rules", "xavier", *ckpt_args(unet_ckpt), "--in-place")
    assert code == EXIT_OK, err
    new = _valid_unet_file(unet_ckpt)
    assert unet_ckpt.stat().st_ino != inode, "written in place, not renamed over the input"
    assert sorted(p.name for p in folder.iterdir()) == [unet_ckpt.name], "leftovers"
    assert not torch.equal(old["head.weight"], new["head.weight"])
    assert torch.equal(old["down1.1.running_mean"], new["down1.1.running_mean"])  # buffers kept
    # -o naming the input itself, with --in-place, is the same thing.
    code, _, err = run_cli(
        "apply", "--rules", "xavier", *ckpt_args(unet_ckpt), "-o", unet_ckpt, "--in-place"
    )
    assert code == EXIT_OK, err
    _valid_unet_file(unet_ckpt)


def test_in_place_keeps_the_inputs_permissions(unet_ckpt: Path) -> None:
    unet_ckpt.chmod(0o644)
    code, _, err = run_cli("apply", "--rules", "xavier", *ckpt_args(unet_ckpt), "--in-place")
    assert code == EXIT_OK, err
    assert stat.S_IMODE(unet_ckpt.stat().st_mode) == 0o644


def test_a_new_output_gets_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    out = tmp_path / "out.safetensors"
    code, _, err = run_cli("apply", "--rules", "xavier", *UNET, "-o", out)
    assert code == EXIT_OK, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_dry_run_writes_nothing(unet_ckpt: Path) -> None:
    folder = unet_ckpt.parent
    before, input_hash = listing(folder), sha256(unet_ckpt)
    for extra in (["-o", folder / "out.safetensors"], ["--in-place"], []):
        code, out, err = run_cli(
            "apply", "--rules", "xavier", *ckpt_args(unet_ckpt), "--dry-run", *extra
        )
        assert code == EXIT_OK, err
        assert "32 parameters" in out
    assert listing(folder) == before
    assert sha256(unet_ckpt) == input_hash


def _refuses_unwritable(folder: Path, unet_ckpt: Path | None) -> None:
    out = folder / "out.safetensors"
    target = ckpt_args(unet_ckpt) if unet_ckpt is not None else UNET
    input_hash = sha256(unet_ckpt) if unet_ckpt is not None else None
    code, stdout, err = run_cli("apply", "--rules", "xavier", *target, "-o", out)
    assert_refused(code, stdout, err, "cannot write", str(out))
    assert len(err.splitlines()) == len(error_lines(err)) == 1, err
    assert not out.exists()
    if unet_ckpt is not None:
        assert sha256(unet_ckpt) == input_hash


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders"
)
def test_an_unwritable_output_folder_is_one_line_and_exit_2(
    tmp_path: Path, unet_ckpt: Path
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _refuses_unwritable(locked, unet_ckpt)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_output_folder_nobody_can_write_is_one_line_and_exit_2() -> None:
    """The same refusal where even root cannot create files: procfs."""
    _refuses_unwritable(Path("/proc"), None)


# -- 5. killed while writing -------------------------------------------------------------------

BIG_TENSORS = 4
BIG_SHAPE = (4096, 8192)  # 128 MiB of float32 each: 512 MiB in all


def _big_checkpoint(path: Path, count: int) -> None:
    # Values do not matter, only the size: torch.empty is free, the write is the cost.
    save_file({f"layer{i}.weight": torch.empty(BIG_SHAPE) for i in range(count)}, str(path))


@contextlib.contextmanager
def _process(argv: list[str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for half-gigabyte files, emptied afterwards (pytest keeps old tmp_paths)."""
    folder = tmp_path_factory.mktemp("big")
    yield folder
    for p in folder.iterdir():
        p.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_run_killed_while_writing_leaves_no_output(big_dir: Path, sig: signal.Signals) -> None:
    """``initscope apply`` on a 512 MiB state dict, killed as soon as its temporary file
    appears: nothing at the output path, the input unchanged. SIGKILL leaves the temporary
    file (nothing can clean up after it); SIGINT removes it and exits 130."""
    rules = write_rules(
        big_dir / "bare.yaml", {"rules": [{"param": "weight", "init": "uniform", "a": -0.1}]}
    )
    src = big_dir / "big.safetensors"
    out = big_dir / f"out-{sig.name}.safetensors"
    argv = [sys.executable, "-m", "initscope", "apply", "--rules", str(rules), str(src)]
    argv += ["-o", str(out)]
    for count in (BIG_TENSORS, 2 * BIG_TENSORS):  # a second try with a file twice as large
        if not src.exists() or src.stat().st_size < count * 128 << 20:
            _big_checkpoint(src, count)
        input_hash = sha256(src)
        before = {p.name for p in big_dir.iterdir()}
        seen: list[str] = []
        with _process(argv, big_dir) as proc:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                seen = [n for n in temp_files(big_dir) if n.startswith(f".{out.name}.")]
                if seen:
                    os.kill(proc.pid, sig)
                    break
                time.sleep(0.002)
            assert time.monotonic() < deadline, "apply ran for more than 60 s"
            code = proc.wait(timeout=30)
            err = proc.stderr.read().decode() if proc.stderr else ""
        assert sha256(src) == input_hash, "the input changed"
        if seen:
            assert not out.exists(), "a killed run left a file at the output path"
            left = {p.name for p in big_dir.iterdir()} - before
            if sig == signal.SIGKILL:
                assert code == -signal.SIGKILL, (code, err)
                assert left <= set(seen), left  # only the temporary file
                for name in left:
                    (big_dir / name).unlink()
            else:
                assert code == 130, (code, err)
                assert err.splitlines() == ["initscope: interrupted"], err
                assert left == set(), left
            return
        # It finished before the temporary file was seen: then the output must be whole.
        assert code == EXIT_OK, err
        with safe_open(str(out), "pt") as fh:
            assert sorted(fh.keys()) == [f"layer{i}.weight" for i in range(count)]
        out.unlink()
    pytest.fail("apply never showed its temporary file; the kill was never tried")
