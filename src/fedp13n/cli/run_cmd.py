"""``fedp13n run``: the personalization experiment from one command.

The options are generated from the fields of
:class:`~fedp13n.experiments.config.ExperimentConfig` (name, type, help, choices,
default): a setting is defined once, there. Precedence: built-in defaults (TFF's
example) < ``--config FILE`` (TOML) < command-line options. The resolved configuration
is saved in the run directory.
"""

from __future__ import annotations

import dataclasses
import inspect
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from fedp13n.cli.errors import fail, given_path, user_errors
from fedp13n.experiments.config import (
    PANELS,
    ConfigError,
    ExperimentConfig,
    StageConfig,
    StrategyConfig,
    base_type,
    field_flag,
)

_RUN = "Run"


def _flag(default: bool, decl: str, help_text: str) -> Any:
    shown = decl.split("/")[0 if default else -1].lstrip("-") if "/" in decl else None
    return typer.Option(
        default,
        decl,
        help=help_text + (f"  \\[default: {shown}]" if shown else ""),
        show_default=False,
        metavar="",
        rich_help_panel=_RUN,
    )


#: Options of the command itself (not settings of the experiment).
_RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "config_file": (
        # not Path: Path("./demo") is "demo", a shipped example's name; a list, so that a
        # second --config is refused (click keeps the last and drops the first silently)
        list[str] | None,
        typer.Option(
            None,
            "--config",
            metavar="FILE|NAME",
            help="TOML file with experiment settings (options override it), or the name of "
            "a shipped example (e.g. demo; see 'fedp13n examples').",
            rich_help_panel=_RUN,
        ),
    ),
    "output_dir": (
        str | None,  # not Path: Path("") is ".", and an empty --output-dir must be refused
        typer.Option(
            None,
            "--output-dir",
            help="Run directory.  \\[default: a new folder under runs/]",
            show_default=False,
            metavar="PATH",
            rich_help_panel=_RUN,
        ),
    ),
    "resume": (bool, _flag(False, "--resume", "Continue the run in --output-dir.")),
    "repeats": (
        int | None,
        typer.Option(
            None,
            "--repeats",
            metavar="N",
            help="Run N times, seeds seed..seed+N-1 (one folder each in --output-dir; the "
            "client split stays split_seed's), then print mean +- std over the seeds.  "
            "\\[default: one run]",
            show_default=False,
            rich_help_panel=_RUN,
        ),
    ),
    "report": (bool, _flag(True, "--report/--no-report", "Write the HTML report at the end.")),
    "progress": (bool, _flag(True, "--progress/--no-progress", "Show progress bars.")),
    "print_config": (
        bool,
        _flag(
            False,
            "--print-config",
            "Print the resolved configuration as TOML and exit (settings the run would "
            "ignore as '# note:' comments above it).",
        ),
    ),  # fmt: skip
}


def _one_config(files: list[str] | None) -> str | None:
    """The one ``--config`` given (None: none); a one-line error for several, which a run
    does not merge."""
    if not files:
        return None
    if len(files) > 1:
        fail(
            f"--config is given {len(files)} times ({', '.join(map(repr, files))}); a run "
            "reads one TOML file: merge them into one, or give one --config and the other "
            "settings as options."
        )
    return files[0]


def _print_config(config: ExperimentConfig) -> None:
    """``--print-config``: the config as TOML, after a ``# note:`` comment for each setting
    the run would say it ignores (:meth:`ExperimentConfig.unused_settings`), so the printed
    config does not look as if every value in it ran."""
    for note in config.unused_settings():
        typer.echo(f"# note: {note}")
    typer.echo(config.to_toml(), nl=False)


