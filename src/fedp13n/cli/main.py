"""Entry point of the ``fedp13n`` command: one sub-application per concern."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import typer
from typer.core import TyperGroup

from fedp13n import __version__
from fedp13n.cli import data_cmd, examples_cmd, report_cmd, run_cmd, sweep_cmd
from fedp13n.cli.errors import fail

#: click's UsageError (a bad option value, an unknown option or command, a missing
#: argument): found through typer's public BadParameter, as typer vendors click in newer
#: versions (``typer._click``) and uses the ``click`` package in older ones.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except _UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare command: its help, as before
            raise
        message = " ".join(e.format_message().split())
        ctx = getattr(e, "ctx", None)
        fail(message + (f" (see '{ctx.command_path} --help')" if ctx is not None else ""))


class _OneLineErrors(TyperGroup):
    """Usage errors of every command (``--rounds abc``, ``--roundz 3``) as one ``error:``
    line and exit code 2, like every other user error, instead of click's usage lines and
    boxed panel. A subcommand's options are parsed inside its group's ``invoke``."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_OneLineErrors,
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
examples_cmd.register(app)


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
