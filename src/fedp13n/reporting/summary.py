"""Summary statistics of a personalization run: who gains, who loses, by how much.

Personalization (Jiang et al. 2019, "Improving Federated Learning Personalization via
Model Agnostic Meta Learning"; TFF's ``build_personalization_eval``) is judged by the
distribution of per-client accuracies, not one mean. For the global model
(``baseline_metrics``) and for every strategy and fine-tuning epoch this module gives:

* ``n`` clients, the mean and the median accuracy (every client counts once: the
  distribution over clients is the object of study, so no weighting by test size);
* a 95% confidence interval for the mean: a **percentile bootstrap over clients**
  (2,000 resamples, seed derived from the strategy and the epoch, so every number is
  reproducible and does not depend on which other rows were summarized). The same
  interval is used everywhere (printed summary, report, ``summary.json``);
* paired with the baseline on the same client: the fractions of clients improved,
  unchanged (``|difference| <= 1e-9``) and hurt, and the mean gain with its own
  bootstrap interval.

It also gives TFF's three headline numbers (mean baseline accuracy, ``sgd`` and ``adam``
after one epoch; a strategy evaluated only every few epochs at its first evaluation).
Pure numpy: the tables are small (clients x strategies x epochs).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedp13n.rundir import layout as rd
from fedp13n.rundir.readers import (  # noqa: F401  (re-exported: the reporting API)
    PerClientTable,
    ReportError,
    check_run_dir,
    epoch_number,
    read_config,
    read_fedavg_metrics,
    read_own_state,
    read_per_client,
    read_tuning,
)
from fedp13n.utils.fs import atomic_write
from fedp13n.utils.seeding import derive_rng


class ReportWarning(UserWarning):
    """A report left something out (e.g. no FedAvg log): the HTML says so, and so does the CLI."""


#: Absolute accuracy difference below which a client counts as "unchanged".
UNCHANGED_TOL = 1e-9
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
BASELINE = "baseline"


# -- statistics -------------------------------------------------------------------------------
def bootstrap_mean_ci(
    values: np.ndarray,
    *,
    key: Sequence[object] = (),
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap interval for the mean of ``values`` (resampling clients).

    The generator derives from ``(seed, "bootstrap", *key)`` so the interval of one
    strategy/epoch is the same whatever else is summarized. NaN for no values; a single
    value (or all equal) gives a zero-width interval.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    rng = derive_rng(seed, "bootstrap", *key)
    idx = rng.integers(0, n, size=(resamples, n))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Stats:
    """Statistics of one row of the summary (the baseline, or one strategy at one epoch)."""

    strategy: str  # BASELINE for the global model
    epoch: str | None  # None for the baseline
    n: int
    mean: float
    median: float
    ci_low: float
    ci_high: float
    std: float
    # versus the baseline on the same clients (None for the baseline row)
    improved: float | None = None
    unchanged: float | None = None
    hurt: float | None = None
    mean_gain: float | None = None
    gain_ci_low: float | None = None
    gain_ci_high: float | None = None

    @property
    def label(self) -> str:
        """For people: ``baseline``, ``sgd, epoch 3``, ``sgd, per-client epoch``."""
        if self.epoch is None:
            return BASELINE
        return f"{self.strategy}, {epoch_text(self.epoch)}"


def epoch_text(epoch: str) -> str:
    """An evaluation key for people: ``epoch_3 -> 'epoch 3'``, ``selected -> 'per-client
    epoch'`` (machine files keep the key)."""
    if epoch == SELECTED:
        return "per-client epoch"
    return epoch.replace("_", " ")


#: How the report and ``compare`` name the best strategy/epoch when the run has no
#: validation clients: chosen on the very clients it is reported on, so it is optimistic.
NOT_HELD_OUT = "highest on these clients (not a held-out choice)"


@dataclass(frozen=True)
class BestChoice:
    """The strategy/epoch a run's report calls best, and how it was chosen."""

    stats: Stats  # its numbers on the reported clients
    how: str  # "best, chosen on the <n> validation clients" or NOT_HELD_OUT
    held_out: bool  # chosen on validation clients (not reported on)
    validation_mean: float | None = None  # its mean accuracy on the validation clients


