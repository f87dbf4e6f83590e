"""The pFL methods table of bench/README.md, "pFL methods on the EMNIST sample (issue 20)".

Reads one ``fedp13n run --repeats N`` folder per method (as ``bench/methods/run_all.sh``
writes them: ``<root>/<method>/repeats.json`` and ``seed=<s>/fedavg_metrics.csv``) and
prints one markdown table: per method, TFF's protocol (the global model's baseline and the
best fine-tuning, its strategy, rate and epoch chosen on the validation clients, on the
held-out reported clients: each seed's ``summary.json`` ``best``; mean +- sample std over
seeds, with that row's helped / hurt shares versus the baseline averaged over seeds), the
two other protocols (``own_state``, ``new_clients``; mean +- std; and ``own_state``
weighted by the clients' test examples, as FL-bench / PFLlib and the papers aggregate it:
sum of accuracy x test examples over the sum of test examples, from each seed's
``per_client_own_state.csv``, mean +- std over seeds), the client budget
(training example-steps per seed: the sum of ``num_examples`` in ``fedavg_metrics.csv``,
mean over seeds) and the wall time per seed (``wall_seconds.txt``, written by run_all.sh,
over the seeds; else ``-``) beside the training rounds' own seconds.

    python bench/methods_table.py runs/methods [method ...]
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

ORDER = [
    "fedavg",
    "pfedavg",
    "fedprox",
    "fedper",
    "fedrep",
    "lg_fedavg",
    "ditto",
    "scaffold",
    "per_fedavg",
    "pfedme",
    "fedbn",
    "apfl",
]


def _fmt(row: dict | None) -> str:
    if row is None or row.get("mean") is None:
        return "-"
    std = "n/a" if row.get("std") is None else f"{row['std']:.3f}"
    return f"{row['mean']:.3f} +- {std}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _csv_sums(run: Path) -> tuple[float, float]:
    """(sum of num_examples, sum of seconds) over one run's FedAvg rounds."""
    with open(run / "fedavg_metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return sum(float(r["num_examples"]) for r in rows), sum(float(r["seconds"]) for r in rows)


def _weighted_own_state(run: Path) -> float | None:
    """Own-state accuracy over one run's clients, weighted by their test examples."""
    path = run / "per_client_own_state.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["protocol"] == "own_state" and r["accuracy"]]
    n = sum(float(r["num_test_examples"]) for r in rows)
    correct = sum(float(r["accuracy"]) * float(r["num_test_examples"]) for r in rows)
    return correct / n if n else None


def _over_seeds(values: list[float | None]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None}  # fmt: skip


def _best(run: Path) -> tuple[float, float, float]:
    """(mean, helped, hurt) of the fine-tuning chosen on the validation clients."""
    summary = json.loads((run / "summary.json").read_text())
    best = summary["best"]
    row = summary["strategies"][best["strategy"]][best["epoch"]]
    return best["mean"], row["improved"], row["hurt"]


def method_row(folder: Path) -> str:
    """One table line for one ``--repeats`` folder."""
    agg = json.loads((folder / "repeats.json").read_text())
    rows = agg["rows"]
    base = next(r for r in rows if r["kind"] == "baseline")
    best = [_best(folder / run) for run in agg["runs"]]
    proto = {r["name"]: r for r in rows if r["kind"] == "protocol"}
    sums = [_csv_sums(folder / run) for run in agg["runs"]]
    budget = statistics.mean(s[0] for s in sums)
    train_s = statistics.mean(s[1] for s in sums)
    wall_file = folder / "wall_seconds.txt"
    wall = f"{float(wall_file.read_text()) / agg['n_seeds']:.0f}" if wall_file.exists() else "-"
    cells = [
        folder.name,
        str(agg["n_seeds"]),
        _fmt(base),
        _fmt(_over_seeds([b[0] for b in best])),
        _pct(statistics.mean(b[1] for b in best)),
        _pct(statistics.mean(b[2] for b in best)),
        _fmt(proto.get("own_state")),
        _fmt(_over_seeds([_weighted_own_state(folder / run) for run in agg["runs"]])),
        _fmt(proto.get("new_clients")),
        f"{budget:,.0f}",
        f"{train_s:.0f}",
        wall,
    ]
    return "| " + " | ".join(cells) + " |"


def table(root: Path, methods: list[str] | None = None) -> str:
    """The markdown table over the methods' folders under root that have repeats.json."""
    names = methods or [m for m in ORDER if (root / m / "repeats.json").exists()]
    head = (
        "| method | seeds | TFF: baseline | TFF: best fine-tuning | helped | hurt | own_state | "
        "own_state, by examples | new_clients | example-steps / seed | training s / seed | "
        "wall s / seed |"
    )
    lines = [head, "|" + " --- |" * 12]
    lines += [method_row(root / m) for m in names]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python bench/methods_table.py RUNS_ROOT [method ...]", file=sys.stderr)
        return 2
    root = Path(argv[0])
    if not root.is_dir():
        print(f"{root} is not a folder: pass the folder run_all.sh wrote (runs/methods).",
              file=sys.stderr)  # fmt: skip
        return 2
    print(table(root, argv[1:] or None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
