"""The three claims of Jiang et al. 2019 ("Improving Federated Learning Personalization via
Model Agnostic Meta Learning"), judged on finished runs: a markdown table.

Per task, three run directories (``fedp13n run`` outputs), in this order:

* ``fedavg``: FedAvg, then personalization (``bench/paper/fedavg.toml``);
* ``centralized``: the same model trained by SGD on the pooled training clients, then the
  same personalization (``bench/paper/centralized.toml``);
* ``pfedavg``: Personalized FedAvg (FedAvg, then Reptile), then the same personalization
  (``bench/paper/pfedavg.toml``).

``-`` (or nothing) stands for a run not made; the claims that need it say so. Every run
must report on the same clients (same seed and split): the claims compare runs client by
client.

For each run: the initial accuracy (the global model on the reported clients), the
personalized accuracy of the best strategy and epoch **chosen on the run's validation
clients** (``Summary.best_choice``: never on the reported clients when the run has
validation clients; a run without them is marked "not held out"), the gain over the
initial model, every mean with its 95% percentile-bootstrap interval over clients (the
interval of ``fedp13n report``), and the shares of clients helped / hurt.

The claims, each a verdict computed from the numbers:

1. *FedAvg behaves like meta-learning*: personalizing the FedAvg model gains; the mean
   per-client gain of the ``fedavg`` run.
2. *Personalized FedAvg gives a model that personalizes better* (even if its initial
   accuracy is not higher): per client, ``pfedavg``'s personalized accuracy minus
   ``fedavg``'s (the initial difference is shown beside it).
3. *A centrally trained model gains less from personalization than the FedAvg one*: per
   client, ``fedavg``'s gain minus ``centralized``'s gain.

A verdict reads the 95% interval of the mean (a paired bootstrap over the same clients
for claims 2 and 3: tighter than asking whether two runs' own intervals overlap, and the
right test for two models measured on the same clients): **supported** when the interval
lies above 0, **not supported** when it lies below 0, **inconclusive** when it contains 0.

Run (``--task`` again for another task, e.g. ``--task shakespeare=A,B,C``)::

    python bench/paper_claims.py --task \
        emnist=runs/paper/emnist-fedavg,runs/paper/emnist-centralized,runs/paper/emnist-pfedavg
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedp13n.reporting.summary import (
    ReportError,
    bootstrap_mean_ci,
    epoch_text,
    read_fedavg_metrics,
    read_per_client,
    summarize_run,
)
from fedp13n.rundir import layout as rd

ROLES = ("fedavg", "centralized", "pfedavg")
ROLE_LABELS = {
    "fedavg": "FedAvg",
    "centralized": "centralized",
    "pfedavg": "Personalized FedAvg",
}
MISSING = "-"
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
CLAIMS = (
    "1. FedAvg behaves like meta-learning: personalizing the FedAvg model gains",
    "2. Personalized FedAvg gives a model that personalizes better than FedAvg's",
    "3. The centrally trained model gains less from personalization than the FedAvg one",
)


class ClaimsError(ValueError):
    """Bad input: the message names the problem and the fix."""


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% interval."""

    mean: float
    low: float
    high: float

    def text(self, signed: bool = False) -> str:
        fmt = "{:+.3f}" if signed else "{:.3f}"
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


@dataclass(frozen=True)
class RunResult:
    """One run: its numbers on the reported clients and each client's initial and
    personalized accuracy (in ``client_ids`` order)."""

    role: str
    path: str
    client_ids: tuple[str, ...]
    initial: Interval
    personalized: Interval
    gain: Interval
    helped: float
    hurt: float
    choice: str  # the strategy, its tuned setting and epoch
    held_out: bool
    num_validation: int
    example_steps: float  # training examples processed (sum of the rounds' num_examples)
    initial_per_client: np.ndarray
    personalized_per_client: np.ndarray


def verdict(interval: Interval) -> str:
    """supported (interval above 0), not supported (below 0), else inconclusive."""
    if not all(math.isfinite(x) for x in (interval.mean, interval.low, interval.high)):
        return INCONCLUSIVE + " (no numbers)"
    if interval.low > 0:
        return SUPPORTED
    if interval.high < 0:
        return NOT_SUPPORTED
    return INCONCLUSIVE + " (the 95% CI contains 0)"