@dataclass(frozen=True)
class Summary:
    """The baseline, every (strategy, epoch) in order, and TFF's headline numbers."""

    num_clients: int
    baseline: Stats
    rows: tuple[Stats, ...]
    headline: dict[str, float]
    #: Strategies that choose an epoch per client (early stopping): test accuracy there.
    selected: tuple[Stats, ...] = ()
    #: ``tuning.json``: settings chosen, and every strategy measured, on validation clients
    #: (None: the run had none).
    tuning: dict[str, Any] | None = None
    #: The protocols beside TFF's of a method that keeps state per client
    #: (``per_client_own_state.csv``; ``Stats.strategy`` names the protocol): empty else.
    protocols: tuple[Stats, ...] = ()
    #: Clients evaluated without an accuracy to measure (no test examples): left out of
    #: every mean, so a row's ``n`` is ``num_clients - num_without_test``.
    num_without_test: int = 0
    #: Per protocol beside TFF's: the clients it evaluated (its ``Stats.n`` those with
    #: test examples).
    protocol_clients: dict[str, int] = dataclasses.field(default_factory=dict)

    def row(self, strategy: str, epoch: str) -> Stats:
        for r in self.rows:
            if r.strategy == strategy and r.epoch == epoch:
                return r
        raise KeyError((strategy, epoch))

    def strategies(self) -> list[str]:
        return list(dict.fromkeys(r.strategy for r in self.rows))

    def clients_text(self) -> str:
        """``30 clients``, with :func:`left_out_note` in brackets when it says something."""
        left_out = left_out_note(self.num_without_test, self.num_clients)
        return f"{self.num_clients} clients" + (f" ({left_out})" if left_out else "")

    def best_choice(self) -> BestChoice | None:
        """The best strategy/epoch: the highest mean on the validation clients when the run
        has them (ties: the first), else the highest mean on the reported clients, said
        plainly (:data:`NOT_HELD_OUT`). None if no row has a mean."""
        rows = [r for r in self.rows if math.isfinite(r.mean)]
        if not rows:
            return None
        # (strategy, epoch_k) -> mean accuracy on the validation clients (tuning.json's
        # shape checked by read_tuning; empty when the run had none)
        curves = (self.tuning or {}).get("validation_accuracy", {})
        val = {
            (strategy, epoch): float(value)
            for strategy, curve in curves.items()
            for epoch, value in curve.items()
            if value is not None and math.isfinite(value)
        }
        scored = [(val[(r.strategy, r.epoch)], r) for r in rows if (r.strategy, r.epoch) in val]
        if scored:
            best = max(scored, key=lambda t: (t[0], -scored.index(t)))
            n = len((self.tuning or {}).get("validation_client_ids") or ())
            return BestChoice(best[1], f"best, chosen on the {n} validation clients", True, best[0])
        best_row = max(rows, key=lambda r: (r.mean, -rows.index(r)))
        return BestChoice(best_row, NOT_HELD_OUT, False)

    def to_dict(self) -> dict[str, Any]:
        strategies: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            strategies.setdefault(r.strategy, {})[r.epoch] = _clean(asdict(r))
        return {
            "num_clients": self.num_clients,
            # only when some client has no test examples: a run without any writes as before
            **(
                {"num_clients_without_test_examples": self.num_without_test}
                if self.num_without_test
                else {}
            ),
            "headline": self.headline,
            "baseline": _clean(asdict(self.baseline)),
            "strategies": strategies,
            "selected": {r.strategy: _clean(asdict(r)) for r in self.selected},
            "tuning": self.tuning,
            "best": _best_dict(self.best_choice()),
            "confidence_interval": {
                "method": "percentile bootstrap over clients (mean of per-client accuracy)",
                "confidence": CONFIDENCE,
                "resamples": BOOTSTRAP_RESAMPLES,
                "seed": BOOTSTRAP_SEED,
            },
            "unchanged_tolerance": UNCHANGED_TOL,
            **({"other_protocols": self._protocols_dict()} if self.protocols else {}),
        }

    def _protocols_dict(self) -> dict[str, Any]:
        """``summary.json``'s block of the protocols beside TFF's (only when measured)."""
        return {
            "tff": rd.TFF_PROTOCOL + ": the numbers above",
            "tuned": False,
            "note": "nothing is tuned: the new clients' local step is the training stage's",
            **{
                r.strategy: {
                    "protocol": rd.OWN_STATE_PROTOCOLS[r.strategy],
                    **{k: v for k, v in _clean(asdict(r)).items() if k in _PROTOCOL_STATS},
                    **self._protocol_left_out(r),
                }
                for r in self.protocols
            },
        }

    def _protocol_left_out(self, r: Stats) -> dict[str, int]:
        """``num_clients_without_test_examples`` of one protocol, when some are."""
        left_out = self.protocol_clients.get(r.strategy, r.n) - r.n
        return {"num_clients_without_test_examples": left_out} if left_out else {}


