"""The Typer application object and the error boundary shared by every command module."""

from __future__ import annotations

import os

import typer

from wdctl import __version__

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


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wdctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print wdctl's version and exit."),
) -> None:
    if debug:
        os.environ["WDCTL_DEBUG"] = "1"