def config_options() -> list[tuple[dataclasses.Field, str, Any, Any]]:
    """(field, parameter name, annotation, typer.Option) for every setting."""
    out = []
    for f in dataclasses.fields(ExperimentConfig):
        meta = f.metadata
        tp = base_type(f)
        help_text = meta["help"]
        if meta.get("choices"):
            help_text += f" One of: {', '.join(meta['choices'])}."
        if meta.get("default_text"):
            help_text += f"  \\[default: {meta['default_text']}]"
        elif f.default is not dataclasses.MISSING and f.default is not None:
            shown = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
            help_text += f"  \\[default: {shown}]"
        flag = field_flag(f)
        if tp is bool:
            decls = [f"{flag}/{meta['negative_flag']}"] if meta.get("negative_flag") else [flag]
            annotation: Any = bool | None
        elif tp is list or getattr(tp, "__origin__", None) is list:
            decls, annotation = [flag], list[str] | None
        else:
            decls, annotation = [flag], tp | None
        option = typer.Option(
            None,
            *decls,
            help=help_text,
            show_default=False,
            rich_help_panel=meta["panel"],
            metavar="" if tp is bool else _metavar(tp, f.name),
        )
        out.append((f, f.name, annotation, option))
    return sorted(out, key=lambda o: PANELS.index(o[0].metadata["panel"]))


def _metavar(tp: Any, name: str) -> str:
    if name == "strategies":
        return "[NAME=]OPT[:LR]"
    if name == "stages":
        return "[NAME:]KEY=VALUE,..."
    return {int: "INT", float: "FLOAT"}.get(tp, "TEXT")


def resolve_config(
    config_file: str | Path | None,
    options: dict[str, Any],
    base: ExperimentConfig | None = None,
) -> ExperimentConfig:
    """Defaults (or ``base``: a resumed run's saved config) < TOML file < options given on
    the command line (those not None)."""
    if config_file is not None:
        from fedp13n.experiments.examples import config_path

        config = ExperimentConfig.from_toml(config_path(config_file))
    else:
        config = base if base is not None else ExperimentConfig()
    changes = {k: v for k, v in options.items() if v is not None}
    if "strategies" in changes:
        changes["strategies"] = [StrategyConfig.parse(s) for s in changes["strategies"]]
    if "stages" in changes:
        changes["stages"] = [StageConfig.parse(s, config) for s in changes["stages"]]
    config = config.replace(**changes)
    config.validate()
    return config


def run(**kwargs: Any) -> None:
    """Train a global model with FedAvg, then evaluate personalization strategies."""
    run_args = {k: kwargs.pop(k) for k in _RUN_OPTIONS}
    run_args["config_file"] = _one_config(run_args["config_file"])
    example = "the run directory (e.g. --output-dir runs/exp1)"
    output_dir = given_path(run_args["output_dir"], "--output-dir", example)
    if run_args["resume"] and output_dir is None:
        fail("--resume needs --output-dir: the run directory to continue.")
    if run_args["repeats"] is not None:
        run_repeated(run_args, kwargs, output_dir)
        return
    config = _run_config(run_args, kwargs, output_dir)
    if run_args["print_config"]:
        _print_config(config)
        return
    from fedp13n.experiments.p13n_experiment import default_run_dir, run_experiment
    from fedp13n.reporting.summary import print_run_summary

    run_dir = output_dir or default_run_dir("runs", config.dataset)
    typer.echo(f"run directory: {run_dir}")
    progress = run_args["progress"] and sys.stderr.isatty()
    try:
        result = run_experiment(config, run_dir, resume=run_args["resume"], progress=progress)
    except KeyboardInterrupt as e:
        interrupted(e, run_dir)
    except user_errors() as e:
        fail(_error_line(e, run_dir))
    print_run_summary(result.run_dir, summary=result.summary)
    if run_args["report"]:
        from fedp13n.reporting import write_report

        path = write_report(result.run_dir, summary=result.summary)
        typer.echo(f"report: {path}")
    typer.echo(f"results: {result.run_dir}")


