"""What a task minimises and how it counts right answers: its loss and its accuracy.

Every layer that trains or evaluates (FedAvg's client work, :func:`fedp13n.client.evaluate`,
the personalization strategies, the baseline evaluation) takes one ``loss_fn``; a
:class:`TaskLoss` is such a loss that also carries its task's :class:`Accuracy`, so the
accuracy travels with the loss through every layer without a parameter of its own
(:func:`accuracy_of`). A plain loss (``F.cross_entropy``) counts every target, as before.

Accuracy: the arg-max over dimension 1 (the classes: logits ``(batch, classes)`` or
``(batch, classes, positions)``, the layout ``F.cross_entropy`` takes) equal to the target,
over the targets counted; :class:`Accuracy` may leave some target ids out of the count
(e.g. Shakespeare's pad / out-of-vocabulary / beginning / end ids, as TFF's
``MaskedCategoricalAccuracy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from fedp13n.utils.types import LossFn


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of examples whose arg-max logit is the label (the batch mean)."""
    return (outputs.argmax(dim=-1) == targets).double().mean()


@dataclass(frozen=True)
class Accuracy:
    """The arg-max over dimension 1 equal to the target, over the targets whose id is not
    in ``ignore_ids``. Called, the batch's fraction (0 for a batch with nothing to count);
    :meth:`counts` gives the right answers and the targets counted, to sum over batches."""

    ignore_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        ids = tuple(self.ignore_ids)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise TypeError(f"ignore_ids must be integer target ids, got {self.ignore_ids!r}.")
        object.__setattr__(self, "ignore_ids", ids)

    def counts(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | int]:
        """(right answers, targets counted) of one batch."""
        hit = outputs.argmax(dim=1) == targets
        if not self.ignore_ids:
            return hit.sum(), targets.numel()
        ignored = torch.tensor(self.ignore_ids, dtype=targets.dtype, device=targets.device)
        keep = ~torch.isin(targets, ignored)
        return (hit & keep).sum(), keep.sum()

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.ignore_ids:  # the same operations as accuracy(): the same numbers
            return (outputs.argmax(dim=1) == targets).double().mean()
        right, counted = self.counts(outputs, targets)
        return right.double() / counted.clamp(min=1)


@dataclass(frozen=True)
class TaskLoss:
    """A task's loss (``loss_fn(outputs, targets) -> batch mean``, called through) with
    its :class:`Accuracy`: the one ``loss_fn`` a task hands to every layer."""

    loss_fn: LossFn = F.cross_entropy
    accuracy: Accuracy = field(default_factory=Accuracy)

    def __post_init__(self) -> None:
        if not callable(self.loss_fn):
            raise TypeError(f"loss_fn must be callable (outputs, targets) -> mean loss, got "
                            f"{self.loss_fn!r}.")  # fmt: skip
        if not isinstance(self.accuracy, Accuracy):
            raise TypeError(f"accuracy must be an Accuracy, got {self.accuracy!r}.")

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(outputs, targets)


#: The accuracy of a plain loss: every target counted.
PLAIN_ACCURACY = Accuracy()


def accuracy_of(loss_fn: Any) -> Accuracy:
    """The accuracy ``loss_fn`` carries (a :class:`TaskLoss`'s), else every target counted."""
    return loss_fn.accuracy if isinstance(loss_fn, TaskLoss) else PLAIN_ACCURACY


def is_cross_entropy(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` is ``F.cross_entropy`` with the plain accuracy (what the
    multi-client engine computes)."""
    if isinstance(loss_fn, TaskLoss):
        return loss_fn.loss_fn is F.cross_entropy and not loss_fn.accuracy.ignore_ids
    return loss_fn is F.cross_entropy


def engine_ignore_ids(loss_fn: Any, metric_fn: Any = None) -> tuple[int, ...] | None:
    """What the multi-client engine computes for ``loss_fn`` (and a training ``metric_fn``,
    by default the loss's accuracy): the accuracy's ``ignore_ids`` when the loss is
    ``F.cross_entropy`` (plain or a :class:`TaskLoss`'s) and the metric an
    :class:`Accuracy` or :func:`accuracy`, else None (the engine does not serve it)."""
    plain = loss_fn.loss_fn if isinstance(loss_fn, TaskLoss) else loss_fn
    if plain is not F.cross_entropy:
        return None
    metric = accuracy_of(loss_fn) if metric_fn is None else metric_fn
    if metric is accuracy:
        return ()
    return metric.ignore_ids if isinstance(metric, Accuracy) else None


def is_plain_accuracy(metric_fn: Any) -> bool:
    """Whether ``metric_fn`` is :func:`accuracy` or an :class:`Accuracy` counting every target."""
    return metric_fn is accuracy or (isinstance(metric_fn, Accuracy) and not metric_fn.ignore_ids)
