"""``fedp13n report RUN_DIR`` and ``fedp13n compare RUN_DIR RUN_DIR...``.

User errors (missing directory, not a run directory, unreadable file) print one line
and exit with code 2, like the other commands; no traceback.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import typer

from fedp13n.cli.errors import fail, given_path
from fedp13n.reporting.summary import ReportError, ReportWarning


@contextlib.contextmanager
def _report_warnings() -> Iterator[None]:
    """What a written report leaves out (e.g. no FedAvg log): one ``warning:`` line each."""
    written = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReportWarning)
            yield
            written = True
    finally:
        for w in caught:  # no report (an error follows): nothing was left out of it
            if not issubclass(w.category, ReportWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            elif written:
                typer.secho(f"warning: {w.message}", err=True, fg=typer.colors.YELLOW)


def report(
    run_dir: str = typer.Argument(  # str, not Path: Path("") is "." (given_path)
        ..., help="A run directory written by 'fedp13n run'.", metavar="PATH"
    ),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Folder for report.html and the PNGs (default: RUN_DIR).",
        metavar="PATH",
    ),
    summary: bool = typer.Option(True, help="Also print the summary table."),
    open_browser: bool = typer.Option(
        False, "--open/--no-open", help="Open the report in the default browser."
    ),
) -> None:
    """Write a self-contained HTML report (images embedded) and its PNGs for one run."""
    from fedp13n.reporting.report import write_report
    from fedp13n.reporting.summary import print_run_summary

    path = given_path(run_dir, "the run directory", "the folder 'fedp13n run' wrote")
    out = given_path(output, "--output", "a folder (e.g. -o report) or leave -o out")
    then = (lambda: print_run_summary(path)) if summary else None
    _written("report", lambda: write_report(path, out), open_browser, then)


def compare(
    run_dirs: list[str] = typer.Argument(  # str, not Path: Path("") is "." (given_path)
        ..., help="Two or more run directories.", metavar="PATH..."
    ),
    output: str = typer.Option(
        "comparison",
        "--output",
        "-o",
        help="Folder for comparison.html and the PNGs.",
        metavar="PATH",
    ),
    open_browser: bool = typer.Option(
        False, "--open/--no-open", help="Open the comparison in the default browser."
    ),
) -> None:
    """Put several runs side by side: headline numbers, config differences, plots."""
    from fedp13n.reporting.compare import write_comparison

    paths = [given_path(d, "a run directory", "each run's folder") for d in run_dirs]
    out = given_path(output, "--output", "a folder (e.g. -o comparison)")
    _written("comparison", lambda: write_comparison(paths, out), open_browser)


def _written(
    what: str, write: Callable[[], Path], open_browser: bool, then: Callable | None = None
) -> None:
    """Run ``write``, then ``then`` (user errors: one line, exit 2); say where ``what`` is."""
    try:
        with _report_warnings():
            path = write()
        if then is not None:
            then()
    except (ReportError, OSError) as e:
        fail(str(e).splitlines()[0])
    typer.echo(f"{what}: {path}")
    if open_browser:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


def register(app: typer.Typer) -> None:
    """Add the ``report`` and ``compare`` commands to ``app``."""
    app.command("report")(report)
    app.command("compare")(compare)
