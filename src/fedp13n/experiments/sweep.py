"""A grid of runs from one TOML file: ``fedp13n sweep``.

The file is an experiment config (the keys of ``fedp13n run``) plus a ``[sweep]`` table::

    rounds = 30
    eval_every = 1
    p13n_eval_every = 5

    [sweep]
    grid = { clients_per_round = [5, 20], local_epochs = [2, 5, 10, 20] }
    rows = "clients_per_round"        # the Table-1 layout (optional)
    columns = "local_epochs"
    target_accuracy = 0.8             # "rounds to reach" (optional)

Every combination of the grid's values is one normal run directory,
``<sweep dir>/runs/<key>=<value>,...``, run one after another or ``parallel`` at a time
(each run in one worker process, single-threaded: the numbers are those of a sequential
sweep). A sweep killed at any point resumes with ``--resume``: finished runs (their
``summary.json`` exists) are not redone, an interrupted run resumes from its last
checkpoint. At the end: ``sweep.csv`` (one row per run), ``table.md`` (Table 1 of Jiang et
al. 2019: initial -> personalized accuracy, and rounds to reach the target accuracy for
both) and ``comparison.html`` (``fedp13n compare`` of all runs). A grid over ``seed``
also gives ``repeats.md`` / ``repeats.json``: per combination of the other keys, the mean
+- sample standard deviation over the seeds (:func:`write_seed_repeats`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedp13n.experiments.config import ConfigError, ExperimentConfig, read_toml
from fedp13n.reporting.repeats import (
    REPEATS_JSON,
    REPEATS_MD,
    aggregate,
    read_run_summary,
    repeats_markdown,
)
from fedp13n.reporting.summary import format_number, format_percent
from fedp13n.rundir import layout as rd
from fedp13n.rundir import readers
from fedp13n.rundir.lock import run_dir_lock
from fedp13n.utils.fs import atomic_write, write_csv

SWEEP_FILE = readers.SWEEP_FILE  # the names 'fedp13n report' recognizes a sweep by
SWEEP_CSV = readers.SWEEP_CSV
TABLE_MD = "table.md"
RUNS = readers.SWEEP_RUNS

Log = Callable[[str], None]


@dataclass
class SweepConfig:
    """The base experiment and the grid over its settings."""

    base: ExperimentConfig
    grid: dict[str, list[Any]]
    rows: str | None = None
    columns: str | None = None
    target_accuracy: float | None = None
    #: The strategy (and epoch key) the table reports as "personalized"; default: the
    #: first strategy at its last evaluation (fixed in advance, not the best afterwards).
    report_strategy: str | None = None
    report_epoch: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | Path) -> SweepConfig:
        path = Path(path)
        if path.is_dir():
            saved = path / SWEEP_FILE
            raise ConfigError(
                f"sweep file {path} is a directory; give the sweep's TOML file"
                + (
                    f" (to continue the sweep saved there: fedp13n sweep {saved} "
                    f"--output-dir {path} --resume)."
                    if saved.is_file()
                    else "."
                )
            )
        data = read_toml(path, "sweep file")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "sweep") -> SweepConfig:
        data = dict(data)
        sweep = data.pop("sweep", None)
        if not isinstance(sweep, dict) or not isinstance(sweep.get("grid"), dict):
            raise ConfigError(
                f"{source}: a sweep needs a [sweep] table with a grid, e.g. "
                "[sweep] grid = { local_epochs = [2, 5] }."
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"base", "raw"}
        unknown = sorted(set(sweep) - known)
        if unknown:
            raise ConfigError(
                f"{source}: [sweep] has unknown key(s) {unknown}; valid: {sorted(known)}."
            )
        base = ExperimentConfig.from_dict(data, source=source)
        _check_sweep_table(sweep, source)
        config = cls(base, **sweep, raw={**data, "sweep": sweep})
        for name, run_config in config.runs():  # every run's config is valid, before any runs
            try:
                run_config.validate()
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
            config.check_report_choice(name, run_config, source)
        return config

    def check_report_choice(self, name: str, config: ExperimentConfig, source: str) -> None:
        """``report_strategy`` / ``report_epoch`` exist in run ``name`` (checked before any
        run, not after the whole sweep)."""
        names = [s.name for s in config.strategies]
        strategy = self.report_strategy or (names[0] if names else None)
        if strategy not in names:
            raise ConfigError(
                f"{source}: report_strategy {strategy!r} is not a strategy of run {name} "
                f"(its strategies: {', '.join(names) or 'none'}); name one of them."
            )
        s = config.strategies[names.index(strategy)]
        if self.report_epoch is None or s.tuned:  # a tuned strategy's epochs are chosen later
            return
        n, every = config.strategy_epochs(s), s.epochs_per_eval
        evaluated = [f"epoch_{k}" for k in range(1, n + 1) if k % every == 0 or k == n]
        if self.report_epoch not in evaluated:
            raise ConfigError(
                f"{source}: report_epoch {self.report_epoch!r} is not evaluated: strategy "
                f"{strategy!r} of run {name} reports {', '.join(evaluated)}; choose one of those."
            )

    def runs(self) -> list[tuple[str, ExperimentConfig]]:
        """(run name, config) for every combination, in grid order. The name is the run's
        folder under ``runs/``: ``key=value,...`` in safe characters (:func:`run_folder_name`)."""
        keys = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            combo = dict(zip(keys, values, strict=True))
            name = run_folder_name(",".join(f"{k}={_label(v)}" for k, v in combo.items()))
            base = self.base.to_dict() | combo
            out.append((name, ExperimentConfig.from_dict(base, source=f"sweep run {name}")))
        return out


def _check_sweep_table(sweep: dict[str, Any], source: str) -> None:
    """The ``[sweep]`` table's grid (settings of ``fedp13n run``, each with distinct
    values), its table axes (grid keys), ``target_accuracy`` and ``report_epoch``."""
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    grid = sweep["grid"]
    if not grid:
        raise ConfigError(
            f"{source}: the sweep grid is empty; give at least one setting and its values, "
            "e.g. [sweep] grid = { local_epochs = [2, 5] } (for a single run: fedp13n run)."
        )
    for key, values in grid.items():
        if key not in fields:
            raise ConfigError(
                f"{source}: sweep grid key {key!r} is not a setting of 'fedp13n run'."
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: sweep grid {key!r} must be a non-empty list of values.")
        repeated = _repeated(values)
        if repeated is not None:  # two runs would share one run directory
            raise ConfigError(
                f"{source}: grid {key!r} repeats {_label(repeated)}; give each value once."
            )
    for axis in ("rows", "columns"):
        if sweep.get(axis) is not None and not isinstance(sweep[axis], str):
            raise ConfigError(
                f"{source}: [sweep] {axis} must be one grid key as a string (e.g. "
                f"{axis} = 'local_epochs'), got {sweep[axis]!r}."
            )
        if sweep.get(axis) is not None and sweep[axis] not in grid:
            raise ConfigError(f"{source}: [sweep] {axis} = {sweep[axis]!r} is not a grid key.")
    if sweep.get("rows") is not None and sweep.get("rows") == sweep.get("columns"):
        raise ConfigError(
            f"{source}: [sweep] rows and columns are both {sweep['rows']!r}; give two "
            "different grid keys (or only one of them)."
        )
    target = sweep.get("target_accuracy")
    if target is not None and not (
        isinstance(target, (int, float)) and not isinstance(target, bool) and 0 < target <= 1
    ):
        raise ConfigError(f"{source}: target_accuracy must be in (0, 1], got {target!r}.")
    epoch = sweep.get("report_epoch")
    if epoch is not None and not (
        isinstance(epoch, str) and re.fullmatch(r"epoch_[1-9][0-9]*", epoch)
    ):
        raise ConfigError(
            f"{source}: report_epoch must be an evaluation key like 'epoch_3', got {epoch!r}."
        )


#: Characters a run folder's name keeps; any other run of characters becomes ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]+")
#: Longest run folder name kept whole (file systems allow 255 bytes).
_MAX_NAME = 150


def run_folder_name(label: str) -> str:
    """``label`` (``key=value,...``) as one folder name: unchanged when it is short and of
    letters, digits and ``. _ , = + -``; else those characters, ``_`` for the rest (``/``,
    ``..`` components, spaces, quotes, ...), cut to length, plus 8 hex digits of the label's
    hash so that names stay distinct (``data_dir=x/../t`` -> ``data_dir=x_.._t-1a2b3c4d``)."""
    safe = _UNSAFE.sub("_", label)
    if safe == label and len(safe) <= _MAX_NAME:
        return label
    return f"{safe[:_MAX_NAME]}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"


def _repeated(values: list[Any]) -> Any:
    """The first value of ``values`` given before (the same run name or an equal value of
    the same kind: ``2`` and ``2.0`` are one setting, ``1`` and ``true`` are not); else None."""
    seen: list[Any] = []
    labels: set[str] = set()
    for v in values:
        if _label(v) in labels or any(
            v == w and isinstance(v, bool) == isinstance(w, bool) for w in seen
        ):
            return v
        seen.append(v)
        labels.add(_label(v))
    return None


def _label(value: Any) -> str:
    return (
        json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)
    )


def check_output_dir(out: Path) -> None:
    """A ConfigError naming the fix if ``out`` (or a folder above it) is not a directory."""
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--output-dir {out} is a file, not a directory; choose another --output-dir."
        )
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(
            f"--output-dir {out}: {parent} is a file, not a directory; choose another --output-dir."
        )


def check_not_a_run_dir(out: Path) -> None:
    """A ConfigError when ``out`` is the run directory of a ``fedp13n run``."""
    found = [n for n in (rd.CONFIG, rd.FEDAVG_METRICS, rd.SUMMARY) if (out / n).is_file()]
    if found and not (out / SWEEP_FILE).is_file():
        raise ConfigError(
            f"--output-dir {out} is the run directory of a 'fedp13n run' (it has {found[0]}), "
            "not a sweep directory; give the sweep its own --output-dir."
        )


def run_dir_of(out: Path, name: str) -> Path:
    """``<out>/runs/<name>``, checked to lie inside ``<out>/runs/`` (a run never writes
    outside the sweep's folder)."""
    runs = os.path.normpath(os.path.abspath(out / RUNS))
    path = os.path.normpath(os.path.join(runs, name))
    if os.path.dirname(path) != runs or name in ("", ".", ".."):
        raise ConfigError(f"sweep run name {name!r} is not a folder name inside {runs}.")
    return out / RUNS / name


def read_summary(path: Path) -> dict[str, Any] | None:
    """A finished run's ``summary.json`` (None when absent, not JSON or of another shape)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not (
        isinstance(summary, dict)
        and isinstance(summary.get("strategies"), dict)
        and isinstance(summary.get("baseline"), dict)
    ):
        return None
    return summary


def _set_aside_unreadable_summaries(out: Path, names: list[str], log: Log) -> None:
    """A run whose ``summary.json`` is unreadable is not done: the file is renamed (kept,
    not deleted) and the run re-runs (resuming from its checkpoints)."""
    for name in names:
        path = out / RUNS / name / rd.SUMMARY
        if path.is_file() and read_summary(path) is None:
            aside = path.with_name(path.name + ".unreadable")
            path.replace(aside)
            log(f"warning: {path} is not a run summary; it is kept as {aside.name} and run "
                f"{name} runs again.")  # fmt: skip


#: The most runs at a time: each run takes one core.
def max_parallel() -> int:
    return max(1, os.cpu_count() or 1)


# -- running ------------------------------------------------------------------------------------
def _capped_parallel(parallel: int, left: int, log: Log) -> int:
    """``--parallel`` capped at the runs left to do and at one run per core (said)."""
    cap = min(max(left, 1), max_parallel())
    if parallel <= 1 or parallel <= cap:
        return parallel
    why = (
        f"{left} run{'' if left == 1 else 's'} left to do"
        if cap == max(left, 1)
        else f"one run per core, {cap} core{'' if cap == 1 else 's'}"
    )
    log(f"--parallel {parallel} capped at {cap} ({why}).")
    return cap


def _run_one(job: tuple[str, ExperimentConfig, str, bool]) -> str:
    """Run (or resume, or skip if finished) one run of the sweep; returns its state."""
    from fedp13n.experiments.p13n_experiment import run_experiment

    name, config, run_dir, progress = job
    path = Path(run_dir)
    if (path / rd.SUMMARY).is_file():
        return "done before"
    resume = (path / rd.CONFIG).is_file()
    run_experiment(config, path, resume=resume, progress=progress, log=lambda s: None)
    return "resumed" if resume else "ran"


def run_sweep(
    sweep: SweepConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    parallel: int = 1,
    log: Log = print,
) -> Path:
    """Run every run of ``sweep`` into ``out_dir``; returns the path of ``table.md``."""
    out = Path(out_dir)
    check_output_dir(out)
    check_not_a_run_dir(out)
    if (out / SWEEP_FILE).exists() and not resume:
        raise FileExistsError(
            f"{out} already holds a sweep; pass --resume to continue it or choose another "
            "--output-dir."
        )
    if resume and not (out / SWEEP_FILE).exists():
        raise FileNotFoundError(f"nothing to resume in {out}: it has no {SWEEP_FILE}.")
    out.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(out):
        if resume:
            saved = SweepConfig.from_toml(out / SWEEP_FILE)
            if saved.raw != sweep.raw:
                raise ConfigError(
                    f"--resume continues the sweep saved in {out / SWEEP_FILE}, but the given "
                    "file differs from it; resume with the same file or use another --output-dir."
                )
        atomic_write(out / SWEEP_FILE, tomli_w.dumps(sweep.raw))
        runs = sweep.runs()
        _set_aside_unreadable_summaries(out, [name for name, _ in runs], log)
        left = sum(not (run_dir_of(out, name) / rd.SUMMARY).is_file() for name, _ in runs)
        parallel = _capped_parallel(parallel, left, log)
        jobs = []
        for name, config in runs:
            if parallel > 1:  # one run per worker process, each single-threaded
                config = config.replace(executor="in-process", workers=None)
            jobs.append((name, config, str(run_dir_of(out, name)), False))
        log(
            f"sweep: {len(jobs)} runs into {out / RUNS}"
            + (f", {parallel} at a time" if parallel > 1 else "")
        )
        if parallel > 1:
            from fedp13n.execution.factory import make_executor

            with make_executor("processes", num_workers=parallel) as executor:
                states = executor.map(_run_one, jobs)
            for (name, *_), state in zip(jobs, states, strict=True):
                log(f"  {name}: {state}")
        else:
            for i, job in enumerate(jobs, 1):
                log(f"  [{i}/{len(jobs)}] {job[0]} ...")
                state = _run_one(job)
                log(f"  [{i}/{len(jobs)}] {job[0]}: {state}")
        return write_sweep_results(sweep, out)


# -- results ------------------------------------------------------------------------------------
def first_round_reaching(rows: list[dict[str, str]], column: str, target: float) -> int | None:
    """The first round whose ``column`` is at least ``target`` (None if none is)."""
    for r in rows:
        v = r.get(column, "")
        if v not in ("", None) and float(v) >= target:
            return int(r["round"])
    return None


def run_row(
    sweep: SweepConfig, name: str, config: ExperimentConfig, run_dir: Path
) -> dict[str, Any]:
    """One run's numbers: initial and personalized accuracy (95% CI, helped / hurt)."""
    summary = read_summary(run_dir / rd.SUMMARY)
    if summary is None:
        raise ConfigError(
            f"sweep run {name}: {run_dir / rd.SUMMARY} is not a run summary; run "
            "'fedp13n sweep ... --resume' to run it again."
        )
    strategy = sweep.report_strategy or config.strategies[0].name
    epochs = summary["strategies"].get(strategy)
    if not epochs:
        raise ConfigError(f"sweep run {name}: no strategy {strategy!r} in its results.")
    epoch = sweep.report_epoch or sorted(epochs, key=lambda e: int(e.rsplit("_", 1)[-1]))[-1]
    p, b = epochs[epoch], summary["baseline"]
    with (run_dir / rd.FEDAVG_METRICS).open(newline="") as f:
        rounds = list(csv.DictReader(f))
    row = {"run": name}
    row |= {k: getattr(config, k) for k in sweep.grid}
    row |= {
        "initial": b["mean"],
        "initial_ci_low": b["ci_low"],
        "initial_ci_high": b["ci_high"],
        "personalized": p["mean"],
        "personalized_ci_low": p["ci_low"],
        "personalized_ci_high": p["ci_high"],
        "strategy": strategy,
        "epoch": epoch,
        "gain": p.get("mean_gain"),
        "improved": p.get("improved"),
        "hurt": p.get("hurt"),
        "clients": b["n"],
        "rounds": len(rounds),
        "fedavg_seconds": round(sum(float(r["seconds"]) for r in rounds), 1),
    }
    if sweep.target_accuracy is not None:
        row["initial_rounds_to_target"] = first_round_reaching(
            rounds, "eval_accuracy", sweep.target_accuracy
        )
        row["personalized_rounds_to_target"] = first_round_reaching(
            rounds, "p13n_accuracy", sweep.target_accuracy
        )
    return row


_f = format_number


def table_markdown(sweep: SweepConfig, rows: list[dict[str, Any]]) -> str:
    """Table 1's shape: rows x columns, each cell "initial -> personalized" (+ rounds)."""

    def cell(r: dict[str, Any]) -> str:
        text = f"{_f(r['initial'])} -> {_f(r['personalized'])}"
        if sweep.target_accuracy is not None:
            a, b = r["initial_rounds_to_target"], r["personalized_rounds_to_target"]
            text += f" ({'-' if a is None else a} / {'-' if b is None else b})"
        return text

    lines = []
    if sweep.rows and sweep.columns:
        cols = sweep.grid[sweep.columns]
        lines.append(f"| {sweep.rows} \\ {sweep.columns} | " + " | ".join(map(str, cols)) + " |")
        lines.append("| --- " * (len(cols) + 1) + "|")
        for rv in sweep.grid[sweep.rows]:
            cells = []
            for cv in cols:
                match = [r for r in rows if r[sweep.rows] == rv and r[sweep.columns] == cv]
                cells.append(" / ".join(cell(r) for r in match) or "not run yet")
            lines.append(f"| {rv} | " + " | ".join(cells) + " |")
    else:
        lines.append("| run | initial -> personalized |")
        lines.append("| --- | --- |")
        lines += [f"| {r['run']} | {cell(r)} |" for r in rows]
    lines.append("")
    total = len(sweep.runs())
    if len(rows) < total:
        lines.append(
            f"{len(rows)} of {total} runs finished; `fedp13n sweep ... --resume` runs the rest."
        )
    lines.append(
        "Mean accuracy over the personalization clients: initial = the global model, "
        "personalized = strategy "
        + ", ".join(sorted({f"{r['strategy']} at {r['epoch'].replace('_', ' ')}" for r in rows}))
        + "."
    )
    if sweep.target_accuracy is not None:
        lines.append(
            f"In brackets: rounds to reach {sweep.target_accuracy} accuracy, initial (global "
            "model on the training clients' test data) / personalized (p13n_accuracy); '-' = "
            "not reached."
        )
    lines.append("")
    lines.append(
        "| run | initial [95% CI] | personalized [95% CI] | gain | helped | hurt | FedAvg s |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        lines.append(
            f"| {r['run']} | {_f(r['initial'])} [{_f(r['initial_ci_low'])}, "
            f"{_f(r['initial_ci_high'])}] | {_f(r['personalized'])} "
            f"[{_f(r['personalized_ci_low'])}, {_f(r['personalized_ci_high'])}] | "
            f"{_f(r['gain'])} | {_pct(r['improved'])} | {_pct(r['hurt'])} | "
            f"{r['fedavg_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _pct(x: Any) -> str:
    return format_percent(x, 0) or "n/a"


def write_sweep_results(sweep: SweepConfig, out: Path) -> Path:
    """``sweep.csv``, ``table.md`` and ``comparison.html`` of a finished sweep."""
    rows = [
        run_row(sweep, name, config, out / RUNS / name)
        for name, config in sweep.runs()
        if read_summary(out / RUNS / name / rd.SUMMARY)  # an unfinished sweep: what is done
    ]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(out / SWEEP_CSV, columns, rows)
    path = atomic_write(out / TABLE_MD, table_markdown(sweep, rows))
    write_seed_repeats(sweep, out)
    if len(rows) > 1:
        from fedp13n.reporting.compare import write_comparison

        write_comparison([out / RUNS / r["run"] for r in rows], out)
    return path


def write_seed_repeats(sweep: SweepConfig, out: Path) -> Path | None:
    """A grid over ``seed`` (``grid = { seed = [0, 1, 2], ... }``): ``repeats.md`` /
    ``repeats.json`` in the sweep folder, one section per combination of the other grid
    keys with the mean +- sample std over its finished seeds
    (:mod:`fedp13n.reporting.repeats`). None (nothing written) without two seeds."""
    if len(sweep.grid.get("seed", ())) < 2:
        return None
    groups: dict[tuple[tuple[str, Any], ...], list[tuple[int, Path]]] = {}
    for name, config in sweep.runs():
        key = tuple((k, getattr(config, k)) for k in sweep.grid if k != "seed")
        path = out / RUNS / name
        if read_summary(path / rd.SUMMARY) is not None:
            groups.setdefault(key, []).append((config.seed, path))
    sections, data = [], []
    for key, members in groups.items():
        agg = aggregate([read_run_summary(p) for _, p in members], [s for s, _ in members])
        agg["runs"] = [p.name for _, p in members]
        title = ", ".join(f"{k} = {_label(v)}" for k, v in key) or "all runs"
        sections.append(f"## {title}\n\n{repeats_markdown(agg)}")
        data.append({"settings": dict(key), **agg})
    atomic_write(out / REPEATS_JSON, json.dumps({"groups": data}, indent=1) + "\n")
    return atomic_write(out / REPEATS_MD, "\n".join(sections) or "No run has finished yet.\n")
