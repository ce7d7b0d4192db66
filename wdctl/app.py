"""The Typer application object and the error boundary shared by every command module."""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    name="wdctl",
    help=(
        "Shrink MarianMT translation models by Weight Distillation (Lin et al., ACL 2021), "
        "export them to ONNX, quantize them and benchmark them against the teacher."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    if debug:
        os.environ["WDCTL_DEBUG"] = "1"