def _choice_text(summary, strategy: str, epoch: str) -> str:
    chosen = ((summary.tuning or {}).get("strategies") or {}).get(strategy, {}).get("chosen")
    setting = ", ".join(f"{k} {v}" for k, v in (chosen or {}).items())
    return f"{strategy}{f' ({setting})' if setting else ''}, {epoch_text(epoch)}"


def _example_steps(run_dir: Path) -> float:
    path = run_dir / rd.FEDAVG_METRICS
    if not path.is_file():
        return math.nan
    return float(np.nansum(read_fedavg_metrics(path).get("num_examples", np.array([math.nan]))))


def read_run(role: str, path: str) -> RunResult:
    """A finished run's numbers (a ReportError, one line, when it cannot be read)."""
    run_dir = Path(path)
    summary = summarize_run(run_dir)
    choice = summary.best_choice()
    if choice is None:
        raise ReportError(f"{run_dir}: no strategy has an accuracy; is the run finished?")
    best = choice.stats
    table = read_per_client(run_dir / rd.PER_CLIENT).select(best.strategy, best.epoch)
    order = np.argsort(table.client_id.astype(str), kind="stable")
    n_val = len((summary.tuning or {}).get("validation_client_ids") or ())
    return RunResult(
        role=role,
        path=path,
        client_ids=tuple(table.client_id[order].tolist()),
        initial=Interval(summary.baseline.mean, summary.baseline.ci_low, summary.baseline.ci_high),
        personalized=Interval(best.mean, best.ci_low, best.ci_high),
        gain=Interval(best.mean_gain, best.gain_ci_low, best.gain_ci_high),
        helped=best.improved,
        hurt=best.hurt,
        choice=_choice_text(summary, best.strategy, best.epoch),
        held_out=choice.held_out,
        num_validation=n_val,
        example_steps=_example_steps(run_dir),
        initial_per_client=table.baseline_accuracy[order].astype(float),
        personalized_per_client=table.accuracy[order].astype(float),
    )


def paired(values: np.ndarray, key: tuple[str, ...]) -> Interval:
    """Mean of per-client differences and its percentile-bootstrap interval."""
    values = values[np.isfinite(values)]
    if not len(values):
        return Interval(math.nan, math.nan, math.nan)
    low, high = bootstrap_mean_ci(values, key=("paper_claims", *key))
    return Interval(float(values.mean()), low, high)


def check_same_clients(a: RunResult, b: RunResult) -> None:
    if a.client_ids != b.client_ids:
        common = len(set(a.client_ids) & set(b.client_ids))
        raise ClaimsError(
            f"{a.path} and {b.path} report different clients ({common} in common of "
            f"{len(a.client_ids)} and {len(b.client_ids)}): the claims compare runs client by "
            "client; run them with the same seed and client split."
        )


def claims(task: str, runs: dict[str, RunResult]) -> list[tuple[str, str]]:
    """(measured, verdict) of the three claims; "not run" where a run is missing."""
    present = list(runs.values())
    for r in present[1:]:
        check_same_clients(present[0], r)
    out: list[tuple[str, str]] = []
    fed, cen, pfed = (runs.get(role) for role in ROLES)
    if fed is None:
        return [("", "not run (needs the fedavg run)")] * 3
    gain = paired(fed.personalized_per_client - fed.initial_per_client, (task, "1"))
    out.append((f"gain {gain.text(signed=True)}", verdict(gain)))
    if pfed is None:
        out.append(("", "not run (needs the pfedavg run)"))
    else:
        diff = paired(pfed.personalized_per_client - fed.personalized_per_client, (task, "2"))
        init = paired(pfed.initial_per_client - fed.initial_per_client, (task, "2i"))
        out.append(
            (
                f"personalized, Personalized FedAvg - FedAvg {diff.text(signed=True)} "
                f"(initial {init.text(signed=True)})",
                verdict(diff),
            )
        )
    if cen is None:
        out.append(("", "not run (needs the centralized run)"))
    else:
        fed_gain = fed.personalized_per_client - fed.initial_per_client
        cen_gain = cen.personalized_per_client - cen.initial_per_client
        diff = paired(fed_gain - cen_gain, (task, "3"))
        out.append((f"gain, FedAvg - centralized {diff.text(signed=True)}", verdict(diff)))
    return out


