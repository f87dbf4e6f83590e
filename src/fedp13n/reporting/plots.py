"""The report's figures: FedAvg curves and per-client personalization distributions.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global
state, safe in any thread, Agg rendering). Colours come from the Okabe-Ito palette
(Okabe & Ito 2008, distinguishable with the common colour-vision deficiencies); a
strategy keeps its colour in every figure, the baseline (global model) is always black,
and epochs of one strategy differ by line style and lightness, never by hue alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from fedp13n.reporting import summary as sm

#: Okabe-Ito without black (the baseline) and yellow (too light on white), in use order.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#999999")
BASELINE_COLOR = "#000000"
LINESTYLES = ("-", "--", "-.", ":")
DPI = 110
#: Fewer clients than this: no binned means (quarters of 2-3 clients only show noise).
MIN_CLIENTS_FOR_BINS = 20
#: How one client is drawn in a scatter plot.
_DOTS = {"alpha": 0.75, "edgecolor": "white", "linewidth": 0.4}


def strategy_colors(names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per name, in order (cycling after seven)."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _shade(color: str, k: int, n: int) -> tuple[float, float, float]:
    """Epoch ``k`` of ``n``: lighter for early epochs, the full colour for the last."""
    rgb = np.array(to_rgb(color))
    if n <= 1:
        return tuple(rgb)
    mix = 0.55 * (n - 1 - k) / (n - 1)
    return tuple(rgb + (1.0 - rgb) * mix)


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)


def _panels(n: int, width: float = 4.3, height: float = 3.6, **kw) -> tuple[Figure, list]:
    """``n`` panels, at most three a row (the spare ones hidden)."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kw).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def save_png(fig: Figure, path: str | Path) -> bytes:
    """Write ``fig`` to ``path`` as PNG and return the bytes (for embedding)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    Path(path).write_bytes(buf.getvalue())
    return buf.getvalue()


def _epochs_to_show(epochs: list[str], k: int = 3) -> list[str]:
    """At most ``k`` epochs spread from the first to the last."""
    if len(epochs) <= k:
        return epochs
    idx = np.unique(np.linspace(0, len(epochs) - 1, k).round().astype(int))
    return [epochs[i] for i in idx]


# -- FedAvg -----------------------------------------------------------------------------------
def fedavg_curves(
    runs: Mapping[str, Mapping[str, np.ndarray]], colors: Mapping[str, str] | None = None
) -> Figure:
    """Training loss and accuracy per round (one line per run), global test accuracy as dots.

    ``runs``: label -> ``read_fedavg_metrics`` columns. With one run the label is not shown.
    """
    colors = colors or strategy_colors(list(runs))
    fig = Figure(figsize=(10, 3.9), dpi=DPI, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    single = len(runs) == 1
    for label, m in runs.items():
        c = BASELINE_COLOR if single else colors[label]
        r = m["round"]
        prefix = "" if single else f"{label}: "
        ax_loss.plot(r, m["loss"], color=c, marker="o", ms=3, label=f"{prefix}training loss")
        ax_acc.plot(r, m["accuracy"], color=c, marker="o", ms=3, label=f"{prefix}training")
        # The global model on held-out data, only in the rounds where it was measured.
        for ax, key, what in ((ax_acc, "eval_accuracy", ""), (ax_loss, "eval_loss", " loss")):
            values = m.get(key)
            if values is None or not np.isfinite(values).any():
                continue
            ok = np.isfinite(values)
            ax.plot(
                r[ok], values[ok], color=c, ls="--", marker="s", ms=6, mfc="white",
                label=f"{prefix}global test{what}",
            )  # fmt: skip
    _style(ax_loss, "FedAvg loss per round", "round", "loss (cross-entropy, nats)")
    _style(ax_acc, "FedAvg accuracy per round", "round", "accuracy (fraction correct)")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("FedAvg training (training = mean over the round's clients)", fontsize=12)
    return fig


# -- personalization ------------------------------------------------------------------------
def _ecdf(ax, values: np.ndarray, **kw) -> None:
    v = np.sort(values[np.isfinite(values)])
    if len(v) == 0:
        return
    y = np.arange(1, len(v) + 1) / len(v)
    ax.step(np.concatenate([[v[0]], v]), np.concatenate([[0.0], y]), where="post", **kw)


def accuracy_cdf(table: sm.PerClientTable, colors: Mapping[str, str]) -> Figure:
    """Empirical CDF of per-client accuracy: one panel per strategy, every epoch + baseline.

    A curve further right is better; where two curves cross, some clients gain and others lose.
    """
    strategies = table.strategies()
    fig, axes = _panels(len(strategies), sharex=True, sharey=True)
    base = table.baseline().baseline_accuracy
    for ax, s in zip(axes, strategies, strict=True):
        _ecdf(ax, base, color=BASELINE_COLOR, lw=1.8, label="baseline (global model)")
        epochs = table.epochs(s)
        for k, e in enumerate(epochs):
            _ecdf(
                ax,
                table.select(s, e).accuracy,
                color=_shade(colors[s], k, len(epochs)),
                ls=LINESTYLES[(k + 1) % len(LINESTYLES)] if k < len(epochs) - 1 else "-",
                lw=1.6,
                label=f"{s}, {sm.epochs_label(sm.epoch_number(e))}",
            )
        _style(ax, f"Strategy '{s}'", "per-client accuracy (fraction correct)", "")
        ax.legend(fontsize=8, loc="upper left", frameon=False)
    axes[0].set_ylabel("fraction of clients with accuracy ≤ x")
    fig.suptitle("Distribution of per-client accuracy (empirical CDF; right = better)", fontsize=12)
    return fig


def baseline_vs_personalized(table: sm.PerClientTable, colors: Mapping[str, str]) -> Figure:
    """Per client: baseline accuracy (x) vs personalized accuracy (y); above the diagonal = helped.

    Rows are strategies, columns up to three epochs (first, middle, last).
    """
    strategies = table.strategies()
    shown = {s: _epochs_to_show(table.epochs(s)) for s in strategies}
    cols = max(len(v) for v in shown.values())
    fig = Figure(figsize=(3.7 * cols, 3.6 * len(strategies) + 0.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(strategies), cols, squeeze=False, sharex=True, sharey=True)
    for i, s in enumerate(strategies):
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(shown[s]):
                ax.set_visible(False)
                continue
            e = shown[s][j]
            t = table.select(s, e)
            d = t.accuracy - t.baseline_accuracy
            ax.plot([0, 1], [0, 1], color="#666666", lw=1, ls="--", zorder=1)
            ax.scatter(t.baseline_accuracy, t.accuracy, s=18, color=colors[s], zorder=2, **_DOTS)
            n = max(int(np.isfinite(d).sum()), 1)
            box = {"boxstyle": "round", "fc": "white", "ec": "#cccccc"}
            helped, hurt = np.sum(d > sm.UNCHANGED_TOL) / n, np.sum(d < -sm.UNCHANGED_TOL) / n
            text = f"helped {helped:.0%}\nhurt {hurt:.0%}"
            ax.text(0.97, 0.04, text, transform=ax.transAxes, ha="right", va="bottom",
                    fontsize=8, bbox=box)  # fmt: skip
            _style(
                ax,
                f"'{s}' after {sm.epochs_label(sm.epoch_number(e))}",
                "baseline accuracy" if i == len(strategies) - 1 else "",
                "personalized accuracy" if j == 0 else "",
            )
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.set_aspect("equal")
    fig.suptitle(
        "Per-client accuracy: global model vs personalized (above the diagonal = helped)",
        fontsize=12,
    )
    return fig


def _draw_epoch_curves(ax, curves, colors: Mapping[str, str]) -> None:
    """``curves``: label -> (epochs, mean, ci_low, ci_high); epoch 0 is the global model."""
    order = list(colors)  # line style tied to the label, like the colour
    for label, (x, mean, lo, hi) in curves.items():
        c = colors[label]
        k = order.index(label)
        ax.fill_between(x, lo, hi, color=c, alpha=0.18, linewidth=0)
        ax.plot(x, mean, color=c, marker="o", ms=4, ls=LINESTYLES[k % len(LINESTYLES)], label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=9, frameon=False, loc="best")


def accuracy_by_epoch_panels(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, ...]]], colors: Mapping[str, str]
) -> Figure:
    """One panel per strategy, one curve per run (``panels``: strategy -> run -> curve)."""
    fig, axes = _panels(len(panels), width=5.0, height=3.9, sharey=True)
    for ax, (strategy, curves) in zip(axes, panels.items(), strict=True):
        _draw_epoch_curves(ax, curves, colors)
        _style(ax, f"Strategy '{strategy}'", "fine-tuning epochs (0 = global model)", "")
    axes[0].set_ylabel("mean accuracy (fraction correct)")
    fig.suptitle(
        "Mean per-client accuracy by fine-tuning epoch (band: 95% bootstrap CI)", fontsize=12
    )
    return fig


def epoch_curves(summary: sm.Summary) -> dict[str, tuple[np.ndarray, ...]]:
    """Per strategy: (epochs incl. 0, mean, ci_low, ci_high) from the summary."""
    b = summary.baseline
    out = {}
    for s in summary.strategies():
        rows = [r for r in summary.rows if r.strategy == s]
        x = [0] + [sm.epoch_number(r.epoch) for r in rows]
        out[s] = (
            np.array(x),
            np.array([b.mean] + [r.mean for r in rows]),
            np.array([b.ci_low] + [r.ci_low for r in rows]),
            np.array([b.ci_high] + [r.ci_high for r in rows]),
        )
    return out


def gain_vs_train_size(table: sm.PerClientTable, colors: Mapping[str, str]) -> Figure:
    """Accuracy gain over the baseline vs the client's number of training examples.

    One panel per strategy at its last epoch; with enough clients, the mean gain of each
    quarter of the clients by size (with its 95% CI) shows the trend.
    """
    strategies = table.strategies()
    fig, axes = _panels(len(strategies), sharex=True, sharey=True)
    for ax, s in zip(axes, strategies, strict=True):
        e = table.epochs(s)[-1]
        t = table.select(s, e)
        x = t.num_train_examples.astype(float)
        d = t.accuracy - t.baseline_accuracy
        ax.axhline(0, color="#666666", lw=1, ls="--")
        ax.scatter(x, d, s=16, color=colors[s], **{**_DOTS, "alpha": 0.6}, label="one client")
        if np.isfinite(d).sum() >= MIN_CLIENTS_FOR_BINS:
            _quartile_means(ax, x, d, s)
        title = f"'{s}' after {sm.epochs_label(sm.epoch_number(e))}"
        _style(ax, title, "training examples on the client (count)", "")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    axes[0].set_ylabel("accuracy gain (personalized − baseline)")
    fig.suptitle("Who gains? Accuracy gain vs client training-set size", fontsize=12)
    return fig


def _quartile_means(ax, x: np.ndarray, d: np.ndarray, strategy: str) -> None:
    """The mean gain ``d`` of each quarter of the clients by size ``x``, with its 95% CI."""
    ok = np.isfinite(d)
    qs = np.unique(np.quantile(x[ok], np.linspace(0, 1, 5)))
    mids, means, los, his = [], [], [], []
    for lo_edge, hi_edge in zip(qs[:-1], qs[1:], strict=True):
        inb = ok & (x >= lo_edge) & ((x < hi_edge) | (hi_edge == qs[-1]))
        if inb.sum() == 0:
            continue
        mids.append(np.median(x[inb]))
        means.append(d[inb].mean())
        lo, hi = sm.bootstrap_mean_ci(d[inb], key=("gain-bin", strategy, float(lo_edge)))
        los.append(lo)
        his.append(hi)
    m = np.array(means)
    ax.errorbar(mids, m, yerr=[m - np.array(los), np.array(his) - m], color=BASELINE_COLOR,
                marker="D", ms=5, lw=1.4, capsize=3, label="quartile-bin mean, 95% CI")  # fmt: skip


def headline_bars(entries: Sequence[tuple[str, sm.Stats, sm.Stats, str]]) -> Figure:
    """Per run: baseline and best personalized mean accuracy with 95% CIs (for compare).

    ``entries``: (run, the baseline's statistics, the best's statistics, the best's label).
    """
    fig = Figure(figsize=(max(6.0, 1.6 * len(entries) + 2), 4.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(entries))
    w = 0.38
    for off, which, color, hatch, name in (
        (-w / 2, 1, "#999999", "", "baseline (global model)"),
        (w / 2, 2, PALETTE[0], "//", "best personalized"),
    ):
        mean = np.array([e[which].mean for e in entries])
        lo = np.array([e[which].ci_low for e in entries])
        hi = np.array([e[which].ci_high for e in entries])
        ax.bar(x + off, mean, w, color=color, hatch=hatch, edgecolor="white", label=name,
               yerr=[mean - lo, hi - mean], capsize=4)  # fmt: skip
    for i, e in enumerate(entries):
        ax.annotate(e[3], (x[i] + w / 2, e[2].ci_high), xytext=(0, 4), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    tilt = len(entries) > 3
    ax.set_xticks(x, [e[0] for e in entries], rotation=20 if tilt else 0,
                  ha="right" if tilt else "center")  # fmt: skip
    title = "Baseline vs best personalized mean accuracy (95% CI)"
    _style(ax, title, "run", "mean accuracy (fraction correct)")
    ax.set_ylim(0, min(1.1, max(e[2].ci_high for e in entries) * 1.15 + 0.02))
    fig.legend(loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    return fig
