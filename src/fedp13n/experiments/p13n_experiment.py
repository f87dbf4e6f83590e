"""The personalization experiment end to end: data -> FedAvg -> personalization -> files.

This is TFF's ``emnist_p13n_main.py`` (Jiang et al. 2019, "Improving Federated Learning
Personalization via Model Agnostic Meta Learning") as a resumable run: every FedAvg round
is appended to ``fedavg_metrics.csv`` as soon as it ends, the server state is
checkpointed every ``checkpoint_every`` rounds, and ``resume=True`` continues from the
last checkpoint with exactly the numbers an uninterrupted run would give (every random
choice derives from the seed, the round and the client id, never from the history of the
process).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from fedp13n.data import ClientData, ClientDataset
from fedp13n.experiments.config import ExperimentConfig, StrategyConfig, resolve_split
from fedp13n.rundir import layout as rd
from fedp13n.utils.seeding import derive_rng

Log = Callable[[str], None]


@dataclass
class ExperimentResult:
    """What a run produced; every field is also in a file of ``run_dir``."""

    run_dir: Path
    config: ExperimentConfig
    round_metrics: list[dict[str, Any]]
    personalization: OrderedDict
    summary: dict[str, Any] = field(default_factory=dict)


def default_run_dir(root: str | Path = "runs", dataset: str = "run") -> Path:
    """A new, unique folder under ``root``: ``runs/<dataset>-YYYYmmdd-HHMMSS``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{dataset}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


# -- building blocks ---------------------------------------------------------------------------
def model_fn_for(config: ExperimentConfig) -> Callable[[], torch.nn.Module]:
    """A picklable no-argument model builder (workers rebuild the model from it)."""
    from fedp13n.models import emnist_conv_dropout, fedavg_cnn

    num_classes = 10 if config.only_digits else 62
    builder = {"conv_dropout": emnist_conv_dropout, "fedavg_cnn": fedavg_cnn}[config.model]
    return functools.partial(builder, num_classes=num_classes)


def optimizer_fn(name: str, learning_rate: float, momentum: float = 0.0):
    """A picklable ``params -> torch.optim.Optimizer``."""
    if name == "sgd":
        return functools.partial(torch.optim.SGD, lr=learning_rate, momentum=momentum)
    if name == "adam":
        return functools.partial(torch.optim.Adam, lr=learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'.")


def personalize_fn_dict_for(strategies: list[StrategyConfig]) -> OrderedDict:
    """TFF's ``personalize_fn_dict``: strategy name -> no-argument strategy builder."""
    from fedp13n.personalization import build_personalize_fn

    return OrderedDict(
        (
            s.name,
            functools.partial(
                build_personalize_fn,
                optimizer_fn=optimizer_fn(s.optimizer, s.learning_rate),
                batch_size=s.batch_size,
                num_epochs=s.epochs,
                num_epochs_per_eval=s.epochs_per_eval,
            ),
        )
        for s in strategies
    )


def load_data(config: ExperimentConfig, *, progress: bool = True) -> tuple[ClientData, ClientData]:
    from fedp13n.data.datasets import load_dataset

    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        cache_dir=config.cache_dir,
        only_digits=config.only_digits,
        num_clients=config.synthetic_clients if config.dataset == "synthetic" else None,
        seed=config.seed,
        progress=progress,
    )


# -- files ---------------------------------------------------------------------------------------
class _MetricsCsv:
    """Append-only per-round CSV, flushed every row (nothing lost on a crash)."""

    def __init__(self, path: Path, keep_until_round: int) -> None:
        self.path = path
        rows = []
        if path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["round"]) <= keep_until_round]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=rd.FEDAVG_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        self.rows = rows

    def append(self, row: Mapping[str, Any]) -> None:
        clean = {k: ("" if row.get(k) is None else row.get(k)) for k in rd.FEDAVG_COLUMNS}
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=rd.FEDAVG_COLUMNS).writerow(clean)
        self.rows.append(clean)