def _percent(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def _steps(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:,.0f}"


def runs_table(tasks: dict[str, dict[str, RunResult]]) -> list[str]:
    """One markdown row per run."""
    lines = [
        "| task | run | training example-steps | initial [95% CI] | best strategy (chosen on "
        "validation clients) | personalized [95% CI] | gain [95% CI] | helped | hurt |",
        "| --- | --- | ---: | --- | --- | --- | --- | ---: | ---: |",
    ]
    for task, runs in tasks.items():
        for role in ROLES:
            r = runs.get(role)
            if r is None:
                lines.append(f"| {task} | {ROLE_LABELS[role]} | not run | | | | | | |")
                continue
            how = (
                f"{r.choice} (on {r.num_validation})"
                if r.held_out
                else f"{r.choice} (**not held out**: chosen on the reported clients)"
            )
            lines.append(
                f"| {task} | {ROLE_LABELS[role]} | {_steps(r.example_steps)} | "
                f"{r.initial.text()} | {how} | {r.personalized.text()} | "
                f"{r.gain.text(signed=True)} | {_percent(r.helped)} | {_percent(r.hurt)} |"
            )
    return lines


def claims_table(tasks: dict[str, dict[str, RunResult]]) -> list[str]:
    """One markdown row per claim, one column per task: the verdict and what it reads."""
    per_task = {task: claims(task, runs) for task, runs in tasks.items()}
    lines = [
        "| claim | " + " | ".join(tasks) + " |",
        "| --- | " + " | ".join("---" for _ in tasks) + " |",
    ]
    for i, claim in enumerate(CLAIMS):
        cells = []
        for task in tasks:
            measured, text = per_task[task][i]
            cells.append(f"**{text}**" + (f": {measured}" if measured else ""))
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return lines


def parse_task(spec: str) -> tuple[str, dict[str, str]]:
    """``name=fedavg_dir,centralized_dir,pfedavg_dir`` (``-`` or empty: not run)."""
    name, eq, dirs = spec.partition("=")
    parts = dirs.split(",")
    if not eq or not name.strip() or len(parts) != len(ROLES):
        raise ClaimsError(
            f"--task {spec!r}: expected NAME=FEDAVG_DIR,CENTRALIZED_DIR,PFEDAVG_DIR (three "
            "run directories in this order, '-' for one not run)."
        )
    paths = {role: p.strip() for role, p in zip(ROLES, parts, strict=True)}
    return name.strip(), {r: p for r, p in paths.items() if p not in ("", MISSING)}


def markdown(task_specs: list[str]) -> str:
    """The runs table and the claims table for ``--task`` specs."""
    tasks: dict[str, dict[str, RunResult]] = {}
    for spec in task_specs:
        name, paths = parse_task(spec)
        if name in tasks:
            raise ClaimsError(f"--task {name!r} is given twice; give each task once.")
        tasks[name] = {role: read_run(role, path) for role, path in paths.items()}
    note = (
        "Means over the reported clients with 95% percentile-bootstrap intervals over "
        "clients; helped / hurt: share of clients whose accuracy the chosen strategy raised / "
        "lowered. Verdicts: the claim's 95% interval (paired over the same clients for claims "
        "2 and 3) above 0: supported; below 0: not supported; containing 0: inconclusive."
    )
    return "\n".join([*runs_table(tasks), "", *claims_table(tasks), "", note]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task",
        action="append",
        required=True,
        metavar="NAME=FEDAVG,CENTRALIZED,PFEDAVG",
        help="a task and its three run directories ('-' for one not run); repeat per task",
    )
    args = parser.parse_args(argv)
    try:
        text = markdown(args.task)
    except (ClaimsError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