def _run_config(
    run_args: dict[str, Any], options: dict[str, Any], out: Path | None
) -> ExperimentConfig:
    """The configuration of the run (with ``--resume``: the one saved in ``out`` <
    ``--config`` < options); a bad one: one line, exit 2."""
    from fedp13n.experiments.repeats import REPEATS_FILE
    from fedp13n.rundir import layout as rd

    saved = None
    try:
        if run_args["resume"]:
            if not (out / rd.CONFIG).is_file():
                if (out / REPEATS_FILE).is_file():
                    fail(
                        f"{out} holds repeats over seeds ({REPEATS_FILE}), not one run; "
                        "continue them with --repeats N --resume."
                    )
                fail(
                    f"nothing to resume in {out}: it has no {rd.CONFIG}; drop --resume "
                    "to start a new run there."
                )
            saved = ExperimentConfig.from_toml(out / rd.CONFIG)
        return resolve_config(run_args["config_file"], options, base=saved)
    except ConfigError as e:
        fail(str(e))


def _error_line(e: Exception, run_dir: Path) -> str:
    """The one line that says why the run failed: fedp13n's own message (a client task's
    first line), or for another file system error, which file of the run it hit."""
    from fedp13n.execution.base import ClientWorkError
    from fedp13n.rundir.integrity import NoSpaceError

    if isinstance(e, ClientWorkError):
        return str(e).splitlines()[0]
    if isinstance(e, OSError) and not isinstance(
        e, NoSpaceError | FileExistsError | FileNotFoundError
    ):  # the run directory unwritable, ... (a full disk: what was complete is kept)
        what = e.strerror or str(e)
        return f"cannot write the run directory {run_dir}: {what} ({e.filename or run_dir})."
    return str(e)


def run_repeated(run_args: dict[str, Any], options: dict[str, Any], out: Path | None) -> None:
    """``--repeats N``: the configuration over N seeds into ``out``, then the table of mean
    +- std over the seeds (:mod:`fedp13n.experiments.repeats`)."""
    from fedp13n.experiments.repeats import run_repeats, saved_config, seeds_of

    if run_args["repeats"] < 1:
        fail(f"--repeats must be at least 1 (the number of seeds), got {run_args['repeats']}.")
    if out is None:
        fail("--repeats needs --output-dir: the folder of the seeds' runs.")
    try:
        saved = saved_config(out, run_args["resume"])
        config = resolve_config(run_args["config_file"], options, base=saved)
        seeds_of(config, run_args["repeats"])
        if run_args["print_config"]:
            _print_config(config)
            return
        md, _ = run_repeats(
            config,
            out,
            run_args["repeats"],
            resume=run_args["resume"],
            progress=run_args["progress"] and sys.stderr.isatty(),
            log=typer.echo,
        )
    except KeyboardInterrupt:
        how = f"continue with: fedp13n run --output-dir {shlex.quote(str(out))} --repeats "
        typer.secho(f"interrupted; {how}{run_args['repeats']} --resume", err=True,
                    fg=typer.colors.YELLOW)  # fmt: skip
        raise typer.Exit(130) from None
    except user_errors() as e:
        fail(str(e).splitlines()[0])
    typer.echo(md.read_text())
    typer.echo(f"repeats: {md} (and {md.with_suffix('.json').name})")


def interrupted(e: KeyboardInterrupt, run_dir: Path) -> NoReturn:
    """Ctrl-C: one line saying how far the run got and how to go on; exit code 130."""
    from fedp13n.experiments.p13n_experiment import RunInterrupted
    from fedp13n.rundir import layout as rd

    if (run_dir / rd.CONFIG).is_file():
        how = f"continue with: fedp13n run --output-dir {shlex.quote(str(run_dir))} --resume"
    else:
        how = "nothing was written yet; rerun the same command"
    if not isinstance(e, RunInterrupted):
        what = "interrupted"
    elif e.round_num == 0:
        what = f"interrupted before round 1 of {e.total_rounds} finished"
    else:
        what = f"interrupted after round {e.round_num} of {e.total_rounds}"
    typer.secho(f"{what}; {how}", err=True, fg=typer.colors.YELLOW)
    raise typer.Exit(130)


def _signature() -> inspect.Signature:
    params = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
        for name, (ann, opt) in _RUN_OPTIONS.items()
    ]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
        for _, name, ann, opt in config_options()
    ]
    return inspect.Signature(params)


run.__signature__ = _signature()  # type: ignore[attr-defined]
run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}


def register(app: typer.Typer) -> None:
    app.command("run")(run)
