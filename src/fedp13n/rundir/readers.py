"""Readers of a run directory's files (the layout is :mod:`fedp13n.rundir.layout`).

Below both the experiment that writes a run and the reports that read it: numpy and the
standard library only, so reading a run never imports torch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedp13n.rundir import layout as rd
from fedp13n.rundir.lock import (
    LOCK_FILE,
    UnsafeLockFile,
    open_lock_file,
    read_owner,
    try_lock,
    unlock,
)

#: What ``fedp13n sweep`` writes into its output directory (next to ``runs/<run>``).
SWEEP_FILE = "sweep.toml"
SWEEP_CSV = "sweep.csv"
SWEEP_RUNS = "runs"
SWEEP_COMPARISON = "comparison.html"


class ReportError(ValueError):
    """A run directory or one of its files cannot be read; the message names the fix."""


def epoch_number(epoch: str) -> int:
    """``"epoch_3" -> 3``: the number of fine-tuning epochs an evaluation key stands for."""
    m = re.search(r"(\d+)$", epoch)
    if not m:
        raise ReportError(f"epoch key {epoch!r} does not end in a number (expected 'epoch_1').")
    return int(m.group(1))


@dataclass(frozen=True)
class PerClientTable:
    """The rows of ``per_client.csv`` as column arrays (one row per client x strategy x epoch)."""

    client_id: np.ndarray  # str
    num_train_examples: np.ndarray  # int64
    num_test_examples: np.ndarray  # int64
    strategy: np.ndarray  # str
    epoch: np.ndarray  # str
    loss: np.ndarray  # float64
    accuracy: np.ndarray  # float64
    baseline_loss: np.ndarray  # float64
    baseline_accuracy: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.client_id)

    def strategies(self) -> list[str]:
        """Strategy names in order of first appearance (the order of ``personalize_fn_dict``)."""
        return list(dict.fromkeys(self.strategy.tolist()))

    def epochs(self, strategy: str) -> list[str]:
        """The epoch keys of ``strategy`` sorted by number (``epoch_2`` before ``epoch_10``)."""
        keys = set(self.epoch[self.strategy == strategy].tolist())
        return sorted(keys, key=epoch_number)

    def select(self, strategy: str, epoch: str) -> PerClientTable:
        return self._take((self.strategy == strategy) & (self.epoch == epoch))

    def baseline(self) -> PerClientTable:
        """One row per client (its first row): the global model's numbers are per client."""
        return self._take(np.sort(np.unique(self.client_id, return_index=True)[1]))

    def _take(self, rows: np.ndarray) -> PerClientTable:
        return PerClientTable(**{k: getattr(self, k)[rows] for k in self.__dataclass_fields__})


def _float(text: str) -> float:
    return float(text) if text.strip() not in ("", "None") else math.nan


def read_per_client(path: str | Path) -> PerClientTable:
    """Read ``per_client.csv`` (columns ``run_dir.PER_CLIENT_COLUMNS``)."""
    path = Path(path)
    _, rows = _read_csv(path, rd.PER_CLIENT_COLUMNS)
    if not rows:
        raise ReportError(f"{path} has no rows: the run evaluated no personalization client.")
    cols: dict[str, list] = {c: [] for c in rd.PER_CLIENT_COLUMNS}
    for line, row in enumerate(rows, start=2):
        try:
            for c in _TEXT_COLUMNS:
                cols[c].append(row[c])
            for c in _INT_COLUMNS:
                cols[c].append(int(float(row[c])))
            for c in ("loss", "accuracy", "baseline_loss", "baseline_accuracy"):
                cols[c].append(_float(row[c]))
        except (TypeError, ValueError):
            raise ReportError(f"{path}, line {line}: a value is not a number: {row}") from None
    for e in set(cols["epoch"]):
        epoch_number(e)
    dtype = {**dict.fromkeys(_TEXT_COLUMNS, object), **dict.fromkeys(_INT_COLUMNS, np.int64)}
    return PerClientTable(**{c: np.array(v, dtype=dtype.get(c, float)) for c, v in cols.items()})


