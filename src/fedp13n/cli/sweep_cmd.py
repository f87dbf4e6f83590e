"""``fedp13n sweep FILE``: a grid of runs from one TOML file, resumable, ending in Table 1."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import NoReturn

import typer

from fedp13n.cli.errors import fail, given_path, user_errors


def sweep(
    config_file: str = typer.Argument(  # not Path: Path("./x") is "x", an example's name
        ...,
        help="TOML: the settings of fedp13n run plus a sweep table with its grid (or a "
        "shipped example's name, e.g. table1_sample).",
    ),
    output_dir: str = typer.Option(  # str, not Path: Path("") is "." (given_path)
        ...,
        "--output-dir",
        help="Sweep directory (its runs go to runs/ inside it).",
        metavar="PATH",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the sweep in --output-dir (finished runs are kept).",
        metavar="",
    ),
    parallel: int = typer.Option(
        1, "--parallel", min=1, help="Runs at a time, each in its own worker process."
    ),
) -> None:
    """Run every combination of a sweep grid as a normal run, then tabulate them."""
    out = given_path(output_dir, "--output-dir", "the sweep directory (e.g. --output-dir runs/s1)")
    from fedp13n.experiments.examples import config_path
    from fedp13n.experiments.sweep import SweepConfig, run_sweep

    try:
        config = SweepConfig.from_toml(config_path(config_file, "sweep file"))
        table = run_sweep(config, out, resume=resume, parallel=parallel, log=typer.echo)
    except user_errors() as e:
        fail(str(e).splitlines()[0])
    except KeyboardInterrupt:
        interrupted_sweep(config_file, out)
    typer.echo(table.read_text())
    typer.echo(f"table: {table}")
    if (out / "comparison.html").is_file():  # a one-run sweep has nothing to compare
        typer.echo(f"comparison: {out / 'comparison.html'}")


def interrupted_sweep(config_file: str | Path, output_dir: Path) -> NoReturn:
    """Ctrl-C: one line saying how to go on (finished runs are kept, an interrupted one
    resumes from its last round); exit code 130."""
    from fedp13n.rundir.readers import SWEEP_FILE

    if (output_dir / SWEEP_FILE).is_file():
        how = (
            f"finished runs are kept; continue with: fedp13n sweep {shlex.quote(str(config_file))}"
            f" --output-dir {shlex.quote(str(output_dir))} --resume"
        )
    else:
        how = "nothing was written yet; rerun the same command"
    typer.secho(f"interrupted; {how}", err=True, fg=typer.colors.YELLOW)
    raise typer.Exit(130)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
