"""Entry point of the ``fedp13n`` command: one sub-application per concern."""

from __future__ import annotations

import warnings

import typer

from fedp13n import __version__
from fedp13n.cli import data_cmd, report_cmd, run_cmd, sweep_cmd

app = typer.Typer(
    name="fedp13n",
    help="Federated personalization: FedAvg global models, per-client personalization "
    "evaluation, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cmd.app, name="data")
run_cmd.register(app)
report_cmd.register(app)
sweep_cmd.register(app)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach a user as one ``warning:`` line, without source lines."""
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


warnings.showwarning = _one_line_warning


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedp13n {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version.",
        metavar="",
    ),
) -> None:
    """fedp13n command line."""


if __name__ == "__main__":  # pragma: no cover
    app()
