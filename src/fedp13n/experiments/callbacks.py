"""The experiment's round-loop callbacks: global evaluation, CSV rows, checkpoints,
TensorBoard and progress (see :mod:`fedp13n.algorithms.loop`).

Order matters: an :class:`Evaluation` adds ``eval_loss`` / ``eval_accuracy`` (or
``p13n_accuracy``) to the round's row, so it comes before the callbacks that record the row.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedp13n.algorithms.checkpoint import checkpoint_rounds, save_checkpoint
from fedp13n.algorithms.loop import Callback
from fedp13n.rundir import layout as rd

Log = Callable[[str], None]


def round_info(row: Mapping[str, Any]) -> str:
    """One line of a round's numbers, for logs and the progress bar."""
    info = (
        f"loss {float(row['loss']):.3f} acc {float(row['accuracy']):.3f} "
        f"{float(row['examples_per_second']):.0f} ex/s"
    )
    if row.get("eval_accuracy") not in (None, ""):
        info += f", global test acc {float(row['eval_accuracy']):.3f}"
    if row.get("p13n_accuracy") not in (None, ""):
        info += f", personalized {float(row['p13n_accuracy']):.3f}"
    skipped = int(row.get("num_skipped_clients") or 0)
    if skipped:  # their update (or loss) was not finite: not averaged, so say it
        total = skipped + int(row.get("num_clients") or 0)
        info += (
            f"; {skipped} of {total} clients left out of the average (update not finite: "
            "lower the client learning rate)"
        )
    return info


class Evaluation(Callback):
    """After ``last_round`` and every ``every`` rounds (0: only after it): the columns
    ``evaluate(weights)`` gives for the global model (``eval_loss``, ``p13n_accuracy``,
    ...), added to the round's row."""

    def __init__(
        self, evaluate: Callable[[dict], Mapping[str, float]], every: int, last_round: int
    ) -> None:
        self.evaluate, self.every, self.last_round = evaluate, every, last_round

    def on_round_end(self, process, state, row) -> None:
        r = state.round_num
        if r == self.last_round or (self.every and r % self.every == 0):
            row.update(self.evaluate(process.get_model_weights(state)))


class MetricsCsv(Callback):
    """Append-only per-round CSV, flushed every row (nothing lost on a crash). Rows past
    ``keep_until_round`` (from an interrupted run being resumed) are dropped first."""

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

    def on_round_end(self, process, state, row) -> None:
        clean = {k: ("" if row.get(k) is None else row.get(k)) for k in rd.FEDAVG_COLUMNS}
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=rd.FEDAVG_COLUMNS).writerow(clean)
        self.rows.append(clean)


class CommitClientState(Callback):
    """Commit the per-client state (:class:`fedp13n.state.ClientStateStore`) after every
    round, before anything records the round: a checkpoint of round r (the Checkpointer's,
    or the one written on Ctrl-C) is always written after round r's commit, so resuming
    from it can restore the state of exactly that round."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def on_round_end(self, process, state, row) -> None:
        self.store.commit(state.round_num)


class Checkpointer(Callback):
    """Save the server state every ``every`` rounds and at each of ``rounds`` (stage ends),
    then delete all but the ``keep`` newest checkpoints (``keep=0``: keep all) and the
    ``client_state`` generations that no kept checkpoint needs."""

    def __init__(
        self, run_dir: Path, every: int, rounds: set[int], keep: int = 0, client_state: Any = None
    ) -> None:
        self.run_dir, self.every, self.rounds, self.keep = run_dir, every, rounds, keep
        self.client_state = client_state

    def on_round_end(self, process, state, row) -> None:
        r = state.round_num
        if r in self.rounds or (self.every and r % self.every == 0):
            save_checkpoint(rd.checkpoint_path(self.run_dir, r), state)
            if self.keep:
                for old in checkpoint_rounds(self.run_dir)[: -self.keep]:
                    rd.checkpoint_path(self.run_dir, old).unlink(missing_ok=True)
            if self.client_state is not None:
                self.client_state.prune(min(checkpoint_rounds(self.run_dir)))


class LogLines(Callback):
    """One log line per round (for logs and pipes, where a progress bar is noise)."""

    def __init__(self, log: Log, total: int) -> None:
        self.log, self.total = log, total

    def on_round_end(self, process, state, row) -> None:
        self.log(f"round {state.round_num}/{self.total}: {round_info(row)}")


class ProgressBar(Callback):
    """A rich progress bar over all rounds of all stages: loss, accuracy, examples/s."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._progress = _rich_progress("{task.fields[stage]}", "{task.fields[info]}", None)
        self._task = None

    def start(self, done: int, stage: str) -> None:
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(
                "rounds", total=self.total, completed=done, info="", stage=stage
            )
        self._progress.update(self._task, stage=stage)

    def on_round_end(self, process, state, row) -> None:
        self._progress.update(self._task, completed=state.round_num, info=round_info(row))

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()


def _rich_progress(first: str, after_count: str, before_eta: str | None, **kw: Any) -> Any:
    """A rich progress bar: ``first``, the bar, done/total, ``after_count``, the time
    elapsed, ``before_eta`` (None: nothing) and the time remaining."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(first), BarColumn(), MofNCompleteColumn(), TextColumn(after_count)]
    columns.append(TimeElapsedColumn())
    if before_eta is not None:
        columns.append(TextColumn(before_eta))
    return Progress(*columns, TimeRemainingColumn(), **kw)


def format_duration(seconds: float) -> str:
    """``5 -> '5s'``, ``130 -> '2m10s'``, ``3725 -> '1h02m05s'`` (whole seconds)."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


