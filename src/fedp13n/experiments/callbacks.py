"""The experiment's round-loop callbacks: global evaluation, CSV rows, checkpoints,
TensorBoard and progress (see :mod:`fedp13n.algorithms.loop`).

Order matters: :class:`GlobalEvaluation` adds ``eval_loss`` / ``eval_accuracy`` to the
round's row, so it comes before the callbacks that record the row.
"""

from __future__ import annotations

import csv
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
    return info


class GlobalEvaluation(Callback):
    """Every ``every`` rounds and after ``last_round``: the global model on held-out data."""

    def __init__(
        self, evaluate: Callable[[dict], Mapping[str, float]], every: int, last_round: int
    ) -> None:
        self.evaluate, self.every, self.last_round = evaluate, every, last_round

    def on_round_end(self, process, state, row) -> None:
        r = state.round_num
        if r == self.last_round or (self.every and r % self.every == 0):
            ev = self.evaluate(process.get_model_weights(state))
            row["eval_loss"], row["eval_accuracy"] = ev["loss"], ev["accuracy"]


class PersonalizationCurve(Callback):
    """Every ``every`` rounds and after ``last_round``: the mean personalized accuracy
    (``p13n_accuracy``) given by ``evaluate(weights)``."""

    def __init__(self, evaluate: Callable[[dict], float], every: int, last_round: int) -> None:
        self.evaluate, self.every, self.last_round = evaluate, every, last_round

    def on_round_end(self, process, state, row) -> None:
        r = state.round_num
        if self.every and (r == self.last_round or r % self.every == 0):
            row["p13n_accuracy"] = self.evaluate(process.get_model_weights(state))


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


class Checkpointer(Callback):
    """Save the server state every ``every`` rounds and at each of ``rounds`` (stage ends),
    then delete all but the ``keep`` newest checkpoints (``keep=0``: keep all)."""

    def __init__(self, run_dir: Path, every: int, rounds: set[int], keep: int = 0) -> None:
        self.run_dir, self.every, self.rounds, self.keep = run_dir, every, rounds, keep

    def on_round_end(self, process, state, row) -> None:
        r = state.round_num
        if r in self.rounds or (self.every and r % self.every == 0):
            save_checkpoint(rd.checkpoint_path(self.run_dir, r), state)
            if self.keep:
                for old in checkpoint_rounds(self.run_dir)[: -self.keep]:
                    rd.checkpoint_path(self.run_dir, old).unlink(missing_ok=True)


class LogLines(Callback):
    """One log line per round (for logs and pipes, where a progress bar is noise)."""

    def __init__(self, log: Log, total: int) -> None:
        self.log, self.total = log, total

    def on_round_end(self, process, state, row) -> None:
        self.log(f"round {state.round_num}/{self.total}: {round_info(row)}")


class ProgressBar(Callback):
    """A rich progress bar over all rounds of all stages: loss, accuracy, examples/s."""

    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.total = total
        self._progress = Progress(
            TextColumn("{task.fields[stage]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
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


class TensorBoardLogger(Callback):
    """Round loss / accuracy (``train/*``), global test numbers (``eval/*``) and, at the end,
    the personalization headline (``personalization/*``) as TensorBoard scalars."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                "--tensorboard needs the tensorboard package: pip install 'fedp13n[tensorboard]'."
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

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

    def close(self) -> None:
        self.writer.close()
