"""Summary statistics of a federated dataset (what ``fedp13n data info`` prints).

Kept apart from the CLI so the numbers can be tested against plain loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedp13n.data.client_data import ClientData
from fedp13n.data.validate import NUM_CLASSES

#: Quantiles of the per-client sizes that ``info`` reports.
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass(frozen=True)
class DatasetSummary:
    """Counts of a (train, test) pair; histograms are per label 0..num_classes-1."""

    num_clients: int
    train_examples: int
    test_examples: int
    train_size_quantiles: tuple[float, ...]
    test_size_quantiles: tuple[float, ...]
    train_mean_size: float
    test_mean_size: float
    train_class_counts: np.ndarray
    test_class_counts: np.ndarray
    pixel_dtype: str


def size_quantiles(cd: ClientData) -> tuple[float, ...]:
    """Per-client example counts at :data:`QUANTILES` (linear interpolation)."""
    sizes = cd.client_sizes()
    if len(sizes) == 0:
        return tuple(float("nan") for _ in QUANTILES)
    return tuple(float(q) for q in np.quantile(sizes, QUANTILES))


def class_counts(cd: ClientData, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Number of labels of each class, ``num_classes`` entries (int64): one per example,
    or one per position for sequence labels (Shakespeare's next-character targets)."""
    y = np.asarray(cd.y).astype(np.int64, copy=False).ravel()
    return np.bincount(y, minlength=num_classes)


def summarize(
    train: ClientData, test: ClientData, num_classes: int = NUM_CLASSES
) -> DatasetSummary:
    """Summarize a ``(train, test)`` pair."""
    return DatasetSummary(
        num_clients=len(train),
        train_examples=train.num_examples,
        test_examples=test.num_examples,
        train_size_quantiles=size_quantiles(train),
        test_size_quantiles=size_quantiles(test),
        train_mean_size=train.num_examples / max(len(train), 1),
        test_mean_size=test.num_examples / max(len(test), 1),
        train_class_counts=class_counts(train, num_classes),
        test_class_counts=class_counts(test, num_classes),
        pixel_dtype=str(train.x.dtype),
    )
