"""``fedp13n report``: one run directory -> ``report.html`` + the PNGs beside it.

The report answers the questions personalization is judged by (Jiang et al. 2019; TFF's
personalization evaluation): how did FedAvg train, how are per-client accuracies
distributed before and after fine-tuning, who is helped and who is hurt, how fast
accuracy improves with fine-tuning epochs, and whether the gain depends on how much
data a client has. Figures are closed after saving so long sessions do not leak memory.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedp13n import __version__
from fedp13n.reporting import html, plots
from fedp13n.reporting import summary as sm
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
#: Sections only some runs have (after "summary"): the protocols beside TFF's.
OPTIONAL_SECTIONS = ("protocols",)
PNG_FILES = {
    "fedavg": "fedavg_curves.png",
    "distribution": "accuracy_cdf.png",
    "scatter": "baseline_vs_personalized.png",
    "by-epoch": "accuracy_by_epoch.png",
    "gain-vs-size": "gain_vs_train_size.png",
}

#: The report's figure sections: id, title, the image's alt text, its caption.
FIGURES = (
    (
        "fedavg",
        "FedAvg training",
        "FedAvg loss and accuracy per round",
        "Loss and accuracy of the clients' local training per round; dashed squares: "
        "the global model on held-out data where it was measured.",
    ),
    (
        "distribution",
        "Distribution of per-client accuracy",
        "Empirical CDF of per-client accuracy",
        "Empirical CDF over clients, one panel per strategy; black: the global model. "
        "A curve to the right is better.",
    ),
    (
        "scatter",
        "Who is helped, who is hurt",
        "Baseline vs personalized accuracy per client",
        "One dot per client; above the dashed diagonal the strategy helped that client.",
    ),
    (
        "by-epoch",
        "Accuracy by fine-tuning epoch",
        "Mean accuracy by fine-tuning epoch with 95% confidence bands",
        "Mean per-client accuracy, one panel per strategy (the same y axis); epoch 0 "
        "is the global model; bands: 95% bootstrap CI.",
    ),
    (
        "gain-vs-size",
        "Gain versus client training-set size",
        "Accuracy gain vs number of training examples",
        "Gain over the global model at each strategy's last epoch; diamonds (with 20 or "
        "more clients): mean gain of each quarter of the clients by training-set size.",
    ),
)


def headline_items(summary: sm.Summary) -> list[tuple[str, str]]:
    h = summary.headline
    items = [("clients evaluated", str(summary.num_clients))]
    if summary.num_without_test:  # their accuracy is 0/0: not in any mean
        items.append(
            ("without test examples (left out of the means)", str(summary.num_without_test))
        )
    items.append(("mean baseline accuracy", f"{h['baseline_accuracy']:.4f}"))
    for name, epoch, value in sm.headline_entries(summary):
        items.append((f"{name}, {sm.epochs_label(epoch)}", f"{value:.4f}"))
    choice = summary.best_choice()
    if choice is not None:
        items.append((f"{choice.how}: {choice.stats.label}", f"{choice.stats.mean:.4f}"))
    return items


def _best_note(summary: sm.Summary) -> str:
    """How the best strategy/epoch was chosen, in a sentence (nothing without one)."""
    choice = summary.best_choice()
    if choice is None:
        return ""
    if choice.held_out:
        return (
            f"<p>Best: {html.esc(choice.stats.label)}, the highest mean accuracy on the "
            "validation clients (" + sm.format_number(choice.validation_mean) + "), which are not "
            "reported on; its number here is measured on the other clients.</p>"
        )
    return (
        f"<p>{html.esc(choice.stats.label)} is the {html.esc(sm.NOT_HELD_OUT)}: it is picked on "
        "the same clients it is reported on, so its number overstates what choosing a strategy "
        "this way would give on new clients. Set <code>num_val_clients</code> to choose on "
        "held-out validation clients.</p>"
    )


#: The report's warning on synthetic data (its top says it).
SYNTHETIC_NOTE = (
    "Synthetic writers: this report demonstrates the pipeline at work; it is not a result "
    "about personalization (claims need real data, e.g. federated EMNIST-62)."
)


def _total_rounds(config: Mapping[str, Any]) -> int | None:
    rounds = config.get("rounds")
    stages = config.get("stages")
    if isinstance(stages, list) and stages:
        per = [st.get("rounds", rounds) if isinstance(st, dict) else None for st in stages]
        return sum(per) if all(isinstance(r, int) for r in per) else None
    return rounds if isinstance(rounds, int) else None


def _split_counts(run_dir: Path) -> dict[str, int]:
    """Clients per group of ``split.json`` (empty when absent or not one fedp13n wrote)."""
    try:
        split = json.loads((run_dir / rd.SPLIT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(split, dict):
        return {}
    return {k: len(v) for k, v in split.items() if isinstance(v, list)}


def run_facts(run_dir: str | Path, config: Mapping[str, Any], summary: sm.Summary) -> list[str]:
    """The report's first lines: the data set, the rounds and the clients (from the config
    and ``split.json``; what a run lacks is left out)."""
    facts = []
    data = sm.dataset_label(config)
    if data:
        facts.append(f"Data: {data}.")
    split = _split_counts(Path(run_dir))
    rounds = _total_rounds(config)
    if rounds is not None:
        text = f"FedAvg: {rounds} round{'s' * (rounds != 1)}"
        per_round = config.get("clients_per_round")
        stages = config.get("stages")
        if isinstance(per_round, int) and not stages:
            text += f" of {per_round} clients"
        if isinstance(stages, list) and len(stages) > 1:
            names = [st.get("name") for st in stages if isinstance(st, dict)]
            named = all(isinstance(n, str) for n in names)
            text += f" in {len(stages)} stages" + (f" ({', '.join(names)})" if named else "")
        if "fedavg" in split:
            text += f", drawn from {split['fedavg']} FedAvg clients"
        facts.append(text + ".")
    text = f"Personalization: {summary.num_clients} clients evaluated"
    if "personalization" in split:
        text += f" (of {split['personalization']} personalization clients)"
    if summary.num_without_test:
        text += f"; {sm.left_out_note(summary.num_without_test, summary.num_clients)}"
    if split.get("validation"):
        text += f"; {split['validation']} validation clients held out for choices"
    facts.append(text + ".")
    return facts


def _facts_html(run_dir: Path, config: Mapping[str, Any], summary: sm.Summary) -> str:
    lines = "".join(f"<li>{html.esc(f)}</li>" for f in run_facts(run_dir, config, summary))
    out = f'<ul class="facts">{lines}</ul>'
    if config.get("dataset") == "synthetic":
        out += html.note("A demonstration, not a result.", SYNTHETIC_NOTE)
    return out


def _tuning_html(summary: sm.Summary) -> str:
    """Which clients chose the tuned settings (nothing when nothing was tuned)."""
    lines = sm.tuning_lines(summary)
    if not lines:
        return ""
    items = "".join(f"<li>{html.esc(line.strip())}</li>" for line in lines[1:])
    return f"<p>{html.esc(lines[0])}</p><ul>{items}</ul>"


def write_report(
    run_dir: str | Path,
    output_dir: str | Path | None = None,
    *,
    summary: sm.Summary | None = None,
    note: str = "",
) -> Path:
    """Write ``report.html``, its PNGs and ``summary.json`` to ``output_dir`` (default: the run).

    ``summary``: the run's summary when the caller already computed it (``fedp13n run``
    does, and has written ``summary.json`` into the run); ``note``: HTML under the run's
    facts (a library result's missing information). Returns the path of the HTML file.
    Raises :class:`ReportError` for a missing or incomplete run directory.
    """
    run_dir = sm.check_run_dir(run_dir)
    if output_dir is not None:
        _not_another_run(run_dir, Path(output_dir))
    out = make_output_dir(output_dir if output_dir is not None else run_dir)
    table = sm.read_per_client(run_dir / rd.PER_CLIENT)
    if summary is None or out != run_dir:
        summary = summary or sm.summarize_run(run_dir)
        sm.write_summary_json(out, summary)
    config_text, config = sm.read_config(run_dir)
    pngs, left_out = _write_figures(run_dir, out, table, summary)
    notes = {
        key: html.missing(alt, f"{left_out[key]}. The figure would show: {caption}")
        for key, _, alt, caption in FIGURES
        if key in left_out
    }
    sections = [
        *_numbers_sections(summary),
        *html.figure_sections(FIGURES, pngs, PNG_FILES, notes),
        html.Section(
            "config",
            "Configuration",
            f"<details><summary>{rd.CONFIG} (the resolved settings; rerun with "
            f"<code>--config</code>)</summary><pre>{html.esc(config_text)}</pre></details>"
            if config_text
            else f"<p>No {rd.CONFIG} in the run directory.</p>",
        ),
    ]
    assert tuple(s.id for s in sections if s.id not in OPTIONAL_SECTIONS) == SECTIONS
    doc = html.page(
        f"Personalization report: {run_dir.name}",
        f"Run directory {run_dir.resolve()} — fedp13n {__version__}",
        sections,
        intro=_facts_html(run_dir, config, summary) + note,
    )
    return atomic_write(out / rd.REPORT, doc)


def _not_another_run(run_dir: Path, out: Path) -> None:
    """A ReportError if ``out`` holds another run's results: the report would replace its
    ``summary.json`` and ``report.html`` with this run's, which then disagree with its
    ``per_client.csv``."""
    found = [m for m in (rd.PER_CLIENT, rd.CONFIG) if (out / m).is_file()]
    if found and out.resolve() != run_dir.resolve():
        raise sm.ReportError(
            f"output {out} holds another run (it has {found[0]}): the report of {run_dir} "
            "would replace its summary.json and report.html; choose another --output (or "
            "leave it out to write into the run directory)."
        )


def make_output_dir(out: str | Path) -> Path:
    """The folder a report or a comparison is written into, created if needed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise sm.ReportError(f"output {out} exists and is not a directory.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_figures(
    run_dir: Path, out: Path, table: Any, summary: sm.Summary
) -> tuple[dict[str, Path], dict[str, str]]:
    """The report's figures as PNGs in ``out``: figure -> file, and figure -> why it is
    left out (FedAvg's curves without its log of rounds, said as a warning too)."""
    colors = plots.strategy_colors(table.strategies())
    figures = {}
    left_out: dict[str, str] = {}
    fedavg_path = run_dir / rd.FEDAVG_METRICS
    fedavg = sm.read_fedavg_metrics(fedavg_path) if fedavg_path.exists() else None
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
            sm.ReportWarning,
            stacklevel=3,  # write_report's caller
        )
    figures["distribution"] = plots.accuracy_cdf(table, colors)
    figures["scatter"] = plots.baseline_vs_personalized(table, colors)
    figures["by-epoch"] = plots.accuracy_by_epoch_panels(
        {name: {name: curve} for name, curve in plots.epoch_curves(summary).items()}, colors
    )  # small multiples: one panel per strategy, shared y
    figures["gain-vs-size"] = plots.gain_vs_train_size(table, colors)
    pngs = {key: plots.save_png(fig, out / PNG_FILES[key]) for key, fig in figures.items()}
    figures.clear()
    return pngs, left_out


