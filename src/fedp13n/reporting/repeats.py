"""Mean and standard deviation over seeds: the papers' "mean +- std over 3 runs".

``fedp13n run --repeats N`` runs one configuration with N seeds, each a normal run
directory; this module reads their ``summary.json`` files and writes ``repeats.json`` and
``repeats.md`` beside them. For the global model (``baseline``), every strategy at every
evaluated epoch (and a per-client chosen epoch, ``selected``) and every protocol beside
TFF's (``summary.json``'s ``other_protocols``), it gives:

* the mean over seeds of each run's mean accuracy over clients, and the **sample**
  standard deviation over seeds (``ddof=1``; none for a single seed), with the number of
  seeds that have the row;
* beside it, each seed's own mean with its 95% interval over clients (a bootstrap,
  :mod:`fedp13n.reporting.summary`) and its helped / hurt shares versus the global model.

The two spreads answer different questions: the interval is the uncertainty from
*which clients* were evaluated in one run; the standard deviation is the variation from
*the seed* (training randomness, and which clients were sampled).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedp13n.reporting.summary import (
    BASELINE,
    SELECTED,
    epoch_text,
    format_ci,
    format_number,
    format_percent,
)
from fedp13n.rundir import layout as rd
from fedp13n.rundir.readers import ReportError
from fedp13n.utils.fs import atomic_write

REPEATS_JSON = "repeats.json"
REPEATS_MD = "repeats.md"
#: What the standard deviation is (written into repeats.json and repeats.md).
STD_NOTE = "sample standard deviation over seeds (ddof=1); none for a single seed"
#: The per-run statistics kept beside the aggregate, per seed.
_PER_SEED = ("n", "mean", "ci_low", "ci_high", "improved", "hurt")


def seed_rows(summary: dict[str, Any]) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    """One run's ``summary.json`` as ``(kind, name, epoch) -> statistics``: kind is
    ``baseline``, ``strategy`` or ``protocol``, in the summary's order."""
    out: dict[tuple[str, str, str | None], dict[str, Any]] = {
        ("baseline", BASELINE, None): summary["baseline"]
    }
    for name, epochs in summary["strategies"].items():
        for epoch, stats in epochs.items():
            out["strategy", name, epoch] = stats
    for name, stats in (summary.get("selected") or {}).items():
        out["strategy", name, SELECTED] = stats
    for name, stats in (summary.get("other_protocols") or {}).items():
        if isinstance(stats, dict) and "mean" in stats:
            out["protocol", name, None] = stats
    return out


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    mean = float(x.mean()) if len(x) else None
    std = float(x.std(ddof=1)) if len(x) > 1 else None
    return mean, std


def aggregate(summaries: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """``repeats.json``'s content from one ``summary.json`` per seed (same order)."""
    if not summaries or len(summaries) != len(seeds):
        raise ValueError("aggregate needs one summary per seed, and at least one.")
    per_seed = [seed_rows(s) for s in summaries]
    keys = list(dict.fromkeys(k for rows in per_seed for k in rows))
    rows = []
    for kind, name, epoch in keys:
        have = [(seed, rows[kind, name, epoch]) for seed, rows in zip(seeds, per_seed, strict=True)
                if (kind, name, epoch) in rows]  # fmt: skip
        mean, std = _mean_std([s.get("mean") for _, s in have])
        helped, _ = _mean_std([s.get("improved") for _, s in have])
        hurt, _ = _mean_std([s.get("hurt") for _, s in have])
        rows.append(
            {
                "kind": kind,
                "name": name,
                "epoch": epoch,
                "mean": mean,
                "std": std,
                "n_seeds": len(have),
                "helped_mean": helped,
                "hurt_mean": hurt,
                "per_seed": [
                    {"seed": seed, **{k: s.get(k) for k in _PER_SEED}} for seed, s in have
                ],
            }
        )
    return {"seeds": list(seeds), "n_seeds": len(seeds), "std": STD_NOTE, "rows": rows}


def row_label(row: dict[str, Any]) -> str:
    """``baseline`` (the global model), ``sgd, epoch 3``, ``protocol own_state``."""
    if row["kind"] == "baseline":
        return "baseline (global model)"
    if row["kind"] == "protocol":
        return f"protocol {row['name']}"
    return f"{row['name']}, {epoch_text(row['epoch'])}"


def repeats_markdown(agg: dict[str, Any], note: str = "") -> str:
    """The table: one row per baseline / strategy-epoch / protocol, "mean +- std over N
    seeds", then each seed's mean [95% CI] helped / hurt."""
    seeds = agg["seeds"]
    head = f"| row | mean +- std over {agg['n_seeds']} seeds | seeds | helped | hurt | "
    head += " | ".join(f"seed {s}: mean [95% CI] helped/hurt" for s in seeds) + " |"
    lines = [head, "| --- " * (5 + len(seeds)) + "|"]
    for row in agg["rows"]:
        by_seed = {p["seed"]: p for p in row["per_seed"]}
        cells = [_seed_cell(by_seed.get(s)) for s in seeds]
        mean_std = f"{format_number(row['mean'])} +- {format_number(row['std'])}"  # +- n/a: 1 seed
        lines.append(
            f"| {row_label(row)} | {mean_std} | {row['n_seeds']} | "
            f"{_pct(row['helped_mean'])} | {_pct(row['hurt_mean'])} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"Mean accuracy over clients, averaged over seeds {', '.join(map(str, seeds))}; +- is "
        f"the {STD_NOTE}. Per seed: that run's mean with its 95% interval over clients "
        "(percentile bootstrap) and the shares of clients helped / hurt versus the global "
        "model; helped / hurt columns: their mean over seeds.",
    ]
    if note:
        lines.append(note)
    return "\n".join(lines) + "\n"


def _seed_cell(p: dict[str, Any] | None) -> str:
    if p is None:
        return "-"
    text = f"{format_number(p['mean'])} {format_ci(p['ci_low'], p['ci_high'])}"
    if p.get("improved") is not None:
        text += f" {_pct(p['improved'])}/{_pct(p['hurt'])}"
    return text


def _pct(x: float | None) -> str:
    return format_percent(x, 0) or "-"


def read_run_summary(run_dir: Path) -> dict[str, Any]:
    """A finished run's ``summary.json``; a one-line ReportError when absent or unreadable."""
    path = run_dir / rd.SUMMARY
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{run_dir} has no {rd.SUMMARY}: the run has not finished.") from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise ReportError(f"{path} is not a run summary fedp13n wrote.") from None
    if not (isinstance(summary, dict) and {"baseline", "strategies"} <= set(summary)):
        raise ReportError(f"{path} is not a run summary fedp13n wrote.")
    return summary


def write_repeats(
    out: Path, run_dirs: Sequence[Path], seeds: Sequence[int], note: str = ""
) -> tuple[Path, dict[str, Any]]:
    """Write ``repeats.json`` and ``repeats.md`` into ``out`` from the finished runs
    ``run_dirs`` (one per seed); returns the markdown's path and the aggregate."""
    agg = aggregate([read_run_summary(Path(d)) for d in run_dirs], seeds)
    agg["runs"] = [str(Path(d).relative_to(out)) if Path(d).is_relative_to(out) else str(d)
                   for d in run_dirs]  # fmt: skip
    if note:
        agg["note"] = note
    atomic_write(out / REPEATS_JSON, json.dumps(agg, indent=1) + "\n")
    return atomic_write(out / REPEATS_MD, repeats_markdown(agg, note)), agg
