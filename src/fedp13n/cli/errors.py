"""How every command reports a user error: one red line on stderr and exit code 2."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def given_path(value: str | None, name: str, example: str) -> Path | None:
    """A folder or file option or argument as a Path (None stays None). Typed as ``str``
    in the command because ``Path("")`` is ``"."``: an empty value would silently mean the
    current folder, so it is refused (``name`` is empty; give ``example``), exit 2."""
    if value is None:
        return None
    if not value.strip():
        fail(f"{name} is empty; give {example}.")
    return Path(value)


def user_errors() -> tuple[type[Exception], ...]:
    """What a command reports as one ``error:`` line, not a traceback: a refused setting,
    bad data or files (fedp13n's ValueErrors: ConfigError, DataError, ReportError), a
    missing module, a failed round or client task, a file system error (imported when a
    command runs, so that ``fedp13n --help`` starts fast)."""
    from fedp13n.algorithms.loop import TrainingError
    from fedp13n.execution.base import ClientWorkError

    return (ValueError, ImportError, OSError, TrainingError, ClientWorkError)
