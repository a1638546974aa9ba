"""initscope apply: the forum's UNet case, every preset on a model it is meant for, the
Python API, provenance, and the plan's account of what the rules missed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from initscope.cli import app
from initscope.knowledge.tracing import fans
from initscope.measure.report import build_report
from initscope.rules.apply import apply_rules, derive_seed
from initscope.rules.language import RulesError, load_rules, preset_names
from initscope.rules.plan import Action
from initscope.rules.schema import RULES_SCHEMA

ROOT = Path(__file__).resolve().parent.parent


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _xavier_bound(shape: tuple[int, ...]) -> float:
    f = fans(shape)
    assert f is not None
    return math.sqrt(6.0 / (f[0] + f[1]))


# -- the forum's case ----------------------------------------------------------------------


def test_unet_xavier_preset_report_shows_xavier_and_zero_biases(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "unet.safetensors"
    result = runner.invoke(
        app, ["apply", "--rules", "xavier", "initscope.examples:UNet", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "every parameter is covered by a rule" in result.stdout
    assert f"wrote {out}" in result.stdout
    # report on the output needs no --model: the file records what made it
    report = build_report(str(out))
    assert report.has_model
    convs = biases = 0
    for p in report.parameters:
        if p.module_type and p.module_type.endswith(("Conv2d", "ConvTranspose2d")):
            if p.param == "weight" and p.numel >= 1000:
                assert p.fit is not None and p.fit.label == "xavier_uniform(gain=1)", p.name
                assert p.matches_default is False
                bound = _xavier_bound(p.shape)
                assert p.fit.params["high"] == pytest.approx(bound, rel=0.02), p.name
                convs += 1
            elif p.param == "weight":  # the 1x1 head: too few values to name the bound
                assert p.fit is not None and p.fit.family.value == "uniform", p.name
            else:
                assert p.stats is not None and p.stats.min == p.stats.max == 0.0, p.name
                biases += 1
        if p.module_type and p.module_type.endswith("BatchNorm2d"):
            assert p.matches_default is True, p.name
    assert convs == 10 and biases == 4  # the stem (432 values) and the head are smaller


def test_unet_strict_fails_on_rules_missing_a_layer(runner: CliRunner, tmp_path: Path) -> None:
    rules = tmp_path / "convs.yaml"
    rules.write_text(
        "rules:\n  - type: [Conv2d, ConvTranspose2d]\n    param: weight\n"
        "    init: xavier_uniform\n  - type: Conv2d\n    param: bias\n    init: zeros\n"
    )
    out = tmp_path / "out.safetensors"
    args = ["apply", "--rules", str(rules), "initscope.examples:UNet", "-o", str(out)]
    loose = runner.invoke(app, args)
    assert loose.exit_code == 0, loose.output
    # the BatchNorm weights/biases and the ConvTranspose2d biases are listed as uncovered
    line = next(s for s in loose.stdout.splitlines() if "not covered by any rule" in s)
    assert line.startswith("18 not covered by any rule (unmatched: keep, left as they were)")
    assert "up1.bias (32,)" in line and "down1.1.weight (32,)" in line
    out.unlink()
    strict = runner.invoke(app, [*args, "--strict"])
    assert strict.exit_code == 2
    assert "no rule covers 18 parameter(s): down1.1.weight" in strict.stderr
    assert not out.exists()


def test_dry_run_prints_every_parameter_with_rule_line_and_numbers(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["apply", "--rules", "xavier", "initscope.examples:UNet", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    stem = next(s for s in lines if s.startswith("stem.weight"))
    # xavier_uniform on a (16, 3, 3, 3) conv: sqrt(6 / (27 + 144)) = 0.18732
    assert "rules[0] line 14" in stem and "U(±0.1873)" in stem
    assert any(s.startswith("stem.bias") and "zeros_()" in s for s in lines)
    assert "dry run: nothing was written" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_json_plan_is_data(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        ["apply", "--rules", "xavier", "initscope.examples:UNet", "--dry-run", "-f", "json"],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "initscope.apply/1" and doc["dry_run"] is True
    stem = next(p for p in doc["parameters"] if p["name"] == "stem.weight")
    assert stem["rule"] == {"index": 0, "line": 14, "init": "xavier_uniform_"}
    assert stem["init"] == "xavier_uniform_" and stem["args"] == {"gain": 1.0}
    assert stem["distribution"]["high"] == pytest.approx(math.sqrt(6 / (27 + 144)))
    assert doc["unmatched"] == [] and doc["unused_rules"] == []
    assert doc["summary"]["parameters"] == 32


def test_unused_rule_is_a_warning_and_strict_error(runner: CliRunner, tmp_path: Path) -> None:
    rules = tmp_path / "typo.yaml"
    rules.write_text(
        "rules:\n  - name: 'encoder.*'\n    init: zeros\n  - init: default\n",
    )
    args = ["apply", "--rules", str(rules), "initscope.examples:UNet", "--dry-run"]
    loose = runner.invoke(app, args)
    assert loose.exit_code == 0
    assert (
        f"initscope: warning: {rules}:2:5: rules[0] (line 2) matched no parameter" in loose.stderr
    )
    strict = runner.invoke(app, [*args, "--strict"])
    assert strict.exit_code == 2
    assert f"initscope: error: {rules}:2:5: rules[0]: matched no parameter" in strict.stderr


# -- every preset, on a model it is meant for ----------------------------------------------

PRESET_TARGETS = {
    "xavier": ["initscope.examples:UNet"],
    "kaiming": ["initscope.examples:UNet"],
    "lecun": ["initscope.examples:UNet"],
    "pytorch-default": [
        "initscope.examples:UNet",
        "initscope.examples:TinyTransformer",
        "initscope.examples:LSTMTagger",
    ],
    "orthogonal-rnn": ["initscope.examples:LSTMTagger"],
    "gpt2": ["tests.fixtures.hf_models:tiny_gpt2"],
    "bert": ["tests.fixtures.hf_models:tiny_bert"],
    "vit-timm": ["tests.fixtures.hf_models:tiny_vit"],
}


def test_every_preset_has_a_target_here() -> None:
    assert sorted(PRESET_TARGETS) == preset_names()


@pytest.mark.parametrize(
    ("preset", "target"),
    [
        # building a transformers model takes seconds: outside the quick loop
        pytest.param(p, t, marks=[pytest.mark.slow] if "hf_models" in t else [])
        for p, ts in PRESET_TARGETS.items()
        for t in ts
    ],
)
def test_preset_applies_cleanly(
    preset: str, target: str, runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "out.safetensors"
    extra = ["--var", "n_layer=2"] if preset == "gpt2" else []
    result = runner.invoke(app, ["apply", "--rules", preset, target, "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr, result.stderr  # no rule matched nothing
    assert out.exists()
    values = _tensors(out)
    if preset == "gpt2":
        # residual projections: 0.02 / sqrt(2 * n_layer) = 0.01; the rest 0.02
        proj = values["transformer.h.0.attn.c_proj.weight"]
        assert proj.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.1)
        qkv = values["transformer.h.0.attn.c_attn.weight"]
        assert qkv.std().item() == pytest.approx(0.02, rel=0.1)
        assert values["transformer.h.0.attn.c_attn.bias"].abs().max().item() == 0.0
        assert values["transformer.ln_f.weight"].eq(1).all()
    if preset == "bert":
        w = values["encoder.layer.0.attention.self.query.weight"]
        assert w.std().item() == pytest.approx(0.02, rel=0.1)
        assert values["embeddings.LayerNorm.weight"].eq(1).all()
    if preset == "vit-timm":
        assert values["classifier.weight"].abs().max().item() == 0.0
        assert values["vit.embeddings.cls_token"].abs().max().item() < 1e-4
        w = values["vit.layers.0.attention.q_proj.weight"]
        assert w.std().item() == pytest.approx(0.02, rel=0.1)
    if preset == "orthogonal-rnn":
        w = values["lstm.weight_hh_l0"]  # (4 * 32, 32): orthonormal columns
        assert torch.allclose(w.T @ w, torch.eye(32), atol=1e-5)
        assert values["lstm.bias_ih_l0_reverse"].abs().max().item() == 0.0
    if preset == "lecun":
        w = values["down2.3.weight"]  # fan_in 64 * 9
        assert w.std().item() == pytest.approx(1 / math.sqrt(64 * 9), rel=0.05)


def test_pytorch_default_matches_default_in_report(tmp_path: Path) -> None:
    out = tmp_path / "t.safetensors"
    from initscope.rules.apply import ApplyOptions, apply_target

    apply_target(
        "initscope.examples:TinyTransformer",
        "pytorch-default",
        options=ApplyOptions(output=out, seed=3),
    )
    report = build_report(str(out))
    big = [p for p in report.parameters if p.numel >= 1000]
    assert big and all(p.matches_default is True for p in big), [
        (p.name, p.fit) for p in big if p.matches_default is not True
    ]
    # the padding row of the tied embedding was zeroed by Embedding.reset_parameters()
    assert _tensors(out)["embed.weight"][0].abs().max().item() == 0.0


# -- the Python API --------------------------------------------------------------------------


def test_apply_rules_api_on_a_model_with_bias_false_convs() -> None:
    from initscope.examples import UNet

    model = UNet(width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = apply_rules(
        model,
        {
            "rules": [
                {"type": "Conv2d", "param": "weight", "init": "xavier_normal", "gain": "relu"},
                {"param": "bias", "type": "Conv2d", "init": "zeros"},
            ]
        },
        seed=7,
    )
    changed = {e.site.name for e in plan.changed}
    assert "stem.weight" in changed and "stem.bias" in changed
    assert "up1.weight" not in changed  # ConvTranspose2d is not a Conv2d
    assert torch.equal(model.up1.weight, before["up1.weight"])
    # buffers untouched
    assert torch.equal(model.down1[1].running_var, before["down1.1.running_var"])
    g = torch.Generator().manual_seed(derive_seed(7, "stem.weight"))
    expected = torch.nn.init.xavier_normal_(
        torch.empty(4, 3, 3, 3), gain=math.sqrt(2.0), generator=g
    )
    assert torch.equal(model.stem.weight.detach(), expected)


def test_default_via_reset_parameters_keeps_other_params_and_buffers() -> None:
    bn = torch.nn.Sequential(torch.nn.BatchNorm1d(8))
    with torch.no_grad():
        bn[0].weight.fill_(3.0)
        bn[0].bias.fill_(4.0)
        bn[0].running_mean.fill_(5.0)
    plan = apply_rules(bn, {"rules": [{"param": "weight", "init": "default"}]})
    assert [e.default_via for e in plan.changed] == ["reset_parameters"]
    assert bn[0].weight.eq(1).all() and bn[0].bias.eq(4).all()
    assert bn[0].running_mean.eq(5).all()


def test_rules_error_collects_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n  - init: xavir\n  - init: normal\n    sdt: 1\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    lines = info.value.lines()
    assert lines[0].startswith(f"{path}:2:5: rules[0].init: unknown init 'xavir'")
    assert lines[1].startswith(f"{path}:4:5: rules[1].sdt: unknown key 'sdt' for normal")
    assert "(did you mean 'std'?)" in lines[1]
    assert lines[2] == "2 problems in the rules; nothing was changed"


def test_bare_state_dict_rules_by_param_and_ndim(linear_pt: Path, runner: CliRunner) -> None:
    rules = linear_pt.parent / "r.yaml"
    rules.write_text("rules:\n  - ndim: 2\n    init: orthogonal\n  - param: bias\n    init: ones\n")
    out = linear_pt.parent / "out.pt"
    result = runner.invoke(app, ["apply", "--rules", str(rules), str(linear_pt), "-o", str(out)])
    assert result.exit_code == 0, result.output
    state = torch.load(out, weights_only=True)
    assert "__initscope__" in state
    w = state["weight"]  # (100, 5): orthonormal columns
    assert torch.allclose(w.T @ w, torch.eye(5), atol=1e-5)
    assert state["bias"].eq(1).all()
    record = json.loads(state["__initscope__"])
    assert record["format"] == "initscope.provenance/1" and record["seed"] == 0
    assert record["model"] is None and record["source"] == str(linear_pt)
    assert "init: orthogonal" in record["rules"]


def test_provenance_rebuilds_the_model_with_its_arguments(tmp_path: Path) -> None:
    out = tmp_path / "unet.pt"
    from initscope.io.targets import TargetOptions
    from initscope.rules.apply import ApplyOptions, apply_target

    apply_target(
        "initscope.examples:UNet",
        "kaiming",
        TargetOptions(kwargs={"width": 8}),
        ApplyOptions(output=out),
    )
    report = build_report(str(out))
    assert report.has_model
    conv = next(p for p in report.parameters if p.name == "down1.0.weight")
    assert conv.shape == (16, 8, 3, 3)
    assert conv.fit is not None and conv.fit.label.startswith("kaiming_normal("), conv.fit


def test_provenance_naming_a_non_module_is_ignored_with_a_warning(tmp_path: Path) -> None:
    from initscope.io.saving import Provenance, save_state_dict

    out = tmp_path / "evil.safetensors"
    save_state_dict(
        {"w": torch.zeros(3, 3)},
        out,
        Provenance(version="0", model={"ref": "os:system", "args": ["echo hi"], "kwargs": {}}),
    )
    with pytest.warns(UserWarning, match="not an nn.Module class"):
        report = build_report(str(out))
    assert not report.has_model


def test_schema_file_is_the_published_schema() -> None:
    published = json.loads((ROOT / "configs" / "rules.schema.json").read_text())
    assert published == RULES_SCHEMA


def test_presets_validate_against_the_schema() -> None:
    import yaml

    from initscope.rules.schema import validate

    for name in preset_names():
        doc = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
        assert validate(doc) == [], name


def test_schema_uses_only_supported_keywords() -> None:
    from initscope.rules.schema import SUPPORTED_KEYWORDS

    def keywords(node: object, in_properties: bool = False) -> set[str]:
        out: set[str] = set()
        if isinstance(node, dict):
            for k, v in node.items():
                if not in_properties:
                    out.add(k)
                out |= keywords(v, in_properties=(k == "properties" and not in_properties))
        elif isinstance(node, list):
            for v in node:
                out |= keywords(v)
        return out

    assert keywords(RULES_SCHEMA) <= SUPPORTED_KEYWORDS


def test_plan_actions_cover_keep_and_tied() -> None:
    from initscope.examples import TinyTransformer

    model = TinyTransformer()
    plan = apply_rules(
        model,
        {"rules": [{"name": "lm_head", "init": "keep"}, {"init": "default"}]},
        dry_run=True,
    )
    by_name = {e.site.name: e for e in plan.entries}
    assert by_name["embed.weight"].action is Action.DEFAULT
    assert by_name["lm_head.weight"].action is Action.TIED
    assert by_name["lm_head.weight"].site.tied_to == "embed.weight"
    assert plan.conflicts and "tied to embed.weight" in plan.warnings()[0]


@pytest.mark.slow
def test_apply_check_report_work_without_numpy(tmp_path: Path) -> None:
    # numpy is not a dependency (safetensors.torch.save_file would need it): block it.
    import subprocess
    import sys

    out = tmp_path / "u.safetensors"
    script = (
        "import sys; sys.modules['numpy'] = None\n"
        "from initscope.cli import main\n"
        "for argv in (['apply', '--rules', 'xavier', 'initscope.examples:UNet', '-o', sys.argv[1]],"
        " ['check', sys.argv[1], '--rules', 'xavier'], ['report', sys.argv[1]]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (argv, e.code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "all checks pass" in done.stdout
    assert "numpy" not in done.stderr.lower()