_CI_NOTE = (
    f"95% CI of the mean: percentile bootstrap over clients ({sm.BOOTSTRAP_RESAMPLES} resamples, "
    "fixed seed)."
)


def _numbers_sections(summary: sm.Summary) -> list[html.Section]:
    """The headline numbers and the table by strategy and epoch."""
    return [
        html.Section(
            "headline",
            "Headline numbers",
            html.headline(headline_items(summary))
            + "<p>The numbers TFF's personalization example prints: the global model's "
            "mean per-client accuracy, and the mean after one epoch of each strategy "
            "(<code>sgd</code> and <code>adam</code> in TFF's; each client counts once); "
            "a strategy evaluated only every few epochs at its first evaluation.</p>"
            + _best_note(summary)
            + _tuning_html(summary),
        ),
        html.Section(
            "summary",
            "Summary by strategy and epoch",
            html.table(
                sm.table_rows(summary),
                caption=f"{summary.clients_text()}. {_CI_NOTE} Mean gain, improved / unchanged "
                "/ hurt: personalized minus baseline accuracy on the same client (unchanged = "
                "difference within 1e-9).",
            ),
        ),
        *_protocols_section(summary),
    ]


def _protocols_section(summary: sm.Summary) -> list[html.Section]:
    """The protocols beside TFF's, as their own table (none for a run without them)."""
    if not summary.protocols:
        return []
    return [
        html.Section(
            "protocols",
            "Other evaluation protocols",
            f"<p>The tables above: {html.esc(rd.TFF_PROTOCOL)}. This one: the protocols of "
            "methods trained with a state per client, each in one sentence below; nothing "
            "in them is tuned (the local step is the training stage's). The clients and "
            "protocols differ, so compare numbers within a protocol.</p>"
            + html.table(sm.protocol_rows(summary), caption=_CI_NOTE),
        )
    ]
