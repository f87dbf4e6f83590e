"""Early-stopped fine-tuning: the number of epochs chosen per client on held-out data.

Fine-tuning hurts some clients after a few epochs (Jiang et al. 2019, "Improving
Federated Learning Personalization via Model Agnostic Meta Learning", report the spread
of per-client changes; Adam at lr 0.002 hurts about a third of the EMNIST clients by
epoch 3). Early stopping on a validation split of the client's own train data (Prechelt
1998, "Early Stopping -- But When?") picks, per client, how long to fine-tune -- including
not at all.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import torch.nn.functional as F
from torch import nn

from fedp13n.client.program import LocalTraining, generator_from_torch
from fedp13n.personalization.inputs import as_client_dataset
from fedp13n.personalization.p13n_utils import EVAL_BATCH_SIZE, evaluate_fn, fine_tune
from fedp13n.personalization.strategies._common import (
    check_holdout_fraction,
    check_loop_args,
    check_monitor,
    holdout_split,
    monitored,
    pick,
)
from fedp13n.utils.types import LossFn, OptimizerFn, PersonalizeFn


def build_early_stopping_personalize_fn(
    optimizer_fn: OptimizerFn,
    batch_size: int,
    num_epochs: int,
    num_epochs_per_eval: int,
    shuffle: bool = True,
    *,
    holdout_fraction: float = 0.2,
    monitor: str = "loss",
    include_epoch_0: bool = True,
    loss_fn: LossFn = F.cross_entropy,
    eval_batch_size: int = EVAL_BATCH_SIZE,
) -> PersonalizeFn:
    """Fine-tune on part of the train data; select the epoch on the held-out rest.

    The held-out split and the training are those of
    :func:`~fedp13n.personalization.strategies.build_interpolation_personalize_fn` (split
    drawn first from torch's global RNG, then the stock fine-tuning on the rest). The
    candidates are the evaluation epochs (every ``num_epochs_per_eval``-th and the last)
    and, with ``include_epoch_0``, epoch 0 (the global model: no fine-tuning). The chosen
    epoch has the lowest held-out ``loss`` (``monitor="loss"``, the default: smooth, unlike
    the accuracy of a few dozen examples) or the highest ``accuracy``; ties go to the
    earliest epoch. All ``num_epochs`` are trained, so the whole curve is reported; that is
    early stopping with unbounded patience and the best checkpoint restored.

    Returns ``epoch_<k>`` -> :func:`evaluate_fn` on ``test_data`` after ``k`` epochs (the
    curve, as the stock strategy), ``validation`` -> ``epoch_<k>`` (and ``epoch_0``) ->
    held-out metrics, ``best_epoch`` (int), ``selected`` -> ``test`` and ``validation``
    metrics at the best epoch, ``num_train_examples`` (all epochs, the rest only),
    ``num_holdout_examples``. (``selected`` is nested one level so that code which reads
    every top-level mapping with an ``accuracy`` as an ``epoch_<k>`` row skips it.)

    Fallback: with fewer than 2 train examples nothing is held out
    (``num_holdout_examples`` = 0, validation metrics NaN), training uses all of them and
    ``best_epoch`` is ``num_epochs`` (plain fine-tuning).
    """
    check_loop_args(
        optimizer_fn, batch_size, num_epochs, num_epochs_per_eval, loss_fn, eval_batch_size
    )
    if not isinstance(include_epoch_0, bool):
        raise TypeError(f"include_epoch_0 must be True or False, got {include_epoch_0!r}.")
    return functools.partial(
        _personalize,
        optimizer_fn=optimizer_fn,
        batch_size=batch_size,
        num_epochs=num_epochs,
        num_epochs_per_eval=num_epochs_per_eval,
        shuffle=shuffle,
        holdout_fraction=check_holdout_fraction(holdout_fraction),
        monitor=check_monitor(monitor),
        include_epoch_0=include_epoch_0,
        loss_fn=loss_fn,
        eval_batch_size=eval_batch_size,
    )


def _personalize(
    model: nn.Module,
    train_data: Any,
    test_data: Any,
    context: Any = None,
    *,
    optimizer_fn: OptimizerFn,
    batch_size: int,
    num_epochs: int,
    num_epochs_per_eval: int,
    shuffle: bool,
    holdout_fraction: float,
    monitor: str,
    include_epoch_0: bool,
    loss_fn: LossFn,
    eval_batch_size: int,
) -> OrderedDict[str, Any]:
    del context
    full = as_client_dataset(train_data, "train_data")
    test = as_client_dataset(test_data, "test_data")
    rest, holdout = holdout_split(full, holdout_fraction, generator_from_torch())
    evaluate = functools.partial(evaluate_fn, loss_fn=loss_fn, batch_size=eval_batch_size)
    tests: OrderedDict[int, Any] = OrderedDict()
    validation: OrderedDict[int, Any] = OrderedDict()
    if include_epoch_0:
        tests[0], validation[0] = evaluate(model, test), evaluate(model, holdout)

    def on_eval(epoch: int) -> None:
        tests[epoch], validation[epoch] = evaluate(model, test), evaluate(model, holdout)

    program = LocalTraining(optimizer_fn, loss_fn, batch_size, epochs=num_epochs, shuffle=shuffle)
    seen = fine_tune(model, rest, program, num_epochs_per_eval=num_epochs_per_eval, on_eval=on_eval)
    epochs = list(validation)
    if len(holdout) == 0:
        best = num_epochs
    else:
        best = epochs[pick([monitored(validation[e], monitor) for e in epochs], monitor)]
    metrics: OrderedDict[str, Any] = OrderedDict(
        (f"epoch_{e}", m) for e, m in tests.items() if e > 0
    )
    metrics["validation"] = OrderedDict((f"epoch_{e}", m) for e, m in validation.items())
    metrics["best_epoch"] = best
    metrics["selected"] = OrderedDict(test=tests[best], validation=validation[best])
    metrics["num_train_examples"] = seen
    metrics["num_holdout_examples"] = len(holdout)
    return metrics
