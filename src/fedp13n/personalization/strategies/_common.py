"""What the strategies share: the held-out split, the choice on it, argument checks.

Their training is the client program (:class:`fedp13n.client.LocalTraining`) run by the
stock strategy's :func:`~fedp13n.personalization.p13n_utils.fine_tune`; a strategy only
sets its hooks (which parameters train, a penalty, a hook after ``model.train()``) and
what it does at each evaluation epoch. With no hook it trains bit-for-bit like the stock
strategy (tested).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np

from fedp13n.data.client_data import ClientDataset
from fedp13n.utils.checks import check_callable, check_fraction, check_positive_int

#: What the validation metric of a held-out split may be, and whether larger is better.
MONITORS = {"loss": False, "accuracy": True}


def check_loop_args(
    optimizer_fn: Any,
    batch_size: Any,
    num_epochs: Any,
    num_epochs_per_eval: Any,
    loss_fn: Any,
    eval_batch_size: Any,
) -> None:
    """The checks of ``build_personalize_fn``'s arguments, with the shared helpers."""
    check_callable(
        "optimizer_fn",
        optimizer_fn,
        "params -> torch.optim.Optimizer, e.g. functools.partial(torch.optim.SGD, lr=0.02)",
    )
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_epochs", num_epochs)
    check_positive_int("num_epochs_per_eval", num_epochs_per_eval)
    check_positive_int("eval_batch_size", eval_batch_size)
    check_callable("loss_fn", loss_fn, "(outputs, targets) -> mean loss")


def check_holdout_fraction(value: Any) -> float:
    """A fraction in (0, 1)."""
    fraction = check_fraction("holdout_fraction", value)
    if fraction == 0.0:
        raise ValueError(
            "holdout_fraction must be in (0, 1), got 0; the strategy chooses on held-out "
            "train examples (e.g. 0.2)."
        )
    return fraction


def check_monitor(value: Any) -> str:
    if value not in MONITORS:
        raise ValueError(f"monitor must be one of {sorted(MONITORS)}, got {value!r}.")
    return value


def num_holdout(num_examples: int, fraction: float) -> int:
    """How many train examples are held out: ``round(fraction * n)`` (halves up), at least
    1 and at most ``n - 1``; 0 when ``n < 2`` (nothing can be held out *and* trained on)."""
    if num_examples < 2:
        return 0
    return min(num_examples - 1, max(1, math.floor(fraction * num_examples + 0.5)))


def holdout_split(
    data: ClientDataset, fraction: float, generator: np.random.Generator
) -> tuple[ClientDataset, ClientDataset]:
    """``(rest, holdout)``: the first :func:`num_holdout` positions of
    ``generator.permutation(n)`` are held out; both parts keep the stored order."""
    n = len(data)
    k = num_holdout(n, fraction)
    order = generator.permutation(n)
    held = np.sort(order[:k])
    rest = np.sort(order[k:])
    return subset(data, rest), subset(data, held)


def subset(data: ClientDataset, index: np.ndarray) -> ClientDataset:
    return data.subset(index)


def pick(values: Iterable[float], monitor: str) -> int:
    """Position of the best value (NaN counts as the worst); ties go to the first."""
    larger_is_better = MONITORS[monitor]
    best, best_i = None, 0
    for i, v in enumerate(values):
        v = float(v)
        if math.isnan(v):
            v = -math.inf if larger_is_better else math.inf
        if best is None or (v > best if larger_is_better else v < best):
            best, best_i = v, i
    return best_i


def monitored(metrics: OrderedDict[str, Any], monitor: str) -> float:
    if monitor not in metrics:
        raise ValueError(
            f"monitor={monitor!r} but the held-out evaluation has no {monitor!r} (it has "
            f"{list(metrics)}); use monitor='loss' for a regression model."
        )
    return float(metrics[monitor])
