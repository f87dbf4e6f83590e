"""Proximal fine-tuning: Ditto's local objective.

Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization":
the personalized model minimizes ``loss(w) + lam / 2 * ||w - w_global||^2``, which keeps
it near the global model; ``lam = 0`` is plain fine-tuning, ``lam -> inf`` the global
model. Here ``w_global`` is the weights the model holds when the strategy is called
(the global model in :func:`~fedp13n.build_personalization_eval`).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.client.program import LocalTraining
from fedp13n.personalization.inputs import as_client_dataset
from fedp13n.personalization.p13n_utils import EVAL_BATCH_SIZE, evaluate_fn, fine_tune
from fedp13n.personalization.strategies._common import (
    check_loop_args,
)
from fedp13n.utils.types import LossFn, OptimizerFn, PersonalizeFn


def build_proximal_personalize_fn(
    optimizer_fn: OptimizerFn,
    batch_size: int,
    num_epochs: int,
    num_epochs_per_eval: int,
    shuffle: bool = True,
    *,
    lam: float,
    loss_fn: LossFn = F.cross_entropy,
    eval_batch_size: int = EVAL_BATCH_SIZE,
) -> PersonalizeFn:
    """:func:`~fedp13n.personalization.build_personalize_fn` on Ditto's objective.

    Every batch minimizes ``loss_fn(model(x), y) + lam / 2 * sum_p ||p - p_global||^2``
    over all trainable parameters (``p_global``: their values at the call; buffers are
    not penalized). ``lam >= 0``; with ``lam = 0`` the penalty is skipped and the strategy
    is bit-for-bit the stock one. The reported metrics are the stock strategy's
    (``epoch_<k>`` -> :func:`evaluate_fn` on ``test_data`` with ``loss_fn`` alone, no
    penalty; ``num_train_examples``), as is the seeding.
    """
    check_loop_args(
        optimizer_fn, batch_size, num_epochs, num_epochs_per_eval, loss_fn, eval_batch_size
    )
    if (
        isinstance(lam, bool)
        or not isinstance(lam, numbers.Real)
        or not math.isfinite(lam)
        or lam < 0
    ):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}.")
    return functools.partial(
        _personalize,
        optimizer_fn=optimizer_fn,
        batch_size=batch_size,
        num_epochs=num_epochs,
        num_epochs_per_eval=num_epochs_per_eval,
        shuffle=shuffle,
        lam=float(lam),
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
    lam: float,
    loss_fn: LossFn,
    eval_batch_size: int,
) -> OrderedDict[str, Any]:
    del context
    train = as_client_dataset(train_data, "train_data")
    test = as_client_dataset(test_data, "test_data")
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params]
    metrics: OrderedDict[str, Any] = OrderedDict()

    def penalty() -> torch.Tensor:
        total = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
        return (lam / 2.0) * total

    def on_eval(epoch: int) -> None:
        metrics[f"epoch_{epoch}"] = evaluate_fn(
            model, test, loss_fn=loss_fn, batch_size=eval_batch_size
        )

    program = LocalTraining(
        optimizer_fn,
        loss_fn,
        batch_size,
        epochs=num_epochs,
        shuffle=shuffle,
        penalty=penalty if lam > 0 and params else None,
    )
    seen = fine_tune(
        model, train, program, num_epochs_per_eval=num_epochs_per_eval, on_eval=on_eval
    )
    metrics["num_train_examples"] = seen
    return metrics
