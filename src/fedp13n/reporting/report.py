"""``fedp13n report``: one run directory -> ``report.html`` + the PNGs beside it.

The report answers the questions personalization is judged by (Jiang et al. 2019; TFF's
personalization evaluation): how did FedAvg train, how are per-client accuracies
distributed before and after fine-tuning, who is helped and who is hurt, how fast
accuracy improves with fine-tuning epochs, and whether the gain depends on how much
data a client has. Figures are closed after saving so long sessions do not leak memory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from fedp13n import __version__
from fedp13n.reporting import html, plots
from fedp13n.reporting.summary import (
    BOOTSTRAP_RESAMPLES,
    ReportError,
    ReportWarning,
    Summary,
    check_run_dir,
    epochs_label,
    headline_entries,
    read_config,
    read_fedavg_metrics,
    read_per_client,
    summarize_run,
    table_rows,
    tuning_lines,
    write_summary_json,
)
from fedp13n.rundir import layout as rd
from fedp13n.utils.fs import atomic_write

#: Section ids of the report, in page order (tests and links rely on them).
SECTIONS = (
    "headline",
    "summary",
    "fedavg",
    "distribution",
    "scatter",
    "by-epoch",
    "gain-vs-size",
    "config",
)
PNG_FILES = {
    "fedavg": "fedavg_curves.png",
    "distribution": "accuracy_cdf.png",
    "scatter": "baseline_vs_personalized.png",
    "by-epoch": "accuracy_by_epoch.png",
    "gain-vs-size": "gain_vs_train_size.png",
}


def headline_items(summary: Summary) -> list[tuple[str, str]]:
    h = summary.headline
    items = [("clients evaluated", str(summary.num_clients))]
    items.append(("mean baseline accuracy", f"{h['baseline_accuracy']:.4f}"))
    for name, epoch, value in headline_entries(summary):
        items.append((f"{name}, {epochs_label(epoch)}", f"{value:.4f}"))
    best = summary.best()
    if best is not None:
        items.append((f"best: {best.label}", f"{best.mean:.4f}"))
    return items


def _tuning_html(summary: Summary) -> str:
    """Which clients chose the tuned settings (nothing when nothing was tuned)."""
    lines = tuning_lines(summary)
    if not lines:
        return ""
    items = "".join(f"<li>{html.esc(line.strip())}</li>" for line in lines[1:])
    return f"<p>{html.esc(lines[0])}</p><ul>{items}</ul>"


def write_report(
    run_dir: str | Path, output_dir: str | Path | None = None, *, summary: Summary | None = None
) -> Path:
    """Write ``report.html``, its PNGs and ``summary.json`` to ``output_dir`` (default: the run).

    ``summary``: the run's summary when the caller already computed it (``fedp13n run``
    does, and has written ``summary.json`` into the run). Returns the path of the HTML
    file. Raises :class:`ReportError` for a missing or incomplete run directory.
    """
    run_dir = check_run_dir(run_dir)
    out = Path(output_dir) if output_dir is not None else run_dir
    if out.exists() and not out.is_dir():
        raise ReportError(f"output {out} exists and is not a directory.")
    out.mkdir(parents=True, exist_ok=True)

    table = read_per_client(run_dir / rd.PER_CLIENT)
    if summary is None or out != run_dir:
        summary = summary or summarize_run(run_dir)
        write_summary_json(out, summary)
    config_text, _ = read_config(run_dir)
    colors = plots.strategy_colors(table.strategies())

    figures = {}
    left_out: dict[str, str] = {}  # figure -> why it is not in the report
    fedavg_path = run_dir / rd.FEDAVG_METRICS
    fedavg = read_fedavg_metrics(fedavg_path) if fedavg_path.exists() else None
    if fedavg is not None and len(fedavg["round"]):
        figures["fedavg"] = plots.fedavg_curves({run_dir.name: fedavg})
    else:
        left_out["fedavg"] = (
            f"{run_dir} has no {rd.FEDAVG_METRICS} (the log of FedAvg's rounds)"
            if fedavg is None
            else f"{fedavg_path} has no rounds"
        )
        warnings.warn(
            f"{left_out['fedavg']}: the report has no FedAvg training curves; copy the "
            f"run's {rd.FEDAVG_METRICS} into {run_dir} to get them.",
            ReportWarning,
            stacklevel=2,
        )
    figures["distribution"] = plots.accuracy_cdf(table, colors)
    figures["scatter"] = plots.baseline_vs_personalized(table, colors)
    figures["by-epoch"] = plots.accuracy_by_epoch(plots.epoch_curves(summary), colors)
    figures["gain-vs-size"] = plots.gain_vs_train_size(table, colors)
    pngs = {key: plots.save_png(fig, out / PNG_FILES[key]) for key, fig in figures.items()}
    figures.clear()

    def img(key: str, alt: str, caption: str) -> str:
        if key in left_out:
            return html.missing(alt, f"{left_out[key]}. The figure would show: {caption}")
        if key not in pngs:
            return f"<p>Not available: {html.esc(caption)}</p>"
        return html.image(pngs[key], alt, PNG_FILES[key], caption)

    n = summary.num_clients
    sections = [
        html.Section(
            "headline",
            "Headline numbers",
            html.headline(headline_items(summary))
            + "<p>The numbers TFF's personalization example prints: the global model's "
            "mean per-client accuracy, and the mean after one epoch of each strategy "
            "(<code>sgd</code> and <code>adam</code> in TFF's; each client counts once); "
            "a strategy evaluated only every few epochs at its first evaluation.</p>"
            + _tuning_html(summary),
        ),
        html.Section(
            "summary",
            "Summary by strategy and epoch",
            html.table(
                table_rows(summary),
                caption=f"{n} clients. 95% CI of the mean: percentile bootstrap over clients "
                f"({BOOTSTRAP_RESAMPLES} resamples, fixed seed). Mean gain, improved / "
                "unchanged / hurt: personalized minus baseline accuracy on the same client "
                "(unchanged = difference within 1e-9).",
            ),
        ),
        html.Section(
            "fedavg",
            "FedAvg training",
            img(
                "fedavg",
                "FedAvg loss and accuracy per round",
                "Loss and accuracy of the clients' local training per round; dashed squares: "
                "the global model on held-out data where it was measured.",
            ),
        ),
        html.Section(
            "distribution",
            "Distribution of per-client accuracy",
            img(
                "distribution",
                "Empirical CDF of per-client accuracy",
                "Empirical CDF over clients, one panel per strategy; black: the global model. "
                "A curve to the right is better.",
            ),
        ),
        html.Section(
            "scatter",
            "Who is helped, who is hurt",
            img(
                "scatter",
                "Baseline vs personalized accuracy per client",
                "One dot per client; above the dashed diagonal the strategy helped that client.",
            ),
        ),
        html.Section(
            "by-epoch",
            "Accuracy by fine-tuning epoch",
            img(
                "by-epoch",
                "Mean accuracy by fine-tuning epoch with 95% confidence bands",
                "Mean per-client accuracy; epoch 0 is the global model; bands: 95% bootstrap CI.",
            ),
        ),
        html.Section(
            "gain-vs-size",
            "Gain versus client training-set size",
            img(
                "gain-vs-size",
                "Accuracy gain vs number of training examples",
                "Gain over the global model at each strategy's last epoch; diamonds (with 20 or "
                "more clients): mean gain of each quarter of the clients by training-set size.",
            ),
        ),
        html.Section(
            "config",
            "Configuration",
            f"<pre>{html.esc(config_text)}</pre>"
            if config_text
            else f"<p>No {rd.CONFIG} in the run directory.</p>",
        ),
    ]
    assert tuple(s.id for s in sections) == SECTIONS
    doc = html.page(
        f"Personalization report: {run_dir.name}",
        f"Run directory {run_dir.resolve()} — fedp13n {__version__}",
        sections,
    )
    path = out / rd.REPORT
    atomic_write(path, doc)
    return path