#: The statistics a protocol beside TFF's reports (no baseline to pair with).
_PROTOCOL_STATS = ("n", "mean", "median", "ci_low", "ci_high", "std")


def left_out_note(left_out: int, total: int) -> str:
    """The sentence that says a mean leaves clients out because they have no test examples
    (their accuracy is 0/0): ``"2 of 6 clients without test examples are left out of the
    means"``; empty when none is."""
    if not left_out:
        return ""
    verb = "is" if left_out == 1 else "are"
    return f"{left_out} of {total} clients without test examples {verb} left out of the means"


def _best_dict(choice: BestChoice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    return _clean(
        {
            "strategy": choice.stats.strategy,
            "epoch": choice.stats.epoch,
            "mean": choice.stats.mean,
            "held_out": choice.held_out,
            "how": choice.how,
            "validation_mean": choice.validation_mean,
        }
    )


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite floats become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


def _stats(strategy: str, epoch: str | None, acc: np.ndarray, base: np.ndarray | None) -> Stats:
    ok = np.isfinite(acc) if base is None else np.isfinite(acc) & np.isfinite(base)
    acc = acc[ok]
    n = len(acc)
    key = (strategy,) if epoch is None else (strategy, epoch)
    kw: dict[str, Any] = {}
    if base is not None:
        diff = acc - base[ok]
        kw = dict(
            improved=_mean(diff > UNCHANGED_TOL),
            unchanged=_mean(np.abs(diff) <= UNCHANGED_TOL),
            hurt=_mean(diff < -UNCHANGED_TOL),
            mean_gain=_mean(diff),
        )
        kw["gain_ci_low"], kw["gain_ci_high"] = bootstrap_mean_ci(diff, key=(*key, "gain"))
    lo, hi = bootstrap_mean_ci(acc, key=key)
    median = float(np.median(acc)) if n else math.nan
    std = float(acc.std(ddof=1)) if n > 1 else math.nan
    return Stats(strategy, epoch, n, _mean(acc), median, lo, hi, std, **kw)


def summarize(table: PerClientTable) -> Summary:
    """Statistics of the baseline and of every strategy/epoch of ``table``."""
    base = table.baseline()
    rows = []
    for s in table.strategies():
        for e in table.epochs(s):
            t = table.select(s, e)
            rows.append(_stats(s, e, t.accuracy, t.baseline_accuracy))
    baseline = _stats(BASELINE, None, base.baseline_accuracy, None)
    summary = Summary(len(base), baseline, tuple(rows), {}, num_without_test=len(base) - baseline.n)
    return dataclasses.replace(summary, headline=headline_numbers(summary))


def headline_entries(summary: Summary) -> list[tuple[str, int, float]]:
    """(strategy, epoch number, mean accuracy) of every strategy in the headline, in order.

    TFF's example prints the mean baseline accuracy and each strategy's (``sgd``, ``adam``)
    mean accuracy after one epoch; so does fedp13n, for every strategy, at its first
    evaluated epoch (epoch 1 unless the strategy is evaluated every few epochs: the key
    names the epoch, so a strategy never drops out of the headline).
    """
    first: dict[str, tuple[int, float]] = {}
    for r in summary.rows:
        n = epoch_number(r.epoch)
        if r.strategy not in first or n < first[r.strategy][0]:
            first[r.strategy] = (n, r.mean)
    return [(name, n, mean) for name, (n, mean) in first.items()]


def headline_numbers(summary: Summary) -> dict[str, float]:
    """``baseline_accuracy`` and ``<strategy>_epoch_<n>_accuracy`` (:func:`headline_entries`)."""
    entries = {f"{name}_epoch_{n}_accuracy": mean for name, n, mean in headline_entries(summary)}
    return {"baseline_accuracy": summary.baseline.mean, **entries}


def epochs_label(epoch: int) -> str:
    """``1 -> '1 epoch'``, ``3 -> '3 epochs'``."""
    return f"{epoch} epoch{'s' * (epoch != 1)}"


#: The "epoch" of a per-client chosen epoch (early stopping) in the summary.
SELECTED = "selected"


def selected_stats(result: dict[str, Any]) -> tuple[Stats, ...]:
    """Test accuracy at each client's chosen epoch, for strategies that choose one (a
    ``selected`` entry in ``personalization.json``), paired with the baseline."""
    base = np.asarray(result[rd.BASELINE_KEY]["accuracy"], dtype=float)
    out = []
    for name, m in result.items():
        if isinstance(m, dict) and isinstance(m.get("selected"), dict):
            test = m["selected"].get("test", {})
            if "accuracy" in test:
                acc = np.asarray(test["accuracy"], dtype=float)
                out.append(_stats(name, SELECTED, acc, base))
    return tuple(out)


def summarize_run(run_dir: str | Path) -> Summary:
    run_dir = check_run_dir(run_dir)
    summary = summarize(read_per_client(Path(run_dir) / rd.PER_CLIENT))
    selected = ()
    p13n = Path(run_dir) / rd.PERSONALIZATION
    if p13n.is_file():
        try:
            selected = selected_stats(json.loads(p13n.read_text()))
        except (ValueError, KeyError, TypeError):
            raise ReportError(f"{p13n} is not a personalization result fedp13n wrote.") from None
    tuning = read_tuning(run_dir)  # its shape checked: a one-line ReportError
    own = Path(run_dir) / rd.OWN_STATE_PER_CLIENT
    accuracy = read_own_state(own) if own.is_file() else {}  # per protocol beside TFF's
    protocols = tuple(_stats(p, None, acc, None) for p, acc in accuracy.items() if len(acc))
    return dataclasses.replace(
        summary, selected=selected, tuning=tuning, protocols=protocols,
        protocol_clients={p: len(acc) for p, acc in accuracy.items()},
    )  # fmt: skip


def write_summary_json(run_dir: str | Path, summary: Summary | None = None) -> Path:
    """Write ``summary.json`` (headline numbers and every statistic) into ``run_dir``."""
    run_dir = Path(run_dir)
    summary = summary or summarize_run(run_dir)
    return atomic_write(run_dir / rd.SUMMARY, json.dumps(summary.to_dict(), indent=1) + "\n")


# -- presentation -------------------------------------------------------------------------------
def dataset_label(config: dict[str, Any]) -> str:
    """The data set of a run's config, for people: ``synthetic``, ``emnist``,
    ``emnist (digits only) from ../data``; empty without a config."""
    name = config.get("dataset")
    if not isinstance(name, str):
        return ""
    text = name + (" (digits only)" if config.get("only_digits") else "")
    data_dir = config.get("data_dir")
    return text + (f" from {data_dir}" if isinstance(data_dir, str) and data_dir else "")


def format_percent(x: float | None, decimals: int = 1) -> str:
    """``0.123 -> '12.3%'``; empty for a missing value."""
    return "" if x is None or not math.isfinite(x) else f"{100 * x:.{decimals}f}%"


def format_number(x: float | None, signed: bool = False, digits: int = 4) -> str:
    """A value with ``digits`` decimals (signed on request); ``n/a`` when missing."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def format_ci(low: float | None, high: float | None, digits: int = 4) -> str:
    """A 95% interval for people: ``[0.5463, 0.6312]`` (:func:`format_number`'s values)."""
    return f"[{format_number(low, digits=digits)}, {format_number(high, digits=digits)}]"


def table_rows(summary: Summary, compact: bool = False) -> list[dict[str, str]]:
    """The summary as display strings, one dict per row (shared by the CLI and the HTML).

    ``compact`` (for an 80-column terminal): 3 decimals, whole percentages, no median.
    """
    d, p = (3, 0) if compact else (4, 1)
    out = []
    chosen = {
        name: t.get("chosen_epoch")
        for name, t in ((summary.tuning or {}).get("strategies") or {}).items()
    }
    for r in (summary.baseline, *summary.rows, *summary.selected):
        epoch = "" if r.epoch is None else r.epoch
        label = "sel" if epoch == SELECTED else str(epoch_number(epoch)) if epoch else ""
        if epoch and chosen.get(r.strategy) == epoch:
            label += "*"  # the epoch chosen on the validation clients: the one to report
        lo, hi = format_number(r.ci_low, digits=d), format_number(r.ci_high, digits=d)
        row = {
            "strategy": r.strategy,
            "epoch": label,
            "clients": str(r.n),
            "mean": format_number(r.mean, digits=d),
            "95% CI": f"{lo}-{hi}" if compact else f"[{lo}, {hi}]",
            "median": format_number(r.median, digits=d),
            "mean gain": "" if r.mean_gain is None else format_number(r.mean_gain, True, d),
            "improved": format_percent(r.improved, p),
            "unchanged": format_percent(r.unchanged, p),
            "hurt": format_percent(r.hurt, p),
        }
        out.append({new: row[old] for old, new in _COMPACT.items()} if compact else row)
    return out


#: The columns of the compact table (an 80-column terminal) and their short names.
_COMPACT = {
    "strategy": "strategy",
    "epoch": "ep",
    "clients": "n",
    "mean": "mean",
    "95% CI": "95% CI",
    "mean gain": "gain",
    "improved": "improved",
    "unchanged": "same",
    "hurt": "hurt",
}


def tuning_lines(summary: Summary) -> list[str]:
    """Which clients chose which settings (empty when nothing was tuned)."""
    if not summary.tuning:
        return []
    n = len(summary.tuning.get("validation_client_ids", []))
    if not summary.tuning.get("strategies"):
        return [
            f"{n} validation clients (not among the clients reported above) chose the best "
            "strategy and epoch."
        ]
    out = [
        f"tuned on {n} validation clients (not among the clients reported above; "
        "* marks an epoch chosen there):"
    ]
    for name, t in summary.tuning.get("strategies", {}).items():
        epoch = f", reported at {epoch_text(t['chosen_epoch'])}" if t.get("chosen_epoch") else ""
        out.append(
            f"  {name}: {t['chosen']}{epoch} (validation accuracy "
            f"{format_number(t['validation_accuracy'])})"
        )
    return out


def format_headline(summary: Summary) -> str:
    """TFF's three numbers, one line each, values aligned."""
    lines = [("mean baseline accuracy", summary.headline["baseline_accuracy"])]
    for name, epoch, value in headline_entries(summary):
        lines.append((f"mean accuracy, {name} after {epochs_label(epoch)}", value))
    width = max(len(label) for label, _ in lines) + 2
    return "\n".join(f"{label + ':':<{width}}{format_number(v)}" for label, v in lines)


def format_summary(summary: Summary) -> str:
    """A plain-text table (logs, files); the CLI prints :func:`rich_table` instead."""
    rows = table_rows(summary)
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(r[c].ljust(width[c]) for c in cols) for r in rows]
    note = (
        f"{summary.clients_text()}; 95% CI: percentile bootstrap over clients "
        f"({BOOTSTRAP_RESAMPLES} resamples); improved/hurt versus the baseline on the same client."
    )
    return "\n".join([*lines, note, format_headline(summary)])


def rich_table(summary: Summary, title: str | None = None):
    """The summary as a compact ``rich.table.Table`` (fits 80 columns for short names)."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=title or f"Personalization accuracy over {summary.num_clients} clients",
        caption="95% CI: percentile bootstrap over clients. improved/same/hurt: versus the "
        "global model (baseline) on the same client.",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    rows = table_rows(summary, compact=True)
    for c in rows[0]:
        table.add_column(c, justify="left" if c == "strategy" else "right", no_wrap=True)
    for r in rows:
        table.add_row(*r.values())
    return table


def print_run_summary(run_dir: str | Path, console=None, summary: Summary | None = None) -> Summary:
    """Print the summary table and TFF's headline numbers of a run (``fedp13n run``'s end);
    ``summary``, when given, is the run's already computed summary."""
    from rich.console import Console

    console = console or Console()
    summary = summary or summarize_run(run_dir)
    console.print(rich_table(summary))
    if summary.num_without_test:
        console.print(left_out_note(summary.num_without_test, summary.num_clients) + ".")
    console.print(format_headline(summary), highlight=False)
    for line in tuning_lines(summary):
        console.print(line, highlight=False)
    for line in protocol_lines(summary):
        console.print(line, highlight=False)
    return summary


def protocol_rows(summary: Summary) -> list[dict[str, str]]:
    """The protocols beside TFF's as display strings (the report's table)."""
    return [
        {
            "protocol": r.strategy,
            "what it measures": rd.OWN_STATE_PROTOCOLS[r.strategy],
            "clients": str(r.n),
            "mean": format_number(r.mean),
            "95% CI": format_ci(r.ci_low, r.ci_high),
            "median": format_number(r.median),
        }
        for r in summary.protocols
    ]


def protocol_lines(summary: Summary) -> list[str]:
    """One line per protocol beside TFF's (empty for a run without one), saying how many
    of its clients had no test examples (left out of its mean)."""
    lines = []
    for stats, r in zip(summary.protocols, protocol_rows(summary), strict=True):
        total = summary.protocol_clients.get(stats.strategy, stats.n)
        left_out = left_out_note(total - stats.n, total)
        lines.append(
            f"{r['protocol']}: mean accuracy {r['mean']} {r['95% CI']} over {r['clients']} "
            f"clients ({r['what it measures']}; untuned)" + (f"; {left_out}" if left_out else "")
        )
    return lines