_TEXT_COLUMNS = ("client_id", "strategy", "epoch")
_INT_COLUMNS = ("num_train_examples", "num_test_examples")


def read_fedavg_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """``fedavg_metrics.csv`` as float column arrays; empty cells (not measured) are NaN."""
    path = Path(path)
    required = ("round", "loss", "accuracy")
    fields, rows = _read_csv(
        path, required, lambda a: f"missing column {a[0]!r}.", "a run directory"
    )
    out = {}
    for c in fields:
        try:
            out[c] = np.array([_float(r[c]) for r in rows], dtype=float)
        except ValueError:
            raise ReportError(f"{path}: column {c!r} holds a value that is not a number.") from None
    return out


def read_own_state(path: str | Path) -> dict[str, np.ndarray]:
    """``per_client_own_state.csv``: protocol -> its clients' accuracies (NaN where not
    measured), protocols in :data:`~fedp13n.rundir.layout.OWN_STATE_PROTOCOLS` order."""
    path = Path(path)
    _, rows = _read_csv(path, rd.OWN_STATE_COLUMNS)
    out: dict[str, list[float]] = {p: [] for p in rd.OWN_STATE_PROTOCOLS}
    for line, row in enumerate(rows, start=2):
        if row["protocol"] not in out:
            raise ReportError(
                f"{path}, line {line}: protocol {row['protocol']!r} is not one of "
                f"{list(rd.OWN_STATE_PROTOCOLS)}."
            )
        try:
            out[row["protocol"]].append(_float(row["accuracy"]))
        except (TypeError, ValueError):
            raise ReportError(f"{path}, line {line}: a value is not a number: {row}") from None
    return {p: np.array(v, dtype=float) for p, v in out.items()}


def _read_csv(
    path: Path,
    required: Sequence[str],
    missing: Callable[[list[str]], str] | None = None,
    what: str = "the output of a finished 'fedp13n run'",
) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file's columns and rows; a ReportError (``missing(absent columns)``, by default
    those and ``required``; or: is the folder ``what``?) for a missing column, a missing
    file or one that is not text."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            absent = [c for c in required if c not in fields]
            if absent and missing is None:
                raise ReportError(f"{path}: missing column(s) {absent}; expected {list(required)}.")
            if absent:
                raise ReportError(f"{path}: {missing(absent)}")
            rows = []
            for row in reader:
                if None in row or None in row.values():  # a cut-off or damaged row
                    raise ReportError(_short_row(path, reader.line_num, row, len(fields)))
                rows.append(row)
    except FileNotFoundError:
        raise ReportError(f"{path} does not exist: is {path.parent} {what}?") from None
    except (UnicodeDecodeError, csv.Error):
        raise ReportError(_not_text(path)) from None
    return fields, rows


