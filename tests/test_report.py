"""`initscope report`: targets, the JSON contract, checkpoints, filters and formats."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from initscope.measure.report import ReportOptions, build_report
from initscope.render.report import report_to_dict


def run_json(runner: CliRunner, *args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["report", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in data["parameters"]}


def test_forum_question_linear_5_100(runner: CliRunner) -> None:
    """Acceptance: default family uniform, high == 1/sqrt(5), stats agree with the tensor."""
    data = run_json(
        runner, "torch.nn:Linear", "--arg", "in_features=5", "--arg", "out_features=100"
    )
    assert data["schema"] == "initscope.report/1"
    assert data["torch_version"] == torch.__version__
    params = by_name(data)
    assert set(params) == {"weight", "bias"}
    torch.manual_seed(0)  # the report constructs with --seed 0 by default
    real = torch.nn.Linear(5, 100)
    for name, tensor in (("weight", real.weight), ("bias", real.bias)):
        p = params[name]
        assert p["default"]["family"] == "uniform"
        assert p["default"]["high"] == pytest.approx(1 / math.sqrt(5), rel=1e-12)
        assert p["default"]["low"] == pytest.approx(-1 / math.sqrt(5), rel=1e-12)
        t = tensor.detach().double()
        assert p["stats"]["mean"] == pytest.approx(float(t.mean()), abs=1e-12)
        assert p["stats"]["std"] == pytest.approx(float(t.std()), rel=1e-9)
        assert p["stats"]["min"] == pytest.approx(float(t.min()))
        assert p["stats"]["max"] == pytest.approx(float(t.max()))
        assert p["stats"]["abs_max"] == pytest.approx(float(t.abs().max()))
        assert p["stats"]["nan_count"] == 0 and p["stats"]["inf_count"] == 0
    w = params["weight"]
    assert w["shape"] == [100, 5] and w["numel"] == 500 and w["dtype"] == "float32"
    assert (w["fan_in"], w["fan_out"]) == (5, 100)
    assert params["bias"]["fan_in"] is None
    assert w["module"] == "" and w["param"] == "weight"
    assert w["module_type"] == "torch.nn.modules.linear.Linear"
    assert w["default"]["init"] == "kaiming_uniform_"
    assert w["default"]["args"]["a"] == pytest.approx(math.sqrt(5))
    assert w["default"]["mean"] == 0.0
    assert w["default"]["std"] == pytest.approx(2 / math.sqrt(5) / math.sqrt(12))
    assert w["default"]["value"] is None
    assert data["summary"] == {
        "parameters": 2,
        "numel": 600,
        "buffers": 0,
        "with_default": 2,
        "custom_default": 0,
        "at_default": 2,
        "differ": 0,
        "inconclusive": 0,
    }
    assert w["matches_default"] is True
    assert w["fit"]["label"] == "kaiming_uniform(a=sqrt(5))"


def test_schema_fields_of_the_unet_example(runner: CliRunner) -> None:
    data = run_json(runner, "initscope.examples:UNet")
    p = by_name(data)["down1.0.weight"]
    assert list(p) == [
        "name",
        "module",
        "module_type",
        "param",
        "kind",
        "shape",
        "dtype",
        "numel",
        "fan_in",
        "fan_out",
        "tied_to",
        "default",
        "fit",
        "matches_default",
        "stats",
    ]
    assert p["module_type"] == "torch.nn.modules.conv.Conv2d"
    assert p["shape"] == [32, 16, 3, 3]
    assert (p["fan_in"], p["fan_out"]) == (144, 288)
    for key in ("init", "args", "family", "low", "high", "mean", "std", "value"):
        assert key in p["default"]
    assert set(p["stats"]) == {
        "mean",
        "std",
        "min",
        "max",
        "abs_max",
        "zero_fraction",
        "nan_count",
        "inf_count",
    }
    # the example UNet has convs with and without bias, ConvTranspose2d and BatchNorm2d
    types = {q["module_type"].rsplit(".", 1)[-1] for q in data["parameters"]}
    assert {"Conv2d", "ConvTranspose2d", "BatchNorm2d"} <= types
    names = by_name(data)
    assert "stem.bias" in names and "down1.0.bias" not in names


def test_tied_parameters_are_reported_once(runner: CliRunner) -> None:
    data = run_json(runner, "initscope.examples:TinyTransformer")
    params = by_name(data)
    assert "lm_head.weight" not in params
    assert params["embed.weight"]["tied_to"] == ["lm_head.weight"]
    assert params["norm.weight"]["tied_to"] is None


def test_args_file_and_yaml_values(runner: CliRunner, tmp_path: Path) -> None:
    args = tmp_path / "kw.yaml"
    args.write_text("in_channels: 4\nout_channels: 6\n")
    data = run_json(
        runner,
        "nn.Conv2d",
        "--args-file",
        str(args),
        "--arg",
        "kernel_size=[3,5]",
        "--arg",
        "bias=false",
    )
    params = by_name(data)
    assert set(params) == {"weight"}
    assert params["weight"]["shape"] == [6, 4, 3, 5]


def test_spec_file_with_checkpoint_and_example_input(runner: CliRunner, tmp_path: Path) -> None:
    from tests.fixtures.models import LazyNet

    torch.manual_seed(7)
    lazy = LazyNet()
    lazy(torch.randn(1, 3, 8, 8))
    with torch.no_grad():
        lazy.fc.bias.fill_(0.125)
    torch.save(lazy.state_dict(), tmp_path / "lazy.pt")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "model: tests.fixtures.models:LazyNet\n"
        "checkpoint: lazy.pt\n"  # relative to the spec's folder
        "example_input: {shape: [1, 3, 8, 8]}\n"
    )
    params = by_name(run_json(runner, str(spec)))
    bias = params["fc.bias"]
    assert bias["stats"]["mean"] == pytest.approx(0.125)
    assert bias["stats"]["std"] == 0
    assert bias["default"]["family"] == "uniform"  # the default is still known


def test_bare_checkpoint_is_stats_only(runner: CliRunner, linear_pt: Path) -> None:
    data = run_json(runner, str(linear_pt))
    params = by_name(data)
    assert params["weight"]["default"] is None
    assert params["weight"]["module_type"] is None
    assert params["weight"]["fan_in"] == 5
    sd = torch.load(linear_pt, weights_only=True)
    assert params["weight"]["stats"]["std"] == pytest.approx(float(sd["weight"].double().std()))


def test_checkpoint_with_model_knows_types_and_defaults(runner: CliRunner, linear_pt: Path) -> None:
    data = run_json(
        runner,
        str(linear_pt),
        "--model",
        "torch.nn:Linear",
        "--arg",
        "in_features=5",
        "--arg",
        "out_features=100",
    )
    w = by_name(data)["weight"]
    assert w["module_type"] == "torch.nn.modules.linear.Linear"
    assert w["default"]["high"] == pytest.approx(1 / math.sqrt(5))
    sd = torch.load(linear_pt, weights_only=True)
    # statistics come from the checkpoint, not from the freshly constructed model
    assert w["stats"]["mean"] == pytest.approx(float(sd["weight"].double().mean()), abs=1e-12)


def test_safetensors_checkpoint(runner: CliRunner, tiny_safetensors: Path) -> None:
    params = by_name(run_json(runner, str(tiny_safetensors)))
    assert params["bn.running_var"]["stats"]["mean"] == 1.0
    assert params["fc.weight"]["shape"] == [3, 4]
    spec_data = run_json(
        runner, str(tiny_safetensors), "--model", "tests.fixtures.models:Tiny", "--buffers"
    )
    kinds = {p["name"]: p["kind"] for p in spec_data["parameters"]}
    assert kinds["bn.running_var"] == "buffer" and kinds["fc.weight"] == "parameter"


@pytest.mark.parametrize("container", ["state_dict", "model", "nested"])
def test_containers_and_prefixes_are_unwrapped(
    runner: CliRunner, tmp_path: Path, container: str
) -> None:
    sd = {f"module._orig_mod.{k}": v for k, v in torch.nn.Linear(3, 2).state_dict().items()}
    obj: dict[str, Any] = {"epoch": 3, "optimizer": {"lr": 0.1}}
    if container == "nested":
        obj["model"] = {"state_dict": sd}
    else:
        obj[container] = sd
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    params = by_name(
        run_json(
            runner,
            str(path),
            "--model",
            "nn.Linear",
            "--arg",
            "in_features=3",
            "--arg",
            "out_features=2",
        )
    )
    assert set(params) == {"weight", "bias"}


def test_filters_by_type_and_name(runner: CliRunner) -> None:
    data = run_json(runner, "initscope.examples:UNet", "--type", "BatchNorm2d")
    assert data["parameters"]
    assert all(p["module_type"].endswith("BatchNorm2d") for p in data["parameters"])
    # subclasses match a base class name
    data = run_json(runner, "initscope.examples:UNet", "--type", "_ConvNd")
    types = {p["module_type"].rsplit(".", 1)[-1] for p in data["parameters"]}
    assert types == {"Conv2d", "ConvTranspose2d"}
    data = run_json(runner, "initscope.examples:UNet", "--name", "up*")
    assert {p["module"] for p in data["parameters"]} == {"up1", "up2"}
    data = run_json(runner, "initscope.examples:UNet", "--name", "*.bias", "--type", "Conv2d")
    assert {p["name"] for p in data["parameters"]} == {"stem.bias", "head.bias"}


def test_buffers_only_with_flag(runner: CliRunner) -> None:
    names = set(by_name(run_json(runner, "initscope.examples:UNet")))
    assert not any("running" in n for n in names)
    data = run_json(runner, "initscope.examples:UNet", "--buffers")
    buffers = [p for p in data["parameters"] if p["kind"] == "buffer"]
    var = next(p for p in buffers if p["name"] == "down1.1.running_var")
    assert var["default"]["family"] == "constant" and var["default"]["value"] == 1.0
    assert data["summary"]["buffers"] == len(buffers)


def test_short_torch_names_are_equivalent(runner: CliRunner) -> None:
    a = run_json(runner, "nn.Linear", "--arg", "in_features=2", "--arg", "out_features=3")
    b = run_json(runner, "torch.nn.Linear", "--arg", "in_features=2", "--arg", "out_features=3")
    assert a["parameters"] == b["parameters"]


def test_output_file_is_written_atomically(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = runner.invoke(
        app, ["report", "initscope.examples:LSTMTagger", "--format", "json", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert json.loads(out.read_text())["parameters"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_markdown_and_csv(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", "initscope.examples:UNet", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| `stem.weight` | Conv2d | `[16,3,3,3]` | `kaiming_uniform_(a=√5)` |" in result.stdout
    result = runner.invoke(app, ["report", "initscope.examples:UNet", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    stem = next(r for r in rows if r["name"] == "stem.weight")
    assert stem["default_family"] == "uniform" and stem["shape"] == "16x3x3x3"
    assert float(stem["default_high"]) == pytest.approx(1 / math.sqrt(27))
    assert stem["fit_label"] == "kaiming_uniform(a=sqrt(5))" and stem["matches_default"] == "True"


def test_json_keeps_stdout_clean_of_warnings(runner: CliRunner) -> None:
    # nn.Transformer warns on construction; the warning must not corrupt JSON on stdout
    result = runner.invoke(
        app,
        [
            "report",
            "nn.TransformerEncoderLayer",
            "--arg",
            "d_model=8",
            "--arg",
            "nhead=2",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)


def test_nan_and_inf_are_counted(tmp_path: Path) -> None:
    t = torch.randn(10, 10)
    t[0, 0] = float("nan")
    t[1, 1] = float("inf")
    t[2, 2] = 0.0
    torch.save({"w": t}, tmp_path / "bad.pt")
    report = build_report(str(tmp_path / "bad.pt"), options=ReportOptions())
    s = report.parameters[0].stats
    assert s is not None
    assert (s.nan_count, s.inf_count) == (1, 1)
    finite = t[torch.isfinite(t)].double()
    assert s.mean == pytest.approx(float(finite.mean()))
    assert s.zero_fraction == pytest.approx(1 / 100)


def test_unsafe_load_reports_a_pickled_module(runner: CliRunner, tmp_path: Path) -> None:
    from tests.fixtures.models import Tiny

    torch.save(Tiny(), tmp_path / "whole.pt")
    data = run_json(runner, str(tmp_path / "whole.pt"), "--unsafe-load")
    params = by_name(data)
    assert params["fc.weight"]["module_type"] == "torch.nn.modules.linear.Linear"


def test_python_api_matches_cli(runner: CliRunner) -> None:
    import initscope

    how = initscope.TargetOptions(kwargs={"in_features": 5, "out_features": 100}, seed=0)
    report = initscope.report("nn.Linear", how)
    assert report_to_dict(report) == run_json(
        runner, "nn.Linear", "--arg", "in_features=5", "--arg", "out_features=100"
    )


def test_unsigned_safetensors_dtypes_are_read(runner: CliRunner, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "u.safetensors"
    save_file({"ids": torch.arange(6, dtype=torch.int64).to(torch.uint16)}, str(path))
    params = by_name(run_json(runner, str(path)))
    assert params["ids"]["dtype"] == "uint16"
    assert params["ids"]["stats"]["mean"] == 2.5


def test_spec_args_kwargs_and_spec_option_for_a_checkpoint(
    runner: CliRunner, tmp_path: Path
) -> None:
    spec = tmp_path / "conv.yaml"
    spec.write_text("model: nn.Conv2d\nargs: [3, 8]\nkwargs: {kernel_size: 5}\n")
    params = by_name(run_json(runner, str(spec)))
    assert params["weight"]["shape"] == [8, 3, 5, 5]
    # --arg overrides the spec's kwargs
    params = by_name(run_json(runner, str(spec), "--arg", "kernel_size=1"))
    assert params["weight"]["shape"] == [8, 3, 1, 1]
    torch.save(torch.nn.Conv2d(3, 8, 5).state_dict(), tmp_path / "conv.pt")
    params = by_name(run_json(runner, str(tmp_path / "conv.pt"), "--spec", str(spec)))
    assert params["weight"]["module_type"] == "torch.nn.modules.conv.Conv2d"
    assert params["weight"]["default"]["high"] == pytest.approx(1 / math.sqrt(75))


def test_non_finite_constant_gives_valid_json(runner: CliRunner) -> None:
    result = runner.invoke(
        app, ["report", "tests.fixtures.models:Masked", "--buffers", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    neg = by_name(json.loads(result.stdout))["neg"]  # strict JSON: no -Infinity
    assert neg["default"]["family"] == "constant" and neg["default"]["value"] is None
    assert neg["default"]["label"] == "const -inf"
    assert neg["stats"]["inf_count"] == 16
    table = runner.invoke(app, ["report", "tests.fixtures.models:Masked", "--buffers"])
    assert table.exit_code == 0, table.output
    assert "const -inf" in table.stdout


def test_submodule_named_module_keeps_its_prefix(runner: CliRunner, tmp_path: Path) -> None:
    from tests.fixtures.models import Wrapper

    torch.save(Wrapper().state_dict(), tmp_path / "w.pt")
    params = by_name(
        run_json(runner, str(tmp_path / "w.pt"), "--model", "tests.fixtures.models:Wrapper")
    )
    assert set(params) == {"module.weight", "module.bias"}


def test_pickled_data_parallel_keeps_module_types(runner: CliRunner, tmp_path: Path) -> None:
    from tests.fixtures.models import Tiny

    torch.save(torch.nn.DataParallel(Tiny()), tmp_path / "dp.pt")
    params = by_name(run_json(runner, str(tmp_path / "dp.pt"), "--unsafe-load", "--type", "Linear"))
    assert set(params) == {"fc.weight", "fc.bias"}


def test_type_typo_is_an_error_with_a_suggestion(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", "initscope.examples:UNet", "--type", "Conv2D"])
    assert result.exit_code == 2, result.output
    assert "--type Conv2D matches no module class" in result.stderr
    assert "did you mean 'Conv2d'?" in result.stderr


def test_printing_model_keeps_json_stdout_clean(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", "tests.fixtures.models:Chatty", "--format", "json"])
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)
    assert "building Chatty" in result.stderr


def test_untraced_parameters_are_counted_as_custom(runner: CliRunner) -> None:
    data = run_json(runner, "tests.fixtures.models:Untraced")
    assert by_name(data)["table"]["default"]["init"] == "untraced"
    assert data["summary"]["with_default"] == 2 and data["summary"]["custom_default"] == 1
    table = runner.invoke(app, ["report", "tests.fixtures.models:Untraced"])
    assert "default init known for 2 of 3 (1 custom or untraced)" in table.stdout


def test_buffers_are_grouped_with_their_module(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", "tests.fixtures.models:Tiny", "--buffers"])
    assert result.exit_code == 0, result.output
    headings = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert sum(h.startswith("bn  BatchNorm1d") for h in headings) == 1


def test_long_call_chains_stay_within_the_table_width(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", "tests.fixtures.models:spectral", "--buffers"])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 100
    data = run_json(runner, "tests.fixtures.models:spectral", "--buffers")
    u = next(p for p in data["parameters"] if p["name"].endswith("_u"))
    assert all("out=" not in step for step in u["default"]["then"])


def test_safetensors_tensors_are_listed_as_a_model_lists_them(
    runner: CliRunner, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "o.safetensors"
    names = ["layers.10.bias", "layers.2.weight", "layers.10.weight", "layers.2.bias", "emb"]
    save_file({n: torch.ones(2) for n in names}, str(path))
    listed = [p["name"] for p in run_json(runner, str(path))["parameters"]]
    assert listed == [
        "emb",
        "layers.2.weight",
        "layers.2.bias",
        "layers.10.weight",
        "layers.10.bias",
    ]


def test_bad_input_shape_is_rejected(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", "tests.fixtures.models:LazyNet", "--input-shape", "2,x"])
    assert result.exit_code == 2, result.output
    assert "--input-shape '2,x' is not a shape" in result.stderr


def test_nested_spec_argument_builds_a_layer_under_the_tracer(runner: CliRunner) -> None:
    layer = "encoder_layer={model: nn.TransformerEncoderLayer, kwargs: {d_model: 16, nhead: 2}}"
    data = run_json(
        runner,
        "nn.TransformerEncoder",
        "--arg",
        layer,
        "--arg",
        "num_layers=2",
        "--arg",
        "enable_nested_tensor=false",
    )
    w = by_name(data)["layers.1.self_attn.in_proj_weight"]
    assert w["default"]["init"] == "xavier_uniform_" and "deepcopy" in w["default"]["via"]


WIDE_MODELS = [
    ("initscope.examples:UNet", []),
    ("nn.LSTM", ["-a", "input_size=10", "-a", "hidden_size=20"]),
    ("nn.TransformerEncoderLayer", ["-a", "d_model=16", "-a", "nhead=2"]),
    ("nn.MultiheadAttention", ["-a", "embed_dim=8", "-a", "num_heads=2"]),
    ("nn.Bilinear", ["-a", "in1_features=3", "-a", "in2_features=4", "-a", "out_features=5"]),
]


@pytest.mark.parametrize(("target", "args"), WIDE_MODELS)
@pytest.mark.parametrize("hist", [False, True])
def test_an_80_column_table_fits_80_columns(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, target: str, args: list[str], hist: bool
) -> None:
    # COLUMNS is honoured also when stdout is not a terminal (a pipe, CliRunner).
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["report", target, *args, *(["--hist"] if hist else [])])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    too_long = [line for line in lines if len(line) > 80]
    assert not too_long, "\n".join(too_long)
    # nothing is lost: every parameter's init is still there, on its row or the next line
    assert result.stdout.count("default") >= 1
    assert "U(±" in result.stdout or "N(" in result.stdout or "const" in result.stdout


def test_a_report_without_samples_says_the_same(tmp_path: Path) -> None:
    """ReportOptions(samples=False), what `report` uses unless --hist or --html draws them:
    every parameter's report is the same (statistics, fit, p-value, decision), without the
    sample, in one process and across two workers."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    path = tmp_path / "w.safetensors"
    save_file({f"l{i}.weight": torch.randn(64, 48) * 0.02 for i in range(40)}, str(path))
    for workers in (1, 2):
        kept = build_report(str(path), options=ReportOptions(workers=workers))
        bare = build_report(str(path), options=ReportOptions(workers=workers, samples=False))
        assert kept.parameters == bare.parameters
        assert all(p.sample is not None and p.sample.numel() for p in kept.parameters)
        assert all(p.sample is None for p in bare.parameters)
        assert report_to_dict(kept) == report_to_dict(bare)