class ClientProgress:
    """Clients done of ``total`` in a personalization evaluation, with the time elapsed and
    an ETA: a rich progress bar on stderr (``bar``), else (``log``) a line at every tenth
    of the clients and at the end, e.g. ``personalization: 37/900 clients, 9s elapsed,
    ETA 2m10s``. Use as a context manager; :meth:`advance` after each batch of clients."""

    #: Log lines: one each time this fraction of the clients more is done (and at the end).
    LOG_EVERY = 0.1

    def __init__(
        self,
        label: str,
        total: int,
        *,
        bar: bool,
        log: Log | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.done = label, total, 0
        self.log, self.clock = log, clock
        self._bar = bar
        self._progress: Any = None
        self._task: Any = None
        self._t0 = clock()
        self._next_log = 0.0

    def __enter__(self) -> ClientProgress:
        self._t0 = self.clock()
        if self._bar:
            from rich.console import Console

            self._progress = _rich_progress(
                "{task.description}", "clients", "ETA", console=Console(stderr=True)
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @property
    def elapsed(self) -> float:
        return self.clock() - self._t0

    def eta(self) -> float | None:
        """Seconds left at the pace so far (None before the first client is done)."""
        if not self.done:
            return None
        return self.elapsed / self.done * (self.total - self.done)

    def line(self) -> str:
        """``personalization: 37/900 clients, 9s elapsed, ETA 2m10s``."""
        elapsed = format_duration(self.elapsed)
        text = f"{self.label}: {self.done}/{self.total} clients, {elapsed} elapsed"
        eta = self.eta()
        if self.done < self.total:
            text += f", ETA {'unknown' if eta is None else format_duration(eta)}"
        return text

    def advance(self, clients: int) -> None:
        self.done += clients
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)
        if self.log is not None and (
            self.done >= self.total or self.done >= self._next_log * self.total
        ):
            self.log(self.line())
            while self._next_log * self.total <= self.done:
                self._next_log += self.LOG_EVERY


class TensorBoardLogger(Callback):
    """Round loss / accuracy (``train/*``), global test numbers (``eval/*``) and, at the end,
    the personalization results as TensorBoard scalars: the headline
    (``personalization/<key>``, at the last round) and every evaluated epoch of every
    strategy (``personalization/<strategy>/accuracy_mean``, ``.../accuracy_ci_low``,
    ``.../accuracy_ci_high``, step = epoch, step 0 = the global model), plus the run's
    settings as hparams. ``run_name`` (the run folder's name) is a subfolder of
    ``log_dir``, so runs sharing one ``--tensorboard`` folder stay apart."""

    def __init__(self, log_dir: str | Path, run_name: str | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                "--tensorboard needs the tensorboard package: pip install 'fedp13n[tensorboard]'."
            ) from None
        self.log_dir = Path(log_dir) / run_name if run_name else Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def on_round_end(self, process, state, row) -> None:
        r = state.round_num
        for key in ("loss", "accuracy", "examples_per_second"):
            self.writer.add_scalar(f"train/{key}", float(row[key]), r)
        for key in ("eval_loss", "eval_accuracy"):
            if row.get(key) not in (None, ""):
                self.writer.add_scalar(f"eval/{key.removeprefix('eval_')}", float(row[key]), r)
        self.writer.flush()

    def log_headline(self, headline: Mapping[str, float], step: int) -> None:
        for key, value in headline.items():
            self.writer.add_scalar(f"personalization/{key}", float(value), step)
        self.writer.flush()

    def log_personalization(self, summary: Any, step: int, settings: Mapping[str, Any]) -> None:
        """The headline at ``step``, every strategy's mean accuracy and 95% CI by epoch,
        and ``settings`` (flattened to scalars) as hparams with the headline as metrics."""
        from fedp13n.rundir.readers import epoch_number

        self.log_headline(summary.headline, step)
        b = summary.baseline
        for strategy in summary.strategies():
            rows = [r for r in summary.rows if r.strategy == strategy]
            points = [(0, b)] + [(epoch_number(r.epoch), r) for r in rows]
            for epoch, r in points:
                for what in ("mean", "ci_low", "ci_high"):
                    tag = f"personalization/{strategy}/accuracy_{what}"
                    self.writer.add_scalar(tag, float(getattr(r, what)), epoch)
        self.log_hparams(
            settings, {f"personalization/{k}": float(v) for k, v in summary.headline.items()}
        )
        self.writer.flush()

    def log_hparams(self, settings: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """``settings`` as TensorBoard hparams of this run (its HPARAMS tab), ``metrics``:
        tags of scalars already logged here."""
        from torch.utils.tensorboard.summary import hparams

        flat = flatten_settings(settings)
        experiment, start, end = hparams(flat, dict(metrics))
        writer = self.writer._get_file_writer()  # the run's own event file, no subfolder
        for item in (experiment, start, end):
            writer.add_summary(item)

    def close(self) -> None:
        self.writer.close()


def flatten_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as TensorBoard hparams: ``{"strategies": [{"name": "sgd", "lr": 0.1}]}``
    -> ``{"strategies.sgd.lr": 0.1}``; numbers, strings and booleans kept, None and other
    values as text."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten_settings(value, f"{name}.")
        elif (
            value and isinstance(value, list | tuple) and all(isinstance(v, Mapping) for v in value)
        ):
            for i, item in enumerate(value):
                label = item.get("name", i)
                out |= flatten_settings(
                    {k: v for k, v in item.items() if k != "name"}, f"{name}.{label}."
                )
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = str(value)
    return out
