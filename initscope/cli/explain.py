"""``initscope explain LAYER``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from initscope.render.common import FORMATS, Format

if TYPE_CHECKING:
    pass
from initscope.cli.app import app
from initscope.cli.options import ArgOpt, ArgsFileOpt, DebugOpt, InputShapeOpt, format_option
from initscope.cli.runtime import boundary, debug_mode, emit
from initscope.io.parsing import constructor_kwargs, parse_shape

__all__ = [
    "explain",
]


@app.command()
def explain(
    ctx: typer.Context,
    layer: Annotated[str, typer.Argument(help="A layer class, e.g. nn.Conv2d or torch.nn:LSTM.")],
    arg: ArgOpt = None,
    args_file: ArgsFileOpt = None,
    fmt: Annotated[
        Format, format_option("explain", "table (text), markdown or json.")
    ] = Format.TABLE,
    input_shape: InputShapeOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Explain one layer type's default init: the call, the numbers, the formula and the source."""
    debug = debug_mode(ctx, debug)
    with boundary(debug):
        fmt = fmt.require("explain", FORMATS["explain"])  # before any work
        from initscope.knowledge.explanation import explain as explain_layer
        from initscope.render.explain import render_explanation

        kwargs = constructor_kwargs(arg, args_file)
        result = explain_layer(layer, kwargs, input_shape=parse_shape(input_shape))
        text = render_explanation(result, fmt)
    emit(text, None, debug)