def per_client_rows(result: Mapping[str, Any], train_sizes: Mapping[str, int]) -> list[dict]:
    """Flatten the nested personalization result into PER_CLIENT rows."""
    ids = result["client_ids"]
    base = result["baseline_metrics"]
    rows = []
    for strategy, metrics in result.items():
        if strategy in ("client_ids", "baseline_metrics") or not isinstance(metrics, Mapping):
            continue
        for epoch, m in metrics.items():
            if not (isinstance(m, Mapping) and "accuracy" in m):
                continue
            for i, cid in enumerate(ids):
                rows.append(
                    {
                        "client_id": cid,
                        "num_train_examples": train_sizes[cid],
                        "num_test_examples": m["num_test_examples"][i],
                        "strategy": strategy,
                        "epoch": epoch,
                        "loss": m["loss"][i],
                        "accuracy": m["accuracy"][i],
                        "baseline_loss": base["loss"][i],
                        "baseline_accuracy": base["accuracy"][i],
                    }
                )
    return rows


def _write_csv(path: Path, columns, rows) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# -- the run ------------------------------------------------------------------------------------
def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
) -> ExperimentResult:
    """Run (or resume) the whole experiment into ``run_dir``; see the module docstring."""
    from fedp13n.algorithms import (
        ClientSelection,
        build_weighted_fed_avg,
        latest_checkpoint,
        load_checkpoint,
        sample_clients,
        save_checkpoint,
    )
    from fedp13n.data.split import split_clients
    from fedp13n.execution.factory import make_executor
    from fedp13n.personalization import build_personalization_eval, evaluate_fn

    config.validate()
    run_dir = Path(run_dir)
    results = (rd.FEDAVG_METRICS, rd.CHECKPOINTS, rd.GLOBAL_WEIGHTS, rd.PERSONALIZATION)
    if not resume and any((run_dir / name).exists() for name in results):
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another "
            "--output-dir."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and (run_dir / rd.CONFIG).exists():
        saved = ExperimentConfig.from_toml(run_dir / rd.CONFIG)
        if saved != config:
            log(f"resuming with the configuration saved in {run_dir / rd.CONFIG}")
            config = saved
    _write_text(run_dir / rd.CONFIG, config.to_toml())

    t0 = time.perf_counter()
    train, test = load_data(config, progress=progress)
    n_train, n_p13n = resolve_split(config, len(train))
    train_ids, p13n_ids = split_clients(
        list(train.client_ids), n_train, n_p13n, seed=config.split_seed
    )
    log(
        f"data: {config.dataset}, {len(train)} clients, {train.num_examples} train / "
        f"{test.num_examples} test examples; split {len(train_ids)} FedAvg / "
        f"{len(p13n_ids)} personalization clients ({time.perf_counter() - t0:.1f} s)"
    )

    model_fn = model_fn_for(config)
    executor = make_executor(
        config.executor, num_workers=config.workers, ray_address=config.ray_address
    )
    with executor:
        log(f"executor: {executor!r}")
        process = build_weighted_fed_avg(
            model_fn,
            client_optimizer_fn=optimizer_fn("sgd", config.client_learning_rate),
            server_optimizer_fn=optimizer_fn(
                "sgd", config.server_learning_rate, config.server_momentum
            ),
            client_epochs=config.local_epochs,
            batch_size=config.batch_size,
            seed=config.seed,
            executor=executor,
        )

        ckpt = latest_checkpoint(run_dir) if resume else None
        if ckpt is not None:
            state = load_checkpoint(ckpt)
            log(f"resumed from {ckpt} (round {state.round_num})")
        else:
            state = process.initialize()
        metrics_csv = _MetricsCsv(run_dir / rd.FEDAVG_METRICS, keep_until_round=state.round_num)

        global_eval_ids = train_ids[: config.num_global_eval_clients]
        held_out = test.subset(global_eval_ids)
        global_eval_data = ClientDataset(held_out.x, held_out.y)

        def global_eval(weights) -> dict[str, float]:
            model = model_fn()
            model.load_state_dict(weights)
            return dict(evaluate_fn(model, global_eval_data))

        with _progress(progress, total=config.rounds, done=state.round_num) as bar:
            while state.round_num < config.rounds:
                round_num = state.round_num + 1
                ids = sample_clients(
                    train_ids,
                    min(config.clients_per_round, len(train_ids)),
                    seed=config.seed,
                    round_num=round_num,
                )
                state, m = process.next(state, ClientSelection(train, ids))
                row = m.as_dict()
                last = round_num == config.rounds
                if last or (config.eval_every and round_num % config.eval_every == 0):
                    ev = global_eval(process.get_model_weights(state))
                    row["eval_loss"], row["eval_accuracy"] = ev["loss"], ev["accuracy"]
                metrics_csv.append(row)
                if last or (config.checkpoint_every and round_num % config.checkpoint_every == 0):
                    save_checkpoint(rd.checkpoint_path(run_dir, round_num), state)
                bar.advance(row)
                if not progress:  # logs and pipes get one line per round instead of a bar
                    log(f"round {round_num}/{config.rounds}: {_round_info(row)}")

        weights = process.get_model_weights(state)
        torch.save(weights, run_dir / rd.GLOBAL_WEIGHTS)
        final = metrics_csv.rows[-1] if metrics_csv.rows else {}
        if final.get("eval_accuracy") not in (None, ""):
            log(
                f"global model after {config.rounds} rounds: accuracy "
                f"{float(final['eval_accuracy']):.4f} on the test data of "
                f"{len(global_eval_ids)} training clients"
            )

        # -- personalization -------------------------------------------------------------------
        rng = derive_rng(config.seed, "p13n-eval-clients")
        chosen = rng.choice(
            len(p13n_ids), size=min(config.num_eval_clients, len(p13n_ids)), replace=False
        )
        eval_ids = [p13n_ids[i] for i in chosen]
        client_inputs = [
            OrderedDict(
                client_id=c, train_data=train.create_dataset(c), test_data=test.create_dataset(c)
            )
            for c in eval_ids
        ]
        log(
            f"personalization: {len(eval_ids)} clients, strategies "
            + ", ".join(f"{s.name} ({s.optimizer} lr {s.learning_rate})" for s in config.strategies)
        )
        t1 = time.perf_counter()
        p13n_eval = build_personalization_eval(
            model_fn,
            personalize_fn_dict_for(config.strategies),
            evaluate_fn,
            max_num_samples=config.max_num_samples,
            seed=config.seed,
            executor=executor,
        )
        with _status(progress, f"personalizing {len(client_inputs)} clients"):
            result = p13n_eval(weights, client_inputs)
        p13n_seconds = time.perf_counter() - t1

    result_json = result.to_dict()
    _write_text(run_dir / rd.PERSONALIZATION, json.dumps(result_json, indent=1))
    train_sizes = {c: train.size(c) for c in result_json["client_ids"]}
    rows = per_client_rows(result_json, train_sizes)
    _write_csv(run_dir / rd.PER_CLIENT, rd.PER_CLIENT_COLUMNS, rows)
    from fedp13n.reporting import summarize_run, write_summary_json

    summary = summarize_run(run_dir)
    write_summary_json(run_dir, summary)
    log(
        f"personalization took {p13n_seconds:.1f} s "
        f"({len(result_json['client_ids']) / max(p13n_seconds, 1e-9):.2f} clients/s)"
    )
    return ExperimentResult(run_dir, config, metrics_csv.rows, result, summary.to_dict())


def _round_info(row: Mapping[str, Any]) -> str:
    info = (
        f"loss {float(row['loss']):.3f} acc {float(row['accuracy']):.3f} "
        f"{float(row['examples_per_second']):.0f} ex/s"
    )
    if row.get("eval_accuracy") not in (None, ""):
        info += f", global test acc {float(row['eval_accuracy']):.3f}"
    return info


@contextlib.contextmanager
def _status(enabled: bool, message: str) -> Iterator[None]:
    """A spinner with elapsed time while a long step without rounds runs."""
    if not enabled:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


class _progress:
    """A rich progress bar over FedAvg rounds showing loss, accuracy and examples/s."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self) -> _progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("FedAvg"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._p.__enter__()
            self._task = self._p.add_task("rounds", total=self.total, completed=self.done, info="")
        return self

    def advance(self, row: Mapping[str, Any]) -> None:
        if self.enabled:
            self._p.update(self._task, advance=1, info=_round_info(row))

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._p.__exit__(*exc)
