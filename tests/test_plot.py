"""Pictures: histograms with the expected density (initscope.stats.histogram), the panels, the
`initscope plot` images (PNG/SVG/PDF, paging, errors), `report --hist` and initscope.plot()."""

from __future__ import annotations

import math
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import initscope
from initscope.cli import app
from initscope.knowledge.distributions import Distribution
from initscope.render.plot import DPI, MAX_PANELS, figure_size, page_paths
from initscope.stats.histogram import BLOCKS, density, histogram, sparkline, value_range

pytest.importorskip("matplotlib", reason="initscope plot needs matplotlib (the plot extra)")

UNET = "initscope.examples:UNet"
UNET_PARAMETERS = 32
UNET_WEIGHTS = 12  # conv and conv-transpose weights: what the xavier preset re-initializes
UNET_BIASES = 4  # conv biases: the preset zeroes them (torch's default is uniform)
PANEL = re.compile(r'<g id="initscope-panel-(\d+)"')


@pytest.fixture(scope="module")
def xavier_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example UNet after `apply --rules xavier` (the file records the model)."""
    path = tmp_path_factory.mktemp("unet") / "unet.safetensors"
    result = CliRunner().invoke(app, ["apply", "--rules", "xavier", UNET, "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def svg_panels(path: Path) -> tuple[list[int], str]:
    """The panel indices (from each panel's group id) and all text of a valid SVG."""
    text = path.read_text(encoding="utf-8")
    root = ET.fromstring(text)  # raises on an invalid document
    assert root.tag.endswith("svg")
    words = " ".join(t for el in root.iter() if el.tag.endswith("text") for t in el.itertext())
    return [int(i) for i in PANEL.findall(text)], words


def expected_px(count: int) -> tuple[int, int]:
    w, h = figure_size(count)
    return round(w * DPI), round(h * DPI)


# -- histogram and density ---------------------------------------------------------------------


def test_histogram_is_in_density_units() -> None:
    h = histogram(torch.rand(4096, dtype=torch.float64) * 2 - 1, bins=20, span=(-1.0, 1.0))
    assert h.n == 4096 and sum(h.counts) == 4096
    assert math.isclose(sum(d * h.width for d in h.densities), 1.0)
    # U(-1, 1) has density 0.5: every bar near it.
    assert all(0.3 < d < 0.7 for d in h.densities)


def test_histogram_of_a_constant_is_one_spike() -> None:
    h = histogram(torch.zeros(32, dtype=torch.float64), bins=10, span=(-1.0, 1.0))
    assert h.constant_value == 0.0 and h.n == 32 and max(h.counts) == 32


@pytest.mark.parametrize(
    "dist",
    [
        Distribution.uniform(-0.5, 0.5),
        Distribution.normal(0.1, 0.2),
        Distribution.trunc_normal(0.0, 1.0, -2.0, 2.0),
    ],
)
def test_pdf_integrates_to_one(dist: Distribution) -> None:
    span = value_range(None, dist)
    assert span is not None
    d = density(dist, span)
    assert not d.spikes and d.note is None
    area = sum(
        (x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(d.curve, d.curve[1:], strict=False)
    )
    assert area == pytest.approx(1.0, abs=0.02)


def test_point_masses_and_approximations() -> None:
    const = density(Distribution.constant(1.0), (0.0, 2.0))
    assert [(s.at, s.mass) for s in const.spikes] == [(1.0, 1.0)] and not const.curve
    eye = density(Distribution.eye((4, 4)), (0.0, 1.0))
    assert [(s.at, s.mass) for s in eye.spikes] == [(0.0, 0.75), (1.0, 0.25)]
    ortho = density(Distribution.orthogonal(1.0, (64, 64)), (-0.5, 0.5))
    assert ortho.curve and ortho.note is not None and "≈ N(0" in ortho.note
    sparse = density(Distribution.sparse(0.9, 0.01), (-0.05, 0.05))
    assert sparse.spikes[0].mass == pytest.approx(0.9) and sparse.curve
    assert density(Distribution.custom(), (0.0, 1.0)).empty


def test_sparkline() -> None:
    flat = sparkline(torch.rand(4096, dtype=torch.float64), 10)
    assert len(flat) == 10 and set(flat) <= set(BLOCKS) and "█" in flat
    assert sparkline(torch.ones(16, dtype=torch.float64), 10).strip() == "█"
    assert sparkline(None) == "-"


# -- initscope plot ------------------------------------------------------------------------


@pytest.mark.slow  # renders whole figures with matplotlib
def test_plot_png_before_apply(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "unet.png"
    result = runner.invoke(app, ["plot", UNET, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert png_size(out) == expected_px(UNET_PARAMETERS) == (1800, 1500)
    assert result.stderr == f"wrote {out}: panels 1-32 of 32\n"


@pytest.mark.slow  # renders whole figures with matplotlib
def test_plot_svg_after_apply_has_a_panel_per_parameter_with_fit_labels(
    runner: CliRunner, tmp_path: Path, xavier_unet: Path
) -> None:
    out = tmp_path / "xavier.svg"
    result = runner.invoke(app, ["plot", str(xavier_unet), "-o", str(out), "--against", "xavier"])
    assert result.exit_code == 0, result.output
    panels, words = svg_panels(out)
    assert panels == list(range(UNET_PARAMETERS))
    assert words.count("xavier_uniform(gain=1)") == UNET_WEIGHTS
    assert "zeros" in words and "ones" in words
    assert "≠ rule" not in words and "0 of 32 marked" in words


@pytest.mark.slow  # renders whole figures with matplotlib
def test_plot_marks_parameters_that_differ_from_their_default(
    runner: CliRunner, tmp_path: Path, xavier_unet: Path
) -> None:
    out = tmp_path / "xavier-vs-default.svg"
    result = runner.invoke(app, ["plot", str(xavier_unet), "-o", str(out)])
    assert result.exit_code == 0, result.output
    _, words = svg_panels(out)
    # Every conv weight is xavier now, not torch's kaiming_uniform(a=√5) default, and every
    # conv bias zeros, not uniform.
    assert words.count("≠ default") == UNET_WEIGHTS + UNET_BIASES
    assert f"{UNET_WEIGHTS + UNET_BIASES} of 32 marked" in words


@pytest.mark.slow  # renders whole figures with matplotlib
def test_plot_against_rules_before_apply_marks_what_check_reports(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "before.svg"
    result = runner.invoke(app, ["plot", UNET, "-o", str(out), "--against", "xavier"])
    assert result.exit_code == 0, result.output
    _, words = svg_panels(out)
    check = runner.invoke(app, ["check", UNET, "--rules", "xavier", "--format", "json"])
    import json

    follows = {v["parameter"] for v in json.loads(check.stdout)["violations"]}
    assert words.count("≠ rule") == len(follows) == 16


@pytest.mark.slow  # renders whole figures with matplotlib
def test_plot_pdf(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "unet.pdf"
    result = runner.invoke(app, ["plot", UNET, "-o", str(out), "--type", "BatchNorm2d"])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")


def test_plot_selection(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "convs.svg"
    result = runner.invoke(app, ["plot", UNET, "-o", str(out), "--type", "_ConvNd"])
    assert result.exit_code == 0, result.output
    assert len(svg_panels(out)[0]) == UNET_WEIGHTS + UNET_BIASES
    result = runner.invoke(app, ["plot", UNET, "-o", str(out), "--name", "stem.*"])
    assert result.exit_code == 0, result.output
    assert len(svg_panels(out)[0]) == 2


@pytest.mark.slow  # renders whole figures with matplotlib
def test_plot_pages(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "unet.svg"
    result = runner.invoke(app, ["plot", UNET, "-o", str(out), "--max-panels", "10"])
    assert result.exit_code == 0, result.output
    names = [tmp_path / f"unet-{i}.svg" for i in (1, 2, 3, 4)]
    assert result.stderr.splitlines() == [
        f"wrote {names[0]}: panels 1-10 of 32",
        f"wrote {names[1]}: panels 11-20 of 32",
        f"wrote {names[2]}: panels 21-30 of 32",
        f"wrote {names[3]}: panels 31-32 of 32",
    ]
    assert not out.exists()
    seen = [svg_panels(p)[0] for p in names]
    assert seen == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30)), [30, 31]]
    assert "(page 2 of 4)" in svg_panels(names[1])[1]


def test_page_paths() -> None:
    out = Path("d/plot.png")
    assert [p.path for p in page_paths(out, MAX_PANELS)] == [out]
    pages = page_paths(out, MAX_PANELS + 1)
    assert [(p.path.name, p.first, p.end) for p in pages] == [
        ("plot-1.png", 0, MAX_PANELS),
        ("plot-2.png", MAX_PANELS, MAX_PANELS + 1),
    ]


def test_plot_bad_extension(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["plot", UNET, "-o", str(tmp_path / "unet.gif")])
    assert result.exit_code == 2
    assert result.stderr == (
        f"initscope: error: cannot write {tmp_path / 'unet.gif'}: .gif is not an image format "
        "initscope plot writes; name the output with one of .png, .svg, .pdf\n"
    )


def test_plot_without_matplotlib(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    result = runner.invoke(app, ["plot", UNET, "-o", str(tmp_path / "unet.png")])
    assert result.exit_code == 2
    assert result.stderr == (
        "initscope: error: initscope plot needs matplotlib, which is not installed; "
        "pip install 'initscope[plot]'\n"
    )


@pytest.mark.parametrize(
    ("text", "where", "needle"),
    [
        (  # a typo in an argument value, found in the file alone
            "rules:\n  - type: Conv2d\n    init: kaiming_uniform\n    mode: fanout\n",
            4,
            "did you mean 'fan_out'?",
        ),
        (  # a scheme that cannot apply to what the rule matches (the biases)
            "rules:\n  - init: xavier_uniform\n",
            2,
            "fan_in/fan_out need ≥ 2 dims",
        ),
    ],
)
def test_plot_bad_rules_say_where_and_write_nothing(
    runner: CliRunner, tmp_path: Path, text: str, where: int, needle: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    out = tmp_path / "x.png"
    result = runner.invoke(app, ["plot", UNET, "-o", str(out), "--against", str(rules)])
    assert result.exit_code == 2
    assert f"{rules}:{where}:" in result.stderr and needle in result.stderr
    assert not out.exists()


def test_plot_refuses_to_overwrite_its_input(runner: CliRunner, tmp_path: Path) -> None:
    rules = tmp_path / "rules.svg"
    rules.write_text("rules: []\n")
    result = runner.invoke(app, ["plot", UNET, "-o", str(rules), "--against", str(rules)])
    assert result.exit_code == 2
    assert "is one of the inputs" in result.stderr
    assert rules.read_text() == "rules: []\n"


def test_plot_pages_may_not_be_inputs(runner: CliRunner, tmp_path: Path) -> None:
    # 32 panels at 10 a page are out-1.svg ... out-4.svg; out-2.svg is the rules file.
    rules = tmp_path / "out-2.svg"
    text = "rules:\n  - param: bias\n    init: zeros\n"
    rules.write_text(text)
    out = tmp_path / "out.svg"
    args = ["plot", UNET, "-o", str(out), "--max-panels", "10", "--against", str(rules)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "is one of the inputs" in result.stderr
    assert rules.read_text() == text
    assert not (tmp_path / "out-1.svg").exists()


def test_plot_empty_selection(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["plot", UNET, "-o", str(tmp_path / "x.png"), "--name", "nope"])
    assert result.exit_code == 2
    assert "nothing to plot" in result.stderr


@pytest.mark.slow
def test_help_imports_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys\n"
        "from initscope.cli import app\n"
        "try:\n"
        "    app(['plot', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules, 'matplotlib' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False False")


# -- report --hist -------------------------------------------------------------------------


def test_report_hist_adds_a_column(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", UNET, "--hist"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2].rstrip().endswith("std  histogram")
    column = lines[2].index("histogram")
    rows = [line for line in lines if line.startswith("  weight") or line.startswith("  bias")]
    assert len(rows) == UNET_PARAMETERS
    for row in rows:
        spark = row[column:]
        assert set(spark) <= set(BLOCKS) | {" "} and "█" in spark, row
    # A constant (BatchNorm's ones) is one full bar in the middle of its own range.
    ones = next(row for row in rows if "ones_ const 1" in row)
    assert ones[column:] == "     █"
    assert all(len(line) <= 100 for line in lines)


def test_report_hist_is_for_the_table(runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", UNET, "--hist", "--format", "json"])
    assert result.exit_code == 2
    assert result.stderr == (
        "initscope: error: --hist adds a column to the table format, not to json; "
        "drop --hist or use --format table\n"
    )


# -- Python API ----------------------------------------------------------------------------


@pytest.mark.slow  # renders whole figures with matplotlib
def test_api_plot_returns_a_figure(xavier_unet: Path) -> None:
    from matplotlib.figure import Figure

    report = initscope.report(str(xavier_unet))
    fig = initscope.plot(report)
    assert isinstance(fig, Figure)
    assert [ax.get_gid() for ax in fig.axes] == [
        f"initscope-panel-{i}" for i in range(UNET_PARAMETERS)
    ]
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[0] == "stem.weight  [16,3,3,3]\nxavier_uniform(gain=1)"
    assert sum("xavier_uniform(gain=1)" in t for t in titles) == UNET_WEIGHTS
    assert tuple(fig.get_size_inches()) == figure_size(UNET_PARAMETERS)


def test_api_plot_selects_and_takes_targets_and_modules() -> None:
    fig = initscope.plot(UNET, names=["down1.*"], against="xavier")
    assert len(fig.axes) == 6
    assert sum(ax.spines["left"].get_edgecolor() != (0.0, 0.0, 0.0, 1.0) for ax in fig.axes) == 2
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    fig = initscope.plot(model, types=["LayerNorm"])
    assert [ax.get_title(loc="left").splitlines()[1] for ax in fig.axes] == ["ones", "zeros"]


def test_plot_draws_names_with_dollars_and_values_near_float64_max(
    runner: CliRunner, tmp_path: Path
) -> None:
    # A "$" in a name is text, not mathtext (it crashed the parser); a range wider than
    # float64 can hold is said, not drawn (its axis limits were inf).
    from safetensors.torch import save_file

    mask = torch.zeros(1000, dtype=torch.float64)
    mask[0] = torch.finfo(torch.float64).min
    source = tmp_path / "run_$HOME$.safetensors"
    save_file({"g$\\frac{1}$.weight": torch.randn(64, 64), "mask": mask}, str(source))
    out = tmp_path / "odd.svg"
    result = runner.invoke(app, ["plot", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    _, words = svg_panels(out)
    assert "g$\\frac{1}$.weight" in words
    assert "range too wide to draw" in words


def test_the_y_axis_fits_trained_weights_under_a_narrow_default(tmp_path: Path) -> None:
    # A Linear(512, 512) default is U(±0.044): density 11.3. Trained weights spread ten
    # times wider have a histogram about 1.1 high, which a y-axis scaled to the curve drew a
    # few pixels tall.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from safetensors.torch import save_file

    from initscope.render.panels import make_panels
    from initscope.render.plot import CURVE_HEADROOM, _top

    model = torch.nn.Linear(512, 512)
    with torch.no_grad():
        model.weight.normal_(0, 0.25)
    path = tmp_path / "trained.safetensors"
    save_file(model.state_dict(), str(path))
    how = initscope.TargetOptions(
        model="torch.nn:Linear", kwargs={"in_features": 512, "out_features": 512}
    )
    report = initscope.report(str(path), how)
    (panel,) = [p for p in make_panels(report) if p.title.startswith("weight")]
    assert panel.histogram is not None
    bars = max(panel.histogram.densities)
    curve = max(y for _, y in panel.density.curve)
    assert curve > 5 * bars
    fig, ax = plt.subplots()
    from initscope.render import plot as plot_module

    plot_module._draw(ax, panel)
    top = ax.get_ylim()[1]
    plt.close(fig)
    assert top == pytest.approx(_top(panel))
    assert bars / top >= 1 / (CURVE_HEADROOM * 1.05) - 1e-9
    assert any("off the top" in t.get_text() for t in ax.texts)
