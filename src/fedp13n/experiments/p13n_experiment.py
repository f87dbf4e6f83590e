"""The personalization experiment end to end: data -> training stages -> personalization -> files.

This is TFF's ``emnist_p13n_main.py`` (Jiang et al. 2019, "Improving Federated Learning
Personalization via Model Agnostic Meta Learning") as a resumable :class:`Run` of named
steps, each a method:

1. :meth:`Run.prepare_data`: load the dataset and split the clients (TFF's split);
2. :meth:`Run.train_global_model`: the training stages, each a FedAvg-style process run
   by the shared round loop (:func:`fedp13n.algorithms.loop.run_rounds`) with callbacks
   that measure the global model (and the personalization curve), append every round to
   ``fedavg_metrics.csv`` and checkpoint the server state;
3. :meth:`Run.evaluate_personalization`: TFF's ``build_personalization_eval`` on sampled
   personalization clients, after :meth:`Run.tune_strategies` on the validation clients;
4. :meth:`Run.write_results`: ``personalization.json``, ``per_client.csv``,
   ``summary.json``; :meth:`Run.report`.

``resume=True`` continues from the last checkpoint with exactly the numbers an
uninterrupted run would give (every random choice derives from the seed, the round and
the client id, never from the history of the process), across stage boundaries too.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from fedp13n.algorithms.loop import Callback
from fedp13n.data.validate import DataError
from fedp13n.experiments.callbacks import (
    Checkpointer,
    ClientProgress,
    CommitClientState,
    Evaluation,
    LogLines,
    MetricsCsv,
    ProgressBar,
    TensorBoardLogger,
)
from fedp13n.experiments.config import (
    METHOD_SETTINGS,
    ConfigError,
    ExperimentConfig,
    StageConfig,
)
from fedp13n.reporting.result_report import per_client_rows
from fedp13n.reporting.summary import left_out_note
from fedp13n.rundir import layout as rd
from fedp13n.rundir.integrity import config_edited, config_text_with_digest, writing
from fedp13n.rundir.lock import run_dir_lock
from fedp13n.utils.device import Compute
from fedp13n.utils.fs import atomic_write, atomic_writer, remove_stale_temporaries, write_csv
from fedp13n.utils.imports import resolve_import_path
from fedp13n.utils.seeding import derive_rng

Log = Callable[[str], None]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; every round it finished is checkpointed (``--resume`` goes on
    from ``round_num``, the last of them, of ``total_rounds``)."""

    def __init__(self, run_dir: Path, round_num: int, total_rounds: int) -> None:
        super().__init__(f"interrupted after round {round_num} of {total_rounds}")
        self.run_dir, self.round_num, self.total_rounds = run_dir, round_num, total_rounds


@dataclass
class ExperimentResult:
    """What a run produced; every field is also in a file of ``run_dir``."""

    run_dir: Path
    config: ExperimentConfig
    round_metrics: list[dict[str, Any]]
    personalization: OrderedDict
    summary: Any = None  # fedp13n.reporting.Summary, computed once


@dataclass
class ExperimentData:
    """The loaded federated data and the client split."""

    train: Any  # ClientData
    test: Any  # ClientData
    train_ids: list[str]
    p13n_ids: list[str]  # the clients reported on
    val_ids: list[str] = field(default_factory=list)  # tuned settings are chosen on these


