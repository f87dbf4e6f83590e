"""``fedp13n run``: the personalization experiment from one command.

Precedence of settings: built-in defaults (TFF's example) < ``--config FILE`` (TOML) <
command-line options. The resolved configuration is saved in the run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from fedp13n.cli.errors import fail
from fedp13n.data.validate import DataError
from fedp13n.experiments.config import ConfigError, ExperimentConfig, StrategyConfig

_P = "Personalization"
_F = "FedAvg"
_D = "Data"
_X = "Execution"


def run(
    config_file: Path | None = typer.Option(
        None, "--config", help="TOML file with experiment settings (options override it)."
    ),
    dataset: str | None = typer.Option(
        None, help="emnist | emnist-sqlite | leaf | synthetic [default: emnist]", rich_help_panel=_D
    ),
    data_dir: Path | None = typer.Option(
        None, help="Folder with TFF h5 files (or LEAF train/ test/).", rich_help_panel=_D
    ),
    cache_dir: Path | None = typer.Option(None, help="Dataset cache folder.", rich_help_panel=_D),
    only_digits: bool | None = typer.Option(
        None, "--only-digits/--all-classes", help="EMNIST-10 instead of 62.", rich_help_panel=_D
    ),
    synthetic_clients: int | None = typer.Option(
        None, help="Writers of the synthetic dataset [default: 160].", rich_help_panel=_D
    ),
    num_train_clients: int | None = typer.Option(
        None,
        help="FedAvg clients [default: 2500 of 3400, same share of fewer].",
        rich_help_panel=_D,
    ),
    num_p13n_clients: int | None = typer.Option(
        None, help="Personalization clients [default: the rest].", rich_help_panel=_D
    ),
    split_seed: int | None = typer.Option(None, help="Client split seed [42].", rich_help_panel=_D),
    model: str | None = typer.Option(
        None, help="conv_dropout | fedavg_cnn [conv_dropout].", rich_help_panel=_F
    ),
    rounds: int | None = typer.Option(None, help="FedAvg rounds [5].", rich_help_panel=_F),
    clients_per_round: int | None = typer.Option(None, help="[10]", rich_help_panel=_F),
    client_lr: float | None = typer.Option(None, help="Client SGD lr [0.02].", rich_help_panel=_F),
    server_lr: float | None = typer.Option(None, help="Server SGD lr [1.0].", rich_help_panel=_F),
    server_momentum: float | None = typer.Option(None, help="[0.9]", rich_help_panel=_F),
    local_epochs: int | None = typer.Option(None, help="[10]", rich_help_panel=_F),
    batch_size: int | None = typer.Option(None, help="[20]", rich_help_panel=_F),
    eval_every: int | None = typer.Option(
        None, help="Global test accuracy every N rounds [0 = at the end].", rich_help_panel=_F
    ),
    checkpoint_every: int | None = typer.Option(None, help="[10]", rich_help_panel=_F),
    strategy: list[str] | None = typer.Option(
        None,
        help="[NAME=]OPTIMIZER:LR, repeatable [sgd:0.02 adam:0.002].",
        rich_help_panel=_P,
    ),
    p13n_epochs: int | None = typer.Option(
        None, help="Fine-tuning epochs [3].", rich_help_panel=_P
    ),
    p13n_batch_size: int | None = typer.Option(None, help="[20]", rich_help_panel=_P),
    num_eval_clients: int | None = typer.Option(
        None, help="Personalization clients evaluated [50].", rich_help_panel=_P
    ),
    max_num_samples: int | None = typer.Option(None, help="[100]", rich_help_panel=_P),
    seed: int | None = typer.Option(None, help="Experiment seed [0].", rich_help_panel=_X),
    executor: str | None = typer.Option(
        None, help="auto | in-process | processes | ray [auto].", rich_help_panel=_X
    ),
    workers: int | None = typer.Option(None, help="Worker processes.", rich_help_panel=_X),
    ray_address: str | None = typer.Option(
        None, help="Ray cluster address ('auto', 'ray://host:10001').", rich_help_panel=_X
    ),
    output_dir: Path | None = typer.Option(None, help="Run directory [a new folder under runs/]."),
    resume: bool = typer.Option(False, help="Continue the run in --output-dir."),
    report: bool = typer.Option(True, help="Write the HTML report at the end."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train a global model with FedAvg, then evaluate personalization strategies."""
    from fedp13n.experiments.p13n_experiment import default_run_dir, run_experiment

    try:
        config = ExperimentConfig.from_toml(config_file) if config_file else ExperimentConfig()
        overrides = {
            "dataset": dataset,
            "data_dir": str(data_dir) if data_dir else None,
            "cache_dir": str(cache_dir) if cache_dir else None,
            "only_digits": only_digits,
            "synthetic_clients": synthetic_clients,
            "num_train_clients": num_train_clients,
            "num_p13n_clients": num_p13n_clients,
            "split_seed": split_seed,
            "model": model,
            "rounds": rounds,
            "clients_per_round": clients_per_round,
            "client_learning_rate": client_lr,
            "server_learning_rate": server_lr,
            "server_momentum": server_momentum,
            "local_epochs": local_epochs,
            "batch_size": batch_size,
            "eval_every": eval_every,
            "checkpoint_every": checkpoint_every,
            "num_eval_clients": num_eval_clients,
            "max_num_samples": max_num_samples,
            "seed": seed,
            "executor": executor,
            "workers": workers,
            "ray_address": ray_address,
        }
        config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
        strategies = [StrategyConfig.parse(s) for s in strategy] if strategy else config.strategies
        for s in strategies:
            if p13n_epochs is not None:
                s.epochs = p13n_epochs
            if p13n_batch_size is not None:
                s.batch_size = p13n_batch_size
        config = config.replace(strategies=strategies)
        config.validate()
    except ConfigError as e:
        fail(str(e))

    if resume and output_dir is None:
        fail("--resume needs --output-dir: the run directory to continue.")
    run_dir = output_dir or default_run_dir("runs", config.dataset)
    typer.echo(f"run directory: {run_dir}")
    try:
        result = run_experiment(
            config, run_dir, resume=resume, progress=progress and sys.stderr.isatty()
        )
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as e:
        fail(str(e))
    from fedp13n.reporting.summary import print_run_summary

    print_run_summary(result.run_dir)
    if report:
        from fedp13n.reporting import write_report

        path = write_report(result.run_dir)
        typer.echo(f"report: {path}")
    typer.echo(f"results: {result.run_dir}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
