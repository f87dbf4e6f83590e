"""``fedp13n compare``: several run directories side by side.

For comparing strategies, learning rates, numbers of local epochs...: a table of the
headline numbers of every run with the configuration keys that differ between the runs,
and plots of mean accuracy by fine-tuning epoch (per strategy, one curve per run), the
baseline against the best personalized accuracy per run, and the FedAvg curves overlaid.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedp13n import __version__
from fedp13n.reporting import html, plots
from fedp13n.reporting import summary as sm
from fedp13n.reporting.report import make_output_dir
from fedp13n.rundir import layout as rd
from fedp13n.utils.fs import atomic_write

COMPARISON = "comparison.html"
SECTIONS = ("runs", "details", "by-epoch", "best", "fedavg", "configs")
PNG_FILES = {
    "by-epoch": "compare_accuracy_by_epoch.png",
    "best": "compare_baseline_vs_best.png",
    "fedavg": "compare_fedavg_curves.png",
}


@dataclass(frozen=True)
class RunInfo:
    label: str
    path: Path
    summary: sm.Summary
    config_text: str
    config: dict[str, Any]
    fedavg: dict | None


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Short unique labels: the folder names, with parents added where names repeat."""
    labels = [p.name or str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
    return labels


def flatten_config(config: dict[str, Any]) -> dict[str, str]:
    """Config as key -> display string; strategies become ``strategies.<name>``."""
    out = {}
    for key, value in config.items():
        if key == "strategies" and isinstance(value, list):
            for s in value:
                desc = ", ".join(f"{k} {v}" for k, v in s.items() if k != "name")
                out[f"strategies.{s.get('name', '?')}"] = desc
        else:
            out[key] = str(value)
    return out


def _get(flat: dict[str, str], key: str) -> str:
    """A flattened value; an absent strategy is absent, any other absent key is the default."""
    return flat.get(key, "(absent)" if key.startswith("strategies.") else "(default)")


def load_runs(run_dirs: Sequence[str | Path]) -> list[RunInfo]:
    paths = [sm.check_run_dir(p, command="compare") for p in run_dirs]
    if len({p.resolve() for p in paths}) < len(paths):
        raise sm.ReportError("the same run directory is given twice; compare distinct runs.")
    runs = []
    for label, p in zip(run_labels(paths), paths, strict=True):
        text, cfg = sm.read_config(p)
        fed_path = p / rd.FEDAVG_METRICS
        fedavg = sm.read_fedavg_metrics(fed_path) if fed_path.exists() else None
        summary = sm.summarize_run(p)  # with tuning.json: the best is chosen on validation
        runs.append(RunInfo(label, p, summary, text, cfg, fedavg))
    return runs


_f = sm.format_number


def _mean_ci(s: sm.Stats) -> str:
    return f"{_f(s.mean)} {sm.format_ci(s.ci_low, s.ci_high)}"


def differences_table(runs: Sequence[RunInfo]) -> list[dict[str, str]]:
    """One row per run: the configuration keys (flattened) whose values are not the same in
    every run (absent counts)."""
    flat = [flatten_config(r.config) for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    diffs = [k for k in keys if len({_get(f, k) for f in flat}) > 1]
    if not diffs:
        return []
    return [
        {"run": r.label, **{k: _get(f, k) for k in diffs}} for r, f in zip(runs, flat, strict=True)
    ]


def headline_table(runs: Sequence[RunInfo]) -> list[dict[str, str]]:
    """One row per run: TFF's headline numbers and the best strategy/epoch.

    Every row has every column (a strategy, at its first evaluated epoch, that a run lacks
    is ``n/a`` there): the table's columns are those of its first row.
    """
    headline_columns = list(
        dict.fromkeys(
            f"{name} epoch {epoch}"
            for r in runs
            for name, epoch, _ in sm.headline_entries(r.summary)
        )
    )
    rows = []
    for r in runs:
        s = r.summary
        row = {"run": r.label}
        row["clients"] = str(s.num_clients)
        row["baseline mean [95% CI]"] = _mean_ci(s.baseline)
        values = {f"{name} epoch {epoch}": v for name, epoch, v in sm.headline_entries(s)}
        row |= {c: _f(values.get(c)) for c in headline_columns}
        choice = s.best_choice()
        if choice is not None:
            best = choice.stats
            row["best"] = best.label
            row["how best was chosen"] = choice.how
            row["best mean [95% CI]"] = _mean_ci(best)
            row["best gain"] = _f(best.mean_gain, signed=True)
            row["improved / hurt"] = f"{best.improved:.0%} / {best.hurt:.0%}"
        rows.append(row)
    columns = list(dict.fromkeys(c for row in rows for c in row))
    return [{c: row.get(c, "") for c in columns} for row in rows]


#: The columns of :func:`~fedp13n.reporting.summary.table_rows` in the comparison's details.
_DETAIL = ("strategy", "epoch", "mean", "95% CI", "median", "mean gain", "improved", "hurt")


def detail_table(runs: Sequence[RunInfo]) -> list[dict[str, str]]:
    """One row per run, strategy and epoch: the rows of each run's summary table."""
    rows = []
    for r in runs:
        shown = sm.table_rows(r.summary)[1 : 1 + len(r.summary.rows)]  # not baseline, selected
        for st, row in zip(r.summary.rows, shown, strict=True):
            epoch = str(sm.epoch_number(st.epoch))  # without the mark of a tuned epoch
            rows.append({"run": r.label, **{c: row[c] for c in _DETAIL}, "epoch": epoch})
    return rows


def mixed_datasets(runs: Sequence[RunInfo]) -> str | None:
    """A warning when the runs do not all use the same data set (None when they do)."""
    labels = {r.label: sm.dataset_label(r.config) or "unknown (no config.toml)" for r in runs}
    if len(set(labels.values())) < 2:
        return None
    listed = "; ".join(f"{run}: {data}" for run, data in labels.items())
    return (
        f"the runs use different data sets ({listed}): their accuracies are not comparable "
        "with each other."
    )


#: The comparison's figure sections: id, title, the image's alt text, its caption.
FIGURES = (
    (
        "by-epoch",
        "Accuracy by fine-tuning epoch",
        "Mean accuracy by epoch per run and strategy",
        "One panel per strategy, one curve per run; epoch 0 is the run's global model.",
    ),
    (
        "best",
        "Baseline vs best personalized",
        "Baseline and best personalized accuracy per run",
        "Grey: the global model; blue: the best strategy/epoch of the run (labelled).",
    ),
    (
        "fedavg",
        "FedAvg training",
        "FedAvg curves of every run",
        "FedAvg loss and accuracy per round.",
    ),
)


def write_comparison(run_dirs: Sequence[str | Path], output_dir: str | Path) -> Path:
    """Write ``comparison.html`` and its PNGs into ``output_dir``; return the HTML path."""
    if len(run_dirs) < 2:
        raise sm.ReportError("compare needs at least two run directories.")
    runs = load_runs(run_dirs)
    out = make_output_dir(output_dir)
    mixed = mixed_datasets(runs)
    if mixed:
        warnings.warn(mixed, sm.ReportWarning, stacklevel=2)
    pngs, no_fedavg = _write_figures(runs, out)
    what = f"FedAvg curves of {', '.join(no_fedavg)}"
    why = f"These runs have no {rd.FEDAVG_METRICS} (or no rounds in it)."
    notes = {"fedavg": html.missing(what, why)} if no_fedavg else {}

    configs = "".join(
        f"<details><summary>{html.esc(r.label)}: <code>{html.esc(r.path.resolve())}</code>"
        f"</summary><pre>{html.esc(r.config_text or '(no config.toml)')}</pre></details>"
        for r in runs
    )
    sections = [
        _runs_section(runs, mixed),
        html.Section("details", "Every strategy and epoch", html.table(detail_table(runs))),
        *html.figure_sections(FIGURES, pngs, PNG_FILES, notes),
        html.Section("configs", "Configurations", configs),
    ]
    assert tuple(s.id for s in sections) == SECTIONS
    doc = html.page(
        f"Comparison of {len(runs)} runs",
        f"{', '.join(r.label for r in runs)} — fedp13n {__version__}",
        sections,
    )
    return atomic_write(out / COMPARISON, doc)


def _write_figures(runs: Sequence[RunInfo], out: Path) -> tuple[dict[str, Path], list[str]]:
    """The comparison's figures as PNGs in ``out`` (figure -> file) and the runs without a
    FedAvg log (left out of its curves, said as a warning)."""
    colors = plots.strategy_colors([r.label for r in runs])
    panels: dict[str, dict[str, tuple]] = {}
    for r in runs:
        for strategy, curve in plots.epoch_curves(r.summary).items():
            panels.setdefault(strategy, {})[r.label] = curve
    figures = {"by-epoch": plots.accuracy_by_epoch_panels(panels, colors)}
    bars = _best_bars(runs)
    if bars:
        figures["best"] = plots.headline_bars(bars)
    fed = {r.label: r.fedavg for r in runs if r.fedavg is not None and len(r.fedavg["round"])}
    if fed:
        figures["fedavg"] = plots.fedavg_curves(fed, colors)
    no_fedavg = [r.label for r in runs if r.label not in fed]
    if no_fedavg:
        warnings.warn(
            f"no FedAvg log ({rd.FEDAVG_METRICS}, or no rounds in it) in run(s) "
            f"{', '.join(no_fedavg)}: the comparison's FedAvg curves leave them out.",
            sm.ReportWarning,
            stacklevel=3,  # write_comparison's caller
        )
    return {k: plots.save_png(fig, out / PNG_FILES[k]) for k, fig in figures.items()}, no_fedavg


def _best_bars(runs: Sequence[RunInfo]) -> list[tuple[str, sm.Stats, sm.Stats, str]]:
    """Each run's label, its baseline's and its best personalized statistics, and the
    best's label (runs without a best left out)."""
    bars = []
    for r in runs:
        choice = r.summary.best_choice()
        if choice is not None:
            how = " (on validation)" if choice.held_out else " (not held out)"
            bars.append((r.label, r.summary.baseline, choice.stats, choice.stats.label + how))
    return bars


def _runs_section(runs: Sequence[RunInfo], mixed: str | None) -> html.Section:
    """The runs' headline numbers side by side and their configuration differences."""
    differences = differences_table(runs)
    return html.Section(
        "runs",
        "Runs side by side",
        (html.note("Different data sets.", mixed) if mixed else "")
        + html.table(
            headline_table(runs),
            caption="Means are over clients; 95% CI: percentile bootstrap over clients. "
            "Best: the strategy/epoch with the highest mean accuracy on the run's validation "
            f"clients where it has them, else the {sm.NOT_HELD_OUT} (picked on the clients it "
            "is reported on, so optimistic); improved / hurt versus the global model on "
            "the same client.",
        )
        + "<h3>Configuration differences</h3>"
        + (
            html.table(
                differences,
                caption="Keys whose values differ between the runs; (default): not set in that "
                "run's config, (absent): the run has no such strategy.",
            )
            if differences
            else "<p>The runs have the same configuration.</p>"
        ),
    )