def resolve_compute(config: ExperimentConfig) -> Compute:
    """The device, precision and determinism a config asks for, checked once where the
    run starts (a one-line ConfigError for a device this machine lacks or a precision it
    cannot use); :meth:`Run.start_engine` adds the engine."""
    try:
        return Compute.resolve(config.device, config.precision, config.deterministic)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def default_run_dir(root: str | Path = "runs", dataset: str = "run") -> Path:
    """A new, unique folder under ``root``: ``runs/<dataset>-YYYYmmdd-HHMMSS`` (a
    ``module:function`` dataset as ``module-function``)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = "-".join(p for p in re.split(r"[^A-Za-z0-9_.-]+", dataset) if p) or "run"
    base = Path(root) / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


# -- building blocks ---------------------------------------------------------------------------
def model_fn_for(config: ExperimentConfig) -> Callable[[], Any]:
    """A picklable no-argument model builder (workers rebuild the model from it), for
    ``num_classes``: the task's for its own data, else the config's (which
    :meth:`Run.prepare_data` fills in from the labels of one's own data)."""
    from fedp13n.tasks.build import call_with_settings, model_builder
    from fedp13n.tasks.registry import get_task

    classes = config.num_classes
    spec = get_task(config.task)
    if not config.own_data:
        fn = resolve_import_path(spec.num_classes, f"task {spec.name!r} num_classes")
        classes = call_with_settings(fn, settings=task_settings(config))
    try:  # a config not validated yet leaves model unset: the task's first model
        return model_builder(config.model or spec.models[0], classes)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def task_settings(config: ExperimentConfig, progress: bool = False) -> dict[str, Any]:
    """The settings a task's loader, notice and num_classes may take
    (:data:`fedp13n.tasks.build.SETTINGS`)."""
    from fedp13n.tasks.build import SETTINGS

    return {**{k: getattr(config, k) for k in SETTINGS if k != "progress"}, "progress": progress}


def build_stage_process(
    config: ExperimentConfig,
    stage: StageConfig,
    executor: Any,
    compute: Compute,
    client_state: Any = None,
) -> Any:
    """The training process of one stage: weighted FedAvg with the stage's optimizers (a
    method that keeps state per client, e.g. FedPer, keeps it in ``client_state``), or
    for a centralized stage SGD (the client optimizer) on the pooled training examples."""
    from fedp13n.algorithms import build_weighted_fed_avg
    from fedp13n.utils.optimizers import make_optimizer_fn

    # the configuration's momentum is SGD's (adam ignores it; the server's default is 0.9)
    client = make_optimizer_fn(
        stage.client_optimizer,
        stage.client_learning_rate,
        momentum=stage.client_momentum if stage.client_optimizer == "sgd" else 0.0,
    )
    loss = config.task_loss()
    if stage.resolved_kind == "centralized":
        from fedp13n.algorithms.centralized import build_centralized

        return build_centralized(
            model_fn_for(config),
            client,
            loss_fn=loss,
            metrics_fn=loss.accuracy,
            epochs=stage.local_epochs,
            batch_size=stage.batch_size,
            seed=config.seed,
            max_steps=stage.local_steps,
            compute=compute.without_engine(),
        )
    server = make_optimizer_fn(
        stage.server_optimizer,
        stage.server_learning_rate,
        momentum=stage.server_momentum if stage.server_optimizer == "sgd" else 0.0,
        beta1=stage.server_beta1,
        beta2=stage.server_beta2,
        epsilon=stage.server_epsilon,
    )
    extra = {key: getattr(stage, key) for key in METHOD_SETTINGS.get(stage.method, ())}
    if stage.keeps_state:
        extra.update(personal_layers=stage.personal_layers, client_state=client_state)
    return build_weighted_fed_avg(
        model_fn_for(config),
        client_optimizer_fn=client,
        server_optimizer_fn=server,
        loss_fn=loss,
        metrics_fn=loss.accuracy,
        client_epochs=stage.local_epochs,
        batch_size=stage.batch_size,
        seed=config.seed,
        executor=executor,
        compute=compute,
        client_pipeline=stage.client_pipeline,
        max_steps=stage.local_steps,
        proximal_mu=stage.proximal_mu,
        method=stage.method,
        **extra,
    )


def _check_global_eval_data(data: ExperimentData, n: int) -> None:
    """The test data that measures the global model (the first ``n`` FedAvg clients',
    :meth:`Run.evaluate_global`) has examples: else its loss is 0/0, which would read as a
    model that blew up, rounds later."""
    ids = data.train_ids[:n]
    if sum(data.test.size(c) for c in ids) == 0:
        raise DataError(
            f"the {len(ids)} FedAvg client(s) whose test data measure the global model "
            f"(num_global_eval_clients = {n}) have no test examples; raise "
            "num_global_eval_clients, or give those clients test data."
        )


def _check_measured(ids: Sequence[str], data: ExperimentData, what: str, setting: str) -> None:
    """Some of ``ids`` have test examples: a client without any is left out of the means
    (said when it happens), but if all are, there is no mean to report or tune on."""
    if ids and all(data.test.size(c) == 0 for c in ids):
        who = f"the {len(ids)} {what} have" if len(ids) > 1 else f"the only one of the {what} has"
        raise DataError(
            f"{who} no test examples, so there is no accuracy to measure on them; raise "
            f"{setting}, or give those clients test data."
        )


def _centralized_note(stage: StageConfig, data: ExperimentData) -> str:
    """The log line that says what a centralized stage trains on (and what it ignores)."""
    n = int(sum(data.train.size(c) for c in data.train_ids))
    per_round = (
        f"at most {stage.local_steps} batches" if stage.local_steps is not None
        else f"{stage.local_epochs} shuffled pass{'es' if stage.local_epochs > 1 else ''}"
    )  # fmt: skip
    return (
        f"stage {stage.name!r} is centralized: {stage.client_optimizer} lr "
        f"{stage.client_learning_rate} on the pooled {n} examples of all "
        f"{len(data.train_ids)} FedAvg clients, {per_round} of batch {stage.batch_size} per "
        "round (clients_per_round, client_pipeline and the server settings do not apply)"
        + (
            f"; proximal_mu = {stage.proximal_mu} is ignored (no global model to pull to)"
            if stage.proximal_mu
            else ""
        )  # fmt: skip
    )


# -- the run --------------------------------------------------------------------------------------
def stage_bounds(stages: list[StageConfig]) -> list[tuple[StageConfig, int, int]]:
    """Each stage with its first round - 1 and its last round, counted over all stages."""
    ends = itertools.accumulate(s.rounds for s in stages)
    return [(s, end - s.rounds, end) for s, end in zip(stages, ends, strict=True)]


class Run:
    """One run of the experiment into ``run_dir``: the context its steps share (the
    config, the run directory, the data, the executor, the compute, progress and the
    log) and the steps as methods, which :meth:`execute` runs in order. The settings
    were checked where the config loaded and where the data's size became known
    (``ExperimentConfig.validate_against``); the steps trust them."""

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        *,
        resume: bool,
        progress: bool,
        log: Log,
        compute: Compute | None = None,
    ) -> None:
        self.config, self.run_dir = config, run_dir
        self.resume, self.progress, self.log = resume, progress, log
        self.data: ExperimentData  # set by prepare_data
        #: resolved once, where the run starts; execute adds the engine (start_engine)
        self.compute = compute if compute is not None else resolve_compute(config)
        self.executor: Any = None  # opened by execute for the training and evaluations
        #: the per-client state of a stateful method (FedPer), in client_state/ (None: none)
        self.client_state: Any = None
        self.tensorboard: TensorBoardLogger | None = None

    def execute(self) -> ExperimentResult:
        """Every step, in order (:func:`run_experiment` holds the run directory's lock)."""
        _open_run_dir(self.config, self.run_dir, resume=self.resume, log=self.log)
        self.prepare_data()
        for note in self.config.unused_settings():  # said, as settings a stage ignores are
            self.log(note)
        self.check_model_fits_data()
        self.start_engine()
        check_strategies_fit_model(self.config)
        if self.config.tensorboard:  # one subfolder per run: a shared folder does not mix runs
            self.tensorboard = TensorBoardLogger(self.config.tensorboard, self.run_dir.name)
        try:
            self.executor = self._make_executor()
            with self.executor:
                self.log(f"executor: {self.executor!r}")
                with writing(self.run_dir / rd.FEDAVG_METRICS):  # checkpoints name themselves
                    weights, rows = self.train_global_model()
                self.save_global_weights(weights)
                result, tuning = self.evaluate_personalization(weights)
                own_state = self.evaluate_own_state(weights)
            summary = self.write_results(result, tuning, own_state)
            self.report(summary)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
        return ExperimentResult(self.run_dir, self.config, rows, result, summary)

    def start_engine(self) -> None:
        """Deterministic kernels on a GPU (before CUDA starts) and the multi-client engine
        the config asks for, on the run's device in its precision (said in the log)."""
        from fedp13n.utils.device import set_deterministic

        config, compute = self.config, self.compute
        where = f"{compute.device} ({compute.precision})"
        if compute.torch_device.type == "cuda":
            set_deterministic(compute.deterministic)
        if config.engine == "on" or (config.engine == "auto" and compute.device != "cpu"):
            from fedp13n.engine import MultiClientEngine

            engine = MultiClientEngine(
                model_fn_for(config), compute=compute, max_clients=config.engine_clients
            )
            self.compute = replace(compute, engine=engine)
            self.log(f"engine: up to {config.engine_clients} clients at once on {where}")
        else:
            if compute.device != "cpu":
                self.log(f"engine off: client work runs one client per task on {where}")
            if (
                config.engine_clients
                != ExperimentConfig.__dataclass_fields__["engine_clients"].default
            ):
                self.log(
                    f"engine_clients = {config.engine_clients} applies to the multi-client "
                    f"engine only: ignored (the engine is off here; set --engine on to use it)"
                )
        if not config.deterministic and compute.torch_device.type != "cuda":
            self.log(
                "deterministic = false (--nondeterministic) switches CUDA kernels only: "
                f"ignored on {compute.device}"
            )
        if config.workers_per_gpu != 1 and compute.torch_device.type != "cuda":
            self.log(
                f"workers_per_gpu = {config.workers_per_gpu} applies to CUDA devices only: "
                f"ignored on {compute.device}"
            )

    def _make_executor(self) -> Any:
        from fedp13n.execution.factory import make_executor
        from fedp13n.utils.device import cuda_indices

        config = self.config
        try:
            return make_executor(
                config.executor,
                num_workers=config.workers,
                ray_address=config.ray_address,
                task_timeout=config.task_timeout,
                max_retries=config.max_retries,
                gpus=cuda_indices(self.compute.device) or None,  # pinned workers on CUDA
                workers_per_gpu=config.workers_per_gpu,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    # -- data ---------------------------------------------------------------------------------
    def prepare_data(self) -> ExperimentData:
        """Load the dataset, split its clients into FedAvg, validation and personalization
        clients (TFF's split; the settings that depend on the number of clients checked
        here, once: ``ExperimentConfig.validate_against``) and write it to ``split.json``."""
        from fedp13n.data.split import split_clients

        config = self.config
        t0 = time.perf_counter()
        train, test = self._load_data()
        n_train, n_p13n = config.validate_against(len(train))  # checked here, once
        train_ids, p13n_ids = split_clients(
            list(train.client_ids), n_train, n_p13n, seed=config.split_seed
        )
        n_val = config.num_val_clients
        data = ExperimentData(train, test, train_ids, p13n_ids[n_val:], p13n_ids[:n_val])
        _check_global_eval_data(data, config.num_global_eval_clients)
        _check_measured(data.val_ids, data, "validation clients", "num_val_clients")
        _check_measured(
            eval_client_ids(config, data), data, "personalization clients evaluated",
            "num_eval_clients (or num_p13n_clients)",
        )  # fmt: skip
        self.log(
            f"data: {config.dataset}, {len(train)} clients, {train.num_examples} train / "
            f"{test.num_examples} test examples; split {len(train_ids)} FedAvg / "
            + (f"{n_val} validation / " if n_val else "")
            + f"{len(data.p13n_ids)} personalization clients "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        split = {"fedavg": train_ids, "validation": data.val_ids, "personalization": data.p13n_ids}
        _write_json(self.run_dir / rd.SPLIT, split)
        self.data = data
        return data

    def _load_data(self) -> tuple[Any, Any]:
        """The task's data (its notice first), or one's own (``dataset = "module:function"``,
        loaded afresh: not cached); for one's own, ``num_classes`` unset is filled in from
        the labels."""
        from fedp13n.tasks.build import (
            call_with_settings,
            infer_num_classes,
            load_task_data,
        )
        from fedp13n.tasks.registry import get_task

        config, spec = self.config, get_task(self.config.task)
        settings = task_settings(config, self.progress)
        if spec.notice is not None and not config.own_data:
            notice_fn = resolve_import_path(spec.notice, f"task {spec.name!r} notice")
            notice = call_with_settings(notice_fn, config.dataset, settings=settings)
            if notice is not None:
                self.log(notice)
        train, test = load_task_data(spec, config.dataset, settings)
        if config.own_data and config.num_classes is None:
            classes = infer_num_classes(train, test, f"dataset {config.dataset!r}")
            if classes is not None:
                self.config = config.replace(num_classes=classes)
                self.log(f"num_classes: {classes} (the largest label + 1)")
        elif config.own_data and "num_classes" not in getattr(model_fn_for(config), "keywords", {}):
            self.log(
                f"num_classes = {config.num_classes} is ignored: model {config.model!r} does "
                "not take num_classes (it sets its own outputs)"
            )
        return train, test

    def check_model_fits_data(self) -> None:
        """The model and the loss on two training examples, before any training: a model
        that cannot be built or whose output does not fit the labels is a one-line
        ``ConfigError`` now."""
        from fedp13n.tasks.build import check_model_fits

        try:
            check_model_fits(
                model_fn_for(self.config), self.config.task_loss(), self.data.train,
                self.data.test, self.config.model,
            )  # fmt: skip
        except ValueError as e:
            if isinstance(e, DataError):
                raise
            raise ConfigError(str(e)) from None

    # -- the global model ---------------------------------------------------------------------
    def train_global_model(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run every training stage (resuming from the last checkpoint); the final global
        weights and all rounds' rows."""
        bounds = stage_bounds(self.config.resolved_stages())
        total = bounds[-1][2]
        state = self._resumed_state()
        done = state.round_num if state is not None else 0
        self.client_state = self._open_client_state(done)
        metrics_csv = MetricsCsv(self.run_dir / rd.FEDAVG_METRICS, keep_until_round=done)
        last = _LastRecordedState()  # its row is written: checkpointed on Ctrl-C
        bar = ProgressBar(total) if self.progress else None
        callbacks = [
            *self._evaluation_callbacks(total),
            *([CommitClientState(self.client_state)] if self.client_state is not None else []),
            metrics_csv,
            last,
            *self._recording_callbacks(bounds, total, bar),
        ]
        try:
            process, state = self._run_stages(bounds, state, callbacks, bar)
        except KeyboardInterrupt:
            last.save(self.run_dir)
            raise
        finally:
            if bar is not None:
                bar.close()
        if process is None:  # no round to run: zero rounds, or all done before a resume
            process = build_stage_process(
                self.config, bounds[-1][0], self.executor, self.compute, self.client_state
            )
            state = state if state is not None else process.initialize()
        self._log_global_accuracy(metrics_csv.rows, total)
        return process.get_model_weights(state), metrics_csv.rows

    def _resumed_state(self) -> Any:
        """The server state of the newest checkpoint with ``resume`` (None: start afresh)."""
        from fedp13n.algorithms import latest_checkpoint, load_checkpoint

        ckpt = latest_checkpoint(self.run_dir) if self.resume else None
        if ckpt is None:
            if self.resume and (self.run_dir / rd.FEDAVG_METRICS).is_file():
                self.log(f"no checkpoint in {self.run_dir / rd.CHECKPOINTS}: training starts "
                         "again from round 1")  # fmt: skip
            return None
        state = load_checkpoint(ckpt)  # within total: _open_run_dir checked it
        self.log(f"resumed from {ckpt} (round {state.round_num})")
        return state

    def _open_client_state(self, round_num: int) -> Any:
        """The run's client-state store when a stage's method keeps state per client (None
        otherwise): created afresh (for the FedAvg clients) on a new run, or as round
        ``round_num``'s commit left it when resuming from that round's checkpoint."""
        import shutil

        from fedp13n.algorithms.fedper import fedper_state_spec
        from fedp13n.state import ClientStateStore

        stateful = [s for s in self.config.resolved_stages() if s.keeps_state]
        if not stateful:
            return None
        folder = self.run_dir / rd.CLIENT_STATE
        try:
            spec = fedper_state_spec(
                model_fn_for(self.config), stateful[0].personal_layers, stateful[0].method
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.resume and (folder / "index.json").is_file():
            store = _resumed_client_state(folder, round_num, self.data.train_ids, spec)
            self.log(f"client state: {store.num_initialised} clients, round {round_num}")
            return store
        if round_num > 0:
            raise ConfigError(
                f"{folder} is missing, so the per-client state of round {round_num} is lost; "
                "--resume cannot go on without it: start a new run."
            )
        if folder.exists():  # left by an attempt that finished no round: start afresh
            shutil.rmtree(folder)
        return ClientStateStore.create(folder, self.data.train_ids, spec)

    def _evaluation_callbacks(self, total: int) -> list[Callback]:
        """The global model's test metrics and, when asked for, the personalization curve
        (``p13n_accuracy``): before the callbacks that record the round's row (they add to
        it)."""

        def global_columns(weights: Mapping[str, Any]) -> dict[str, float]:
            ev = self.evaluate_global(weights)
            return {"eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"]}

        def curve(weights: Mapping[str, Any]) -> dict[str, float]:
            return {"p13n_accuracy": self.personalized_accuracy(weights)}

        config = self.config
        callbacks = [Evaluation(global_columns, config.eval_every, total)]
        if config.p13n_eval_every:
            callbacks.append(Evaluation(curve, config.p13n_eval_every, total))
        return callbacks

    def _recording_callbacks(
        self, bounds: list[tuple[StageConfig, int, int]], total: int, bar: ProgressBar | None
    ) -> list[Callback]:
        """Checkpoints, the guard against a model that stopped learning, TensorBoard and
        the progress (a bar, or a log line per round)."""
        from fedp13n.algorithms.loop import LearningGuard

        callbacks = [
            Checkpointer(
                self.run_dir,
                self.config.checkpoint_every,
                {end for _, _, end in bounds},
                keep=self.config.keep_checkpoints,
                client_state=self.client_state,
            ),
            LearningGuard(),
        ]
        if self.tensorboard is not None:
            callbacks.append(self.tensorboard)
        callbacks.append(bar if bar is not None else LogLines(self.log, total))
        return callbacks

    def _run_stages(
        self,
        bounds: list[tuple[StageConfig, int, int]],
        state: Any,
        callbacks: list[Callback],
        bar: ProgressBar | None,
    ) -> tuple[Any, Any]:
        """The rounds of every stage not done yet, from ``state`` (None: a fresh start);
        the last stage's process (None: no round to run) and the final state."""
        from fedp13n.algorithms.loop import fresh_server_state, run_rounds

        process = None
        for stage, start, end in bounds:
            if (state.round_num if state is not None else 0) >= end:
                continue
            process = build_stage_process(
                self.config, stage, self.executor, self.compute, self.client_state
            )
            if state is None:
                state = process.initialize()
            elif state.round_num == start:  # entering the stage: a fresh server optimizer
                state = fresh_server_state(process, state.model, start)
            if len(bounds) > 1:
                self.log(f"stage {stage.name!r}: rounds {start + 1}-{end}")
            if stage.resolved_kind == "centralized":
                self.log(_centralized_note(stage, self.data))
            if bar is not None:
                bar.start(state.round_num, stage.name)
            select = functools.partial(self._select_clients, stage)
            state = run_rounds(process, state, end, select, callbacks).state
        return process, state

    def _select_clients(self, stage: StageConfig, round_num: int) -> Any:
        """The round's clients: a sample of the FedAvg clients from the seed and the round
        (a centralized stage: all of them, their examples pooled)."""
        from fedp13n.algorithms import ClientSelection, sample_clients

        if stage.resolved_kind == "centralized":
            return ClientSelection(self.data.train, self.data.train_ids)
        ids = sample_clients(
            self.data.train_ids, stage.clients_per_round, seed=self.config.seed, round_num=round_num
        )
        return ClientSelection(self.data.train, ids)

    def _log_global_accuracy(self, rows: list[dict[str, Any]], total: int) -> None:
        final = rows[-1] if rows else {}
        if final.get("eval_accuracy") not in (None, ""):
            self.log(
                f"global model after {total} rounds: accuracy "
                f"{float(final['eval_accuracy']):.4f} on the test data of "
                f"{min(self.config.num_global_eval_clients, len(self.data.train_ids))} "
                "training clients"
            )

    def evaluate_global(self, weights: Mapping[str, Any]) -> dict[str, float]:
        """The global model on the test data of the first ``num_global_eval_clients``
        training clients, as one dataset (in the run's precision)."""
        from fedp13n.data import ClientDataset
        from fedp13n.personalization import evaluate_fn

        compute = self.compute
        held_out = self.data.test.subset(self.data.train_ids[: self.config.num_global_eval_clients])
        dataset = ClientDataset(held_out.x, held_out.y)
        model = model_fn_for(self.config)()
        if compute.device != "cpu":
            model, dataset = model.to(compute.device), dataset.to(compute.device)
        model.load_state_dict(weights)
        with compute.autocast(compute.torch_device):
            return dict(evaluate_fn(model, dataset, loss_fn=self.config.task_loss()))

    def save_global_weights(self, weights: Mapping[str, Any]) -> None:
        """``global_weights.pt``: the trained global model's state dict."""
        import torch

        path = self.run_dir / rd.GLOBAL_WEIGHTS
        with writing(path), atomic_writer(path, "wb") as f:
            torch.save(weights, f)

    # -- personalization ----------------------------------------------------------------------
    def _evaluate(
        self, fn_dict: OrderedDict, weights: Any, ids: list[str], what: str, *, shown: bool = True
    ) -> Any:
        """The personalization evaluation of ``fn_dict`` on the clients ``ids`` (its
        progress ``shown``: a bar, or log lines)."""
        inputs = _client_inputs(self.data, ids, self.compute)
        return _run_eval(
            self.config, fn_dict, weights, inputs, self.executor, self.progress and shown,
            what, self.compute, self.log if shown else None,
        )  # fmt: skip

    def personalized_accuracy(self, weights: Mapping[str, Any]) -> float:
        """Mean accuracy after the first strategy's last evaluation, on the evaluation
        clients (untuned settings: a curve over rounds, not a result)."""
        config = self.config
        first = config.strategies[0]
        strategy = first.with_params(first.grid()[0]) if first.tuned else first
        fn_dict = OrderedDict([(first.name, config.strategy_builder(strategy))])
        ids = eval_client_ids(config, self.data)
        result = self._evaluate(fn_dict, weights, ids, "curve", shown=False)
        curve = mean_accuracy_by_epoch(result[first.name])
        return curve[list(curve)[-1]]

    def tune_strategies(self, weights: Any) -> tuple[ExperimentConfig, dict[str, Any]]:
        """Choose every tuned strategy's settings (and epoch) on the validation clients.

        Each combination of a strategy's ``tune`` candidates runs on every validation
        client; the one with the highest mean validation accuracy (at its last evaluation,
        or at the best epoch with ``select_epoch``) wins, ties going to the first. Untuned
        strategies run there too: the report's best strategy and epoch is chosen on these
        clients (``validation_accuracy`` in the record: strategy -> ``epoch_k`` -> mean
        accuracy, of the chosen settings). Returns the config with the chosen settings
        and the record written to ``tuning.json``.
        """
        config, val_ids = self.config, self.data.val_ids
        tuned = [s.name for s in config.strategies if s.tuned]
        variants: OrderedDict[str, tuple[Any, dict]] = OrderedDict(
            (f"{s.name}~{i}", (s, params))
            for s in config.strategies
            for i, params in enumerate(s.grid())
        )
        fn_dict = OrderedDict(
            (name, config.strategy_builder(s.with_params(params)))
            for name, (s, params) in variants.items()
        )
        self.log(f"validation: {len(variants)} settings on {len(val_ids)} validation clients"
                 + (f" (tuning {tuned})" if tuned else ""))  # fmt: skip
        result = self._evaluate(fn_dict, weights, val_ids, "validation")
        line = without_test_line(result, "validation: ")
        if line:
            self.log(line)
        record: dict[str, Any] = {
            "validation_client_ids": list(val_ids),
            "strategies": {},
            "validation_accuracy": {},
        }
        chosen_strategies = []
        for s in config.strategies:
            if not s.tuned:
                chosen_strategies.append(s)
                curve = mean_accuracy_by_epoch(result[f"{s.name}~0"])
                record["validation_accuracy"][s.name] = curve
                continue
            runs = [(params, result[name]) for name, (o, params) in variants.items() if o is s]
            best, record["strategies"][s.name] = _choose_settings(s, runs)
            record["validation_accuracy"][s.name] = best["validation_accuracy"]
            chosen_strategies.append(s.with_params(best["params"]))
            self.log(
                f"tuned {s.name!r} on {len(val_ids)} validation clients: {best['params']}"
                + (f", {best['epoch'].replace('_', ' ')}" if s.select_epoch else "")
                + f" (validation accuracy {best['validation_accuracy'][best['epoch']]:.4f})"
            )
        return config.replace(strategies=chosen_strategies), record

    def evaluate_personalization(self, weights: Mapping[str, Any]) -> tuple[Any, dict | None]:
        """TFF's personalization evaluation of ``weights`` on ``num_eval_clients`` sampled
        personalization clients (sampled once, here), after tuning any tuned strategy on
        the validation clients (and measuring every strategy there); the result and the
        tuning record (None without validation clients)."""
        config, tuning = self.config, None
        if self.data.val_ids:  # tune there, and measure every strategy there (for "best")
            config, tuning = self.tune_strategies(weights)
        eval_ids = eval_client_ids(config, self.data)
        self.log(
            f"personalization: {len(eval_ids)} clients, strategies "
            + ", ".join(f"{s.name} ({_describe(s)})" for s in config.strategies)
        )
        t0 = time.perf_counter()
        # TFF's personalize_fn_dict: strategy name -> no-argument strategy builder
        fn_dict = OrderedDict((s.name, config.strategy_builder(s)) for s in config.strategies)
        result = self._evaluate(fn_dict, weights, eval_ids, "personalization")
        seconds = time.perf_counter() - t0
        self.log(
            f"personalization took {seconds:.1f} s "
            f"({len(eval_ids) / max(seconds, 1e-9):.2f} clients/s)"
        )
        line = without_test_line(result, "personalization: ")
        if line:
            self.log(line)
        for line in diverged_clients(result):
            warnings.warn(line, RuntimeWarning, stacklevel=2)
        return result, tuning

    def evaluate_own_state(self, weights: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """The protocols beside TFF's for a method that keeps state per client
        (:mod:`fedp13n.algorithms.own_state`; None for a run without one): up to
        ``num_eval_clients`` training clients with stored state (chosen from the seed) on
        their own test data with their own state, and the clients of TFF's protocol as new
        clients after the last stateful stage's local step (random streams of the round
        after the last). The rows of ``per_client_own_state.csv``."""
        from fedp13n.algorithms.fedper import ADAPTS
        from fedp13n.algorithms.own_state import (
            NEW_CLIENTS,
            OWN_STATE,
            evaluate_new_clients,
            evaluate_own_state,
        )

        config, data, compute, loss = self.config, self.data, self.compute, self.config.task_loss()
        stages = [s for s in config.resolved_stages() if s.keeps_state or s.method in ADAPTS]
        if not stages:
            return None
        stage = stages[-1]
        work = build_stage_process(config, stage, self.executor, compute, self.client_state)
        as_new = functools.partial(
            evaluate_new_clients, work.client_work, weights, data.train, data.test,
            loss_fn=loss, executor=self.executor, round_num=config.total_rounds + 1,
        )  # fmt: skip
        if stage.method in ADAPTS:  # no state: its own adaptation step on its own data
            own_ids = own_state_client_ids(config, None, data.train_ids)
            own = as_new(own_ids)
        else:
            own_ids = own_state_client_ids(config, self.client_state)
            with compute.autocast(compute.torch_device):
                own = evaluate_own_state(
                    model_fn_for(config), weights, self.client_state, data.test, own_ids, loss,
                    device=compute.torch_device, method=stage.method,
                )  # fmt: skip
        new_ids = eval_client_ids(config, data)
        new = as_new(new_ids)
        rows = []
        for protocol, ids, metrics in ((OWN_STATE, own_ids, own), (NEW_CLIENTS, new_ids, new)):
            for c, m in zip(ids, metrics, strict=True):
                rows.append({
                    "protocol": protocol, "client_id": c,
                    "num_train_examples": data.train.size(c),
                    "num_test_examples": m["num_test_examples"],
                    "loss": m["loss"], "accuracy": m.get("accuracy", math.nan),
                })  # fmt: skip
            acc = [r["accuracy"] for r in rows if r["protocol"] == protocol]
            measured = sum(1 for a in acc if _finite(a))
            left_out = left_out_note(len(ids) - measured, len(ids))
            self.log(
                f"{protocol.replace('_', ' ')}: mean accuracy {_nanmean(acc):.4f} on "
                f"{measured} clients (untuned: the stage's settings)"
                + (f"; {left_out}" if left_out else "")
            )
        return rows

    # -- results ------------------------------------------------------------------------------
    def write_results(
        self,
        result: Any,
        tuning: dict[str, Any] | None = None,
        own_state: list[dict[str, Any]] | None = None,
    ) -> Any:
        """``personalization.json``, ``per_client.csv``, ``tuning.json`` (when strategies
        were tuned), ``per_client_own_state.csv`` (a stateful method's ``own_state`` rows)
        and ``summary.json``; the Summary. A full disk: :class:`NoSpaceError`."""
        from fedp13n.reporting import summarize_run, write_summary_json

        run_dir = self.run_dir
        if own_state is not None:
            _write_csv(run_dir / rd.OWN_STATE_PER_CLIENT, rd.OWN_STATE_COLUMNS, own_state)
        result_json = result.to_dict()
        if tuning is not None:
            _write_json(run_dir / rd.TUNING, tuning)
        _write_json(run_dir / rd.PERSONALIZATION, result_json)
        train_sizes = {c: self.data.train.size(c) for c in result_json["client_ids"]}
        rows = per_client_rows(result_json, train_sizes)
        _write_csv(run_dir / rd.PER_CLIENT, rd.PER_CLIENT_COLUMNS, rows)
        summary = summarize_run(run_dir)
        with writing(run_dir / rd.SUMMARY):
            write_summary_json(run_dir, summary)  # last: its presence marks the run finished
        return summary

    def report(self, summary: Any) -> None:
        """The headline numbers to TensorBoard (the HTML report is the CLI's: ``--report``)."""
        if self.tensorboard is not None:
            self.tensorboard.log_personalization(
                summary, self.config.total_rounds, self.config.to_dict()
            )


class _LastRecordedState(Callback):
    """The server state of the last round whose row is in ``fedavg_metrics.csv``; on Ctrl-C
    it is checkpointed (unless it is already), so an interrupted run loses no finished
    round whatever ``checkpoint_every`` is."""

    def __init__(self) -> None:
        self.state: Any = None

    def on_round_end(self, process, state, row) -> None:
        self.state = state

    def save(self, run_dir: Path) -> None:
        from fedp13n.algorithms import save_checkpoint

        if self.state is None:
            return
        path = rd.checkpoint_path(run_dir, self.state.round_num)
        if not path.exists():
            save_checkpoint(path, self.state)


def _write_json(path: Path, obj: Any) -> None:
    with writing(path):
        atomic_write(path, json.dumps(obj, indent=1))


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    with writing(path):
        write_csv(path, columns, rows)


def _client_inputs(data: ExperimentData, ids: list[str], compute: Compute) -> list[OrderedDict]:
    """TFF's client inputs; on a device, resident there (the run's data is copied once)."""
    device = None if compute.device == "cpu" else compute.device
    return [
        OrderedDict(
            client_id=c,
            train_data=data.train.create_dataset(c, device=device),
            test_data=data.test.create_dataset(c, device=device),
        )
        for c in ids
    ]


def _run_eval(
    config: ExperimentConfig,
    fn_dict: OrderedDict,
    weights,
    inputs,
    executor,
    progress,
    what,
    compute: Compute | None = None,
    log: Log | None = None,
):
    """The personalization evaluation of ``inputs`` (all of them). With ``progress`` (a
    bar) or ``log`` (a line every tenth), ``what: 37/900 clients, ..., ETA 2m10s`` is
    shown as the clients finish: the clients then run in consecutive slices (the same
    numbers: every client's randomness derives from the seed and its id), except on the
    multi-client engine, which needs them all at once."""
    from fedp13n.execution.base import ClientWorkError
    from fedp13n.personalization import build_personalization_eval
    from fedp13n.personalization.p13n_utils import build_evaluate_fn

    p13n_eval = build_personalization_eval(
        model_fn_for(config),
        fn_dict,
        build_evaluate_fn(config.task_loss()),
        max_num_samples=max(1, len(inputs)),  # already sampled: keep them all
        seed=config.seed,
        executor=executor,
        compute=compute or Compute(),
    )
    if not inputs or not (progress or log is not None):
        return p13n_eval(weights, inputs)
    size = len(inputs)
    if compute is None or compute.engine is None:
        size = progress_slice(len(inputs), executor.num_workers)
    parts = []
    with ClientProgress(what, len(inputs), bar=progress, log=None if progress else log) as shown:
        for start in range(0, len(inputs), size):
            try:
                parts.append(p13n_eval(weights, inputs[start : start + size]))
            except ClientWorkError as e:  # name the task by its place among all clients
                raise _renumbered(e, start, inputs) from e
            shown.advance(len(parts[-1].client_ids))
    return concat_results(parts)


def _renumbered(error: Exception, start: int, inputs: list) -> Exception:
    """``error`` of a slice starting at ``start``, its ``task N`` counted over all
    ``inputs`` and named by its client."""

    def fix(m: re.Match) -> str:
        i = start + int(m[1])
        who = f" (client {inputs[i]['client_id']!r})" if i < len(inputs) else ""
        return f"task {i}{who}"

    text, n = re.subn(r"^task (\d+)", fix, str(error), count=1)
    return type(error)(text) if n else error


#: About this many progress updates in a personalization evaluation (each a slice of the
#: clients; a worker waits for the slowest client of a slice, so not many more).
PROGRESS_UPDATES = 20


def progress_slice(num_clients: int, num_workers: int) -> int:
    """Clients per slice of an evaluation with progress: about :data:`PROGRESS_UPDATES`
    slices, each at least 4 clients per worker (so workers rarely wait)."""
    return max(-(-num_clients // PROGRESS_UPDATES), 4 * max(1, num_workers))


def concat_results(parts: list[Any]) -> Any:
    """One PersonalizationResult from the results of consecutive slices of the clients."""
    from fedp13n.personalization.result import PersonalizationResult

    if len(parts) == 1:
        return parts[0]

    def concat(trees: list[Any]) -> Any:
        if isinstance(trees[0], Mapping):
            return OrderedDict((k, concat([t[k] for t in trees])) for k in trees[0])
        return [v for t in trees for v in t]

    out = PersonalizationResult(
        client_ids=[c for p in parts for c in p.client_ids], seed=parts[0].seed
    )
    for key in parts[0]:
        out[key] = concat([p[key] for p in parts])
    return out


def mean_accuracy_by_epoch(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``epoch_k`` -> mean accuracy over clients (NaN-free clients) of one strategy's result."""
    import numpy as np

    out = {}
    for key, m in metrics.items():
        if key.startswith("epoch_") and isinstance(m, Mapping) and "accuracy" in m:
            acc = np.asarray(m["accuracy"], dtype=float)
            out[key] = float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
    return out


def check_strategies_fit_model(config: ExperimentConfig) -> None:
    """Run every strategy (each tuned candidate too) once on a one-example client shaped
    by the model's input spec, before any training: a setting that only the model can
    refuse (e.g. head_only's ``head`` naming no layer) fails now, as a one-line error
    naming the strategy, not after the FedAvg rounds. (A model without an input spec is
    checked when its strategies first run.)"""
    import torch

    from fedp13n.models.spec import input_spec_of
    from fedp13n.personalization import build_personalization_eval
    from fedp13n.personalization.inputs import one_example_dataset
    from fedp13n.personalization.p13n_utils import build_evaluate_fn

    model_fn = model_fn_for(config)
    with torch.random.fork_rng(devices=[]):
        model = model_fn()
    spec = input_spec_of(model)
    if spec is None:
        return
    one = one_example_dataset(spec)
    client = [{"client_id": "dry-run", "train_data": one, "test_data": one}]
    weights = model.state_dict()
    for strategy in config.strategies:
        for params in strategy.grid():
            builder = config.strategy_builder(strategy.with_params(params))
            try:
                build_personalization_eval(
                    model_fn, {"s": builder}, build_evaluate_fn(config.task_loss()), seed=0
                )(weights, client)
            except Exception as e:  # noqa: BLE001 - any failure: the strategy cannot run
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                tried = f" with {params}" if strategy.tuned else ""
                raise ConfigError(
                    f"strategy {strategy.name!r}{tried} fails on a one-example client, before "
                    f"training: {first}"
                ) from None


def _choose_settings(strategy: Any, runs: list[tuple[dict, Any]]) -> tuple[dict, dict]:
    """The best of a tuned strategy's settings (``runs``: each one's parameters and its
    result on the validation clients): the highest mean accuracy at its last evaluation,
    or at its best epoch with ``select_epoch``, ties going to the first. The winning
    candidate and the record of the choice (``tuning.json``'s entry for the strategy)."""
    candidates = []
    for params, result in runs:
        curve = mean_accuracy_by_epoch(result)
        last = list(curve)[-1]
        epoch = max(curve, key=lambda e: (curve[e], -list(curve).index(e))) if \
            strategy.select_epoch else last  # fmt: skip
        candidates.append({"params": params, "validation_accuracy": curve, "epoch": epoch})
    best = max(
        candidates,
        key=lambda c: (c["validation_accuracy"][c["epoch"]], -candidates.index(c)),
    )
    return best, {
        "chosen": best["params"],
        "chosen_epoch": best["epoch"] if strategy.select_epoch else None,
        "validation_accuracy": best["validation_accuracy"][best["epoch"]],
        "candidates": candidates,
    }


def own_state_client_ids(
    config: ExperimentConfig, client_state: Any, train_ids: Sequence[str] = ()
) -> list[str]:
    """Up to ``num_eval_clients`` training clients with stored state, evaluated with it
    (:meth:`Run.evaluate_own_state`; drawn once from the seed); ``client_state`` None (a
    method without state, Per-FedAvg): of ``train_ids``."""
    if client_state is None:
        have = list(train_ids)
    else:
        have = [c for c in client_state.client_ids if client_state.initialised(c)]
    rng = derive_rng(config.seed, "own-state-eval-clients")
    n = min(config.num_eval_clients, len(have))
    return [have[i] for i in rng.choice(len(have), size=n, replace=False)]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if _finite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def eval_client_ids(config: ExperimentConfig, data: ExperimentData) -> list[str]:
    """The ``num_eval_clients`` personalization clients reported on (sampled once)."""
    rng = derive_rng(config.seed, "p13n-eval-clients")
    n = min(config.num_eval_clients, len(data.p13n_ids))
    return [data.p13n_ids[i] for i in rng.choice(len(data.p13n_ids), size=n, replace=False)]


def _describe(s: Any) -> str:
    """``sgd lr 0.02`` for TFF's fine-tuning, ``proximal, sgd lr 0.02`` for another kind:
    the optimizer and rate that run (a user's kind that sets none: its own defaults)."""
    if s.learning_rate is not None:
        text = f"{s.optimizer} lr {s.learning_rate}"
    else:
        text = f"{s.optimizer}, its default lr" if s.optimizer else "its default optimizer"
    return text if s.kind == "finetune" else f"{s.kind}, {text}"


def diverged_clients(result: Mapping[str, Any]) -> list[str]:
    """One line per strategy (and the baseline) whose test loss is not finite for some
    clients at some evaluation: their accuracy is what the arg-max of non-finite outputs
    gives, which is no measurement, so say so rather than average it in silently."""
    lines = []
    n = len(result.get(rd.BASELINE_KEY, {}).get("loss", []))
    measured = _has_test(result)  # a client without test examples has loss 0/0: not diverged
    for key, tree in result.items():
        if not isinstance(tree, Mapping):
            continue
        evals = {"": tree} if key == rd.BASELINE_KEY else {
            e: m for e, m in tree.items() if isinstance(m, Mapping) and "loss" in m
        }  # fmt: skip
        bad_at = {
            e: sum(1 for v, ok in zip(m["loss"], measured, strict=False) if ok and not _finite(v))
            for e, m in evals.items()
        }
        worst = max(bad_at.values(), default=0)
        if worst:
            where = ", ".join(f"{e.replace('_', ' ')}: {c}" for e, c in bad_at.items() if c and e)
            what = "the global model" if key == rd.BASELINE_KEY else f"strategy {key!r}"
            lines.append(
                f"{what}: the test loss is not finite for {worst} of {n} clients"
                + (f" ({where})" if where else "")
                + "; their accuracy is no measurement (the fine-tuning diverged: lower its "
                "learning rate)"
            )
    return lines


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _has_test(result: Mapping[str, Any]) -> list[bool]:
    """Per client of a personalization result: whether it has test examples (the global
    model's ``num_test_examples``; all True for a result without that key)."""
    base = result.get(rd.BASELINE_KEY, {})
    sizes = base.get("num_test_examples") if isinstance(base, Mapping) else None
    if sizes is None:
        return [True] * len(base.get("loss", [])) if isinstance(base, Mapping) else []
    return [bool(v) for v in sizes]


def without_test_line(result: Mapping[str, Any], what: str = "") -> str | None:
    """The log line naming the clients of a personalization result that have no test
    examples (their accuracy is 0/0, left out of every mean); None when every client has
    some. ``what`` prefixes it (``"validation: "``)."""
    measured = _has_test(result)
    ids = getattr(result, "client_ids", None) or result.get("client_ids") or ()
    missing = [c for c, ok in zip(ids, measured, strict=False) if not ok]
    if not missing:
        return None
    return f"{what}{left_out_note(len(missing), len(measured))} (e.g. {', '.join(missing[:3])})"


# -- the entry point ------------------------------------------------------------------------------
def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
) -> ExperimentResult:
    """Run (or resume) the whole experiment into ``run_dir``; see the module docstring.

    One run at a time per directory (a lock; a second one is refused). ``resume`` keeps
    the configuration saved in the run directory: only :data:`RESUMABLE_CHANGES` may
    differ (say ``rounds`` to extend a finished or interrupted run on purpose).
    """
    config.validate()
    compute = resolve_compute(config)  # before any file is written or data loaded
    config = config.with_absolute_paths()
    run_dir = Path(run_dir)
    _check_not_a_sweep_dir(run_dir)
    if not resume and not run_dir.exists():
        try:
            run_dir.mkdir(parents=True)
        except OSError as e:
            raise FileExistsError(f"cannot create --output-dir {run_dir}: {e.strerror}.") from None
    if not run_dir.is_dir():
        what = "does not exist" if not run_dir.exists() else "is not a directory"
        raise FileNotFoundError(f"--output-dir {run_dir} {what}.")
    with run_dir_lock(run_dir):
        try:
            with writing(run_dir):  # a full disk: NoSpaceError naming the file
                run = Run(config, run_dir, resume=resume, progress=progress, log=log,
                          compute=compute)  # fmt: skip
                return run.execute()
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            from fedp13n.algorithms.checkpoint import checkpoint_rounds

            done = max(checkpoint_rounds(run_dir), default=0)
            raise RunInterrupted(run_dir, done, config.total_rounds) from None


def _check_not_a_sweep_dir(run_dir: Path) -> None:
    """A FileExistsError when ``run_dir`` is the output directory of ``fedp13n sweep``."""
    from fedp13n.rundir.readers import is_sweep_dir

    if is_sweep_dir(run_dir):
        raise FileExistsError(
            f"--output-dir {run_dir} is a sweep directory (written by 'fedp13n sweep'), not "
            "a run directory; give the run its own --output-dir."
        )


#: Settings a resumed run may change: they change where and how it runs, not its numbers
#: (``rounds`` extends the run on purpose).
RESUMABLE_CHANGES = (
    "rounds",
    "executor",
    "workers",
    "workers_per_gpu",
    "ray_address",
    "tensorboard",
    # where it computes: another device (or the engine there) changes the numbers by
    # float rounding only
    "device",
    "engine",
    "engine_clients",
    "deterministic",
)


def rounds_done(run_dir: Path) -> int:
    """The last round of the run in ``run_dir`` that finished: its newest checkpoint or its
    last row in ``fedavg_metrics.csv`` (0: none). A ConfigError if that table is not one
    fedp13n wrote (binary, no ``round`` column)."""
    from fedp13n.algorithms.checkpoint import checkpoint_rounds

    done = max(checkpoint_rounds(run_dir), default=0)
    path = run_dir / rd.FEDAVG_METRICS
    if path.is_file():
        try:
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                done = max([done, *(int(r["round"]) for r in reader)])
                if reader.fieldnames is not None and "round" not in reader.fieldnames:
                    raise KeyError("round")  # a header of another table, and no rows
        except (UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError):
            raise ConfigError(
                f"{path} is not the table of rounds fedp13n writes (not text, or no 'round' "
                "column); restore it, or move it away to go on without its rows."
            ) from None
    return done


def _holds_results(run_dir: Path) -> bool:
    """Whether a run in ``run_dir`` finished a round (or wrote final results): then it is
    continued (``--resume``), never started over. A run refused or failed before its
    first round left nothing of value, and the same command may simply run again."""
    return rounds_done(run_dir) > 0 or any((run_dir / f).exists() for f in rd.FINAL_RESULTS)


def _set_aside_results(run_dir: Path, rounds: int, log: Log) -> None:
    """Move the final results of the ``rounds``-round run to ``previous/rounds_<rounds>/``
    (``summary.json`` first: without it the run reads as unfinished), so neither a report
    nor a sweep takes them for the results of the extended run while it is not done."""
    import os

    found = [run_dir / f for f in rd.FINAL_RESULTS if (run_dir / f).exists()]
    found += sorted(run_dir.glob("*.png"))  # the report's figures
    if not found:
        return
    dest = run_dir / rd.PREVIOUS / f"rounds_{rounds}"
    i = 1
    while dest.exists() and any(dest.iterdir()):
        i += 1
        dest = dest.with_name(f"rounds_{rounds}-{i}")
    dest.mkdir(parents=True, exist_ok=True)
    for path in found:
        os.replace(path, dest / path.name)
    log(f"set aside the results of the {rounds}-round run in {dest} (they are not this run's)")


def _resumed_client_state(folder: Path, round_num: int, train_ids: Any, spec: Any) -> Any:
    """The run's client-state store in ``folder`` as round ``round_num``'s commit left it;
    a one-line ConfigError when it is damaged, or holds other clients or other tensors
    than this run keeps (a folder from another run)."""
    from fedp13n.state import ClientStateStore

    lost = "--resume cannot go on without it: start a new run."
    try:
        store = ClientStateStore.open(folder)
    except (OSError, ValueError) as e:  # the store's message says to start afresh
        raise ConfigError(f"cannot resume the client state: {e}") from None
    if list(store.client_ids) != list(train_ids):
        other = sorted(set(store.client_ids) ^ set(train_ids), key=str)[:3]
        raise ConfigError(
            f"the client state in {folder} holds {len(store.client_ids)} clients that are not "
            f"this run's {len(train_ids)} FedAvg clients (e.g. {other}): it belongs to another "
            f"run; {lost}"
        )
    if store.spec != spec:  # both name -> (shape tuple, dtype name): state_spec's form
        raise ConfigError(
            f"the client state in {folder} keeps {sorted(store.spec)}, not what this run's "
            f"method keeps ({sorted(spec)}): it belongs to another run; {lost}"
        )
    try:
        store.restore(round_num)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot resume the client state: {e}") from None
    return store


def _open_run_dir(config: ExperimentConfig, run_dir: Path, *, resume: bool, log: Log) -> None:
    """Create (or reopen, with ``resume``) the run directory and save ``config`` in it."""
    if resume:
        _check_resume(config, run_dir, log)
    elif _holds_results(run_dir):
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another "
            "--output-dir."
        )
    for folder in (run_dir, run_dir / rd.CHECKPOINTS):  # left by a run killed mid-write
        remove_stale_temporaries(folder)
    with writing(run_dir / rd.CONFIG):
        atomic_write(run_dir / rd.CONFIG, config_text_with_digest(config.to_toml()))


def _check_resume(config: ExperimentConfig, run_dir: Path, log: Log) -> None:
    """``resume`` with ``config`` continues the run saved in ``run_dir``: a one-line error
    when it cannot (no saved run, an edited ``config.toml``, settings changed that change
    the numbers, checkpoints past the rounds); the changes it makes are logged."""
    if not (run_dir / rd.CONFIG).is_file():
        raise FileNotFoundError(
            f"nothing to resume in {run_dir}: it has no {rd.CONFIG} (is it the run "
            "directory of a 'fedp13n run'?); drop --resume to start a new run."
        )
    started = _holds_results(run_dir)
    if started and config_edited(run_dir / rd.CONFIG):
        raise ConfigError(
            f"{run_dir / rd.CONFIG} was edited after the run wrote it, so --resume cannot "
            "trust it; undo the edit, or start a new run with the edited settings: "
            f"fedp13n run --config {run_dir / rd.CONFIG} --output-dir <new folder>."
        )
    # folders compare as absolute paths (runs saved before they were stored so)
    saved = ExperimentConfig.from_toml(run_dir / rd.CONFIG).with_absolute_paths()
    changed = config.differences(saved)
    if not started:  # refused or failed before its first round: nothing to keep
        if changed:
            log(f"no round of the run in {run_dir} finished: starting it afresh with "
                f"the settings given ({', '.join(changed)} changed)")  # fmt: skip
        changed = []
    refused = [k for k in changed if k not in RESUMABLE_CHANGES]
    if refused:
        raise ConfigError(
            f"--resume continues the run saved in {run_dir / rd.CONFIG}, but these "
            f"settings differ from it: {refused}; drop them (a resumed run may change "
            f"only {list(RESUMABLE_CHANGES)}) or start a new run in another --output-dir."
        )
    if "rounds" in changed and config.total_rounds == saved.total_rounds:
        raise ConfigError(
            f"--rounds {config.rounds} changes nothing: every stage of this run sets its own "
            f"rounds ({saved.total_rounds} in all), so a staged run cannot be extended this "
            "way; start a new run with more rounds in its last stage."
        )
    _check_resumed_files(config, run_dir)
    for key in changed:
        log(f"resuming with {key} = {getattr(config, key)!r} (was {getattr(saved, key)!r})")
    if "rounds" in changed:
        _set_aside_results(run_dir, saved.total_rounds, log)


def _check_resumed_files(config: ExperimentConfig, run_dir: Path) -> None:
    """The run's folders are folders and its checkpoints within ``config``'s rounds."""
    from fedp13n.algorithms.checkpoint import checkpoint_rounds

    for folder in (rd.CHECKPOINTS, rd.CLIENT_STATE):
        if (run_dir / folder).exists() and not (run_dir / folder).is_dir():
            raise ConfigError(
                f"{run_dir / folder} is a file, not the run's {folder}/ folder; --resume "
                "cannot read the run from it: move the file away, or start a new run."
            )
    done = max(checkpoint_rounds(run_dir), default=0)
    if done > config.total_rounds:
        raise ConfigError(
            f"{run_dir} has a checkpoint of round {done}, beyond the "
            f"{config.total_rounds} rounds of this configuration; resume with at least "
            f"that many rounds (--rounds {done})."
        )