def read_config(run_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """The run's ``config.toml``: its text (shown verbatim) and parsed form ({} if absent)."""
    path = Path(run_dir) / rd.CONFIG
    if not path.exists():
        return "", {}
    try:
        text = path.read_text(encoding="utf-8-sig")
        return text, tomllib.loads(text)
    except UnicodeDecodeError:
        raise ReportError(_not_text(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ReportError(f"{path} is not valid TOML: {e}") from None


def _short_row(path: Path, line: int, row: dict[Any, Any], expected: int) -> str:
    """A CSV row with fewer or more values than the header: the file was cut short
    (a killed writer, a partial copy) or edited."""
    got = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, ()))
    return (
        f"{path}, line {line}: {got} values where the header has {expected}: the file is cut "
        "short or damaged; restore it, or rerun the run into a new --output-dir."
    )


def _not_text(path: Path) -> str:
    return (
        f"{path} is not a text file fedp13n wrote (binary or not UTF-8); restore it, or rerun "
        "the run into a new --output-dir."
    )


def _is_number(x: Any) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _tuning_problem(tuning: Any) -> str | None:
    """What is wrong with the shape of a parsed ``tuning.json`` (None: nothing)."""
    if not isinstance(tuning, dict):
        return f"an object is expected, not {type(tuning).__name__}"
    ids = tuning.get("validation_client_ids", [])
    if not isinstance(ids, list):
        return "'validation_client_ids' is not a list"
    strategies = tuning.get("strategies", {})
    if not isinstance(strategies, dict):
        return "'strategies' is not an object"
    for name, t in strategies.items():
        if not isinstance(t, dict) or "chosen" not in t:
            return f"strategy {name!r} has no 'chosen' settings"
        if not _is_number(t.get("validation_accuracy")):
            return f"strategy {name!r}: 'validation_accuracy' is not a number"
        if not isinstance(t.get("chosen_epoch"), (str, type(None))):
            return f"strategy {name!r}: 'chosen_epoch' is not an epoch name"
    curves = tuning.get("validation_accuracy", {})
    if not isinstance(curves, dict) or not all(
        isinstance(c, dict) and all(_is_number(v) for v in c.values()) for c in curves.values()
    ):
        return "'validation_accuracy' is not strategy -> epoch -> accuracy"
    return None


def read_tuning(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``tuning.json`` (None if absent); a ReportError if it is not one fedp13n
    wrote (not JSON, or the wrong shape)."""
    path = Path(run_dir) / rd.TUNING
    if not path.is_file():
        return None
    try:
        tuning = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise ReportError(
            f"{path} is not valid JSON; restore it, or delete it to report without the "
            "tuning record."
        ) from None
    problem = _tuning_problem(tuning)
    if problem is not None:
        raise ReportError(
            f"{path} is not a tuning record fedp13n wrote ({problem}); restore it, or delete "
            "it to report without the tuning record."
        )
    return tuning


def lock_holder(run_dir: str | Path) -> str | None:
    """The pid (as written in ``.lock``) of another process writing into ``run_dir``, or None.

    Probes the lock with a shared, non-blocking lock released at once (an exclusive one on
    Windows); this process's own lock (a run writing its report) does not count. Never
    creates the lock file; a ``.lock`` that is not a plain file (a symlink) holds no run.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = open_lock_file(path, os.O_RDONLY)
    except (OSError, UnsafeLockFile):
        return None
    try:
        owner = read_owner(fd)
        if owner == str(os.getpid()):
            return None
        try:
            if not try_lock(fd, shared=True):
                return owner
        except OSError:  # a file system without locks: nothing to tell
            return None
        unlock(fd)
        return None
    finally:
        os.close(fd)  # closing the descriptor releases the probe's lock


def is_sweep_dir(path: str | Path) -> bool:
    """Whether ``path`` is the output directory of ``fedp13n sweep`` (not a run directory)."""
    path = Path(path)
    return (path / SWEEP_FILE).is_file() or (
        (path / SWEEP_CSV).is_file() and (path / SWEEP_RUNS).is_dir()
    )


def check_run_dir(run_dir: str | Path, command: str = "report") -> Path:
    """``run_dir`` as a Path, or a ReportError saying what is wrong with it and what to do.

    ``command`` (``report`` or ``compare``) is the verb the advice uses.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ReportError(f"run directory {run_dir} does not exist.")
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a directory; pass the folder 'fedp13n run' wrote.")
    finished = (run_dir / rd.PER_CLIENT).exists()
    if not finished and is_sweep_dir(run_dir):
        runs = run_dir / SWEEP_RUNS
        comparison = run_dir / SWEEP_COMPARISON
        raise ReportError(
            f"{run_dir} is a sweep directory: {command} its runs ({runs}/<run>)"
            + (f" or open {comparison}." if comparison.is_file() else ".")
        )
    owner = lock_holder(run_dir)
    if owner is not None:
        raise ReportError(
            f"a run is still writing into {run_dir} (pid {owner}); {command} it when it has "
            "finished."
        )
    if not finished:
        raise ReportError(
            f"{run_dir} is not a finished run directory: {rd.PER_CLIENT} is missing "
            "(run 'fedp13n run', or '--resume' an interrupted run)."
        )
    return run_dir
