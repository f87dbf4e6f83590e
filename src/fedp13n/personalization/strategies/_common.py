"""What the strategies that choose on held-out train data share: the split, the
choice on it, their two fields (:class:`HeldOut`)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedp13n.client.program import generator_from_torch
from fedp13n.data.client_data import ClientDataset
from fedp13n.personalization.strategies.finetune import FineTune
from fedp13n.utils.checks import check_fraction

#: What the validation metric of a held-out split may be, and whether larger is better.
MONITORS = {"loss": False, "accuracy": True}


@dataclass(frozen=True, kw_only=True)
class HeldOut(FineTune):
    """Fine-tuning that chooses on a held-out part of the train data:
    ``holdout_fraction`` of it (see :func:`holdout_split`), scored by ``monitor``
    (``"loss"``: lowest; ``"accuracy"``: highest)."""

    holdout_fraction: float = 0.2
    monitor: str = "loss"

    def __post_init__(self) -> None:
        super().__post_init__()
        fraction = check_fraction("holdout_fraction", self.holdout_fraction)
        if fraction == 0.0:
            raise ValueError(
                "holdout_fraction must be in (0, 1), got 0; the strategy chooses on held-out "
                "train examples (e.g. 0.2)."
            )
        object.__setattr__(self, "holdout_fraction", fraction)
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {sorted(MONITORS)}, got {self.monitor!r}.")

    def split(self, train: ClientDataset) -> tuple[ClientDataset, ClientDataset]:
        """``(rest, holdout)`` of ``train`` (:func:`holdout_split`), drawn from a generator
        seeded by one draw of torch's global RNG."""
        return holdout_split(train, self.holdout_fraction, generator_from_torch())


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
    return data.subset(rest), data.subset(held)


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
