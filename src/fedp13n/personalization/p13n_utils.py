"""A personalization strategy (fine-tune, evaluate every few epochs) and its evaluation.

PyTorch version of TFF's ``examples/personalization/p13n_utils.py`` used in the
personalization experiment of Jiang et al. 2019, "Improving Federated Learning
Personalization via Model Agnostic Meta Learning". Same semantics:

* the strategy fine-tunes for ``num_epochs`` epochs and evaluates after every
  ``num_epochs_per_eval`` epochs *and always after the last one* (``epoch_1``, ``epoch_2``,
  ...), then reports ``num_train_examples`` summed over all epochs;
* evaluation reports ``num_test_examples``, ``loss`` (the average over examples, so the
  evaluation batch size does not change it) and, for classification, ``accuracy``; and,
  as TFF's ``evaluate_fn`` on a Keras model with ``SparseCategoricalAccuracy``, the same
  accuracy as ``sparse_categorical_accuracy`` (the name ``emnist_p13n_main.py`` reads),
  ``num_examples`` and ``num_batches`` (the counters TFF's Keras models report).

Unlike TFF's Keras-bound version, the loss is a parameter, so a regression model with a
mean-squared-error loss works as well as the EMNIST CNN: ``accuracy`` is reported only
when the targets are integer class labels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import nn

from fedp13n.client.program import EVAL_BATCH_SIZE, LocalTraining, evaluate, generator_from_torch
from fedp13n.models.objectives import engine_ignore_ids
from fedp13n.personalization.inputs import as_client_dataset
from fedp13n.utils.checks import check_callable, check_positive_int
from fedp13n.utils.types import LossFn, OptimizerFn, PersonalizeFn


def evaluate_fn(
    model: nn.Module,
    dataset: Any,
    *,
    loss_fn: LossFn = F.cross_entropy,
    batch_size: int = EVAL_BATCH_SIZE,
) -> OrderedDict[str, Any]:
    """Evaluate ``model`` on an unbatched dataset: ``num_test_examples``, ``loss``, ``accuracy``,
    ``sparse_categorical_accuracy``, ``num_examples``, ``num_batches``.

    ``loss_fn(outputs, targets)`` must return the *mean* over the batch (PyTorch's default
    reduction); ``loss`` is its average over all examples, weighted by batch size, which
    is what TFF's Keras metrics compute. ``accuracy`` (fraction of argmax predictions equal
    to the label; a :class:`~fedp13n.models.objectives.TaskLoss` ``loss_fn`` brings its
    task's accuracy, which may leave target ids out of the count) is reported only when
    the targets are integer class labels and the outputs have one more dimension (the
    classes, dimension 1). The model runs in eval mode (dropout off, batch-norm running
    statistics) and gets its previous mode back.
    With no test example, ``loss`` and ``accuracy`` are NaN.

    TFF's names beside fedp13n's: ``sparse_categorical_accuracy`` (classification only)
    equals ``accuracy``; ``num_examples`` (examples evaluated, equal to
    ``num_test_examples``) and ``num_batches`` (``ceil(n / batch_size)``: it depends on the
    evaluation batch size, as TFF's) are the counters of TFF's Keras models.
    """
    batch_size = _check_evaluation(loss_fn, batch_size)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module (the model to evaluate), got "
            f"{type(model).__name__}; pass model_fn(), not model_fn."
        )
    return evaluate(
        model, as_client_dataset(dataset, "the evaluation dataset"), loss_fn, batch_size
    )


def _check_evaluation(loss_fn: Any, batch_size: Any) -> int:
    """``evaluate_fn``'s settings: a callable loss and a positive batch size."""
    check_callable("loss_fn", loss_fn, "(outputs, targets) -> loss")
    return check_positive_int("batch_size", batch_size)


def build_evaluate_fn(
    loss_fn: LossFn = F.cross_entropy, batch_size: int = EVAL_BATCH_SIZE
) -> Callable[[nn.Module, Any], OrderedDict[str, Any]]:
    """A picklable two-argument ``evaluate_fn(model, dataset)`` with this loss and batch size:
    what :func:`build_personalization_eval` wants as ``baseline_evaluate_fn``."""
    _check_evaluation(loss_fn, batch_size)  # here, not at the first client's evaluation
    return functools.partial(evaluate_fn, loss_fn=loss_fn, batch_size=batch_size)


def is_default_evaluate_fn(fn: Any) -> bool:
    """Whether ``fn`` computes what :func:`evaluate_fn` does with cross-entropy (its
    accuracy may leave target ids out: :func:`baseline_ignore_ids`) and batches of
    ``EVAL_BATCH_SIZE``: ``evaluate_fn`` itself or :func:`build_evaluate_fn` of such a loss
    (what the multi-client engine computes)."""
    if fn is evaluate_fn:
        return True
    if not isinstance(fn, functools.partial) or fn.func is not evaluate_fn or fn.args:
        return False
    kw = fn.keywords
    return (
        set(kw) <= {"loss_fn", "batch_size"}
        and engine_ignore_ids(kw.get("loss_fn", F.cross_entropy)) is not None
        and kw.get("batch_size", EVAL_BATCH_SIZE) == EVAL_BATCH_SIZE
    )


def baseline_ignore_ids(fn: Any) -> tuple[int, ...]:
    """The target ids the accuracy of an :func:`is_default_evaluate_fn` leaves out."""
    kw = fn.keywords if isinstance(fn, functools.partial) else {}
    return engine_ignore_ids(kw.get("loss_fn", F.cross_entropy)) or ()


def build_personalize_fn(
    optimizer_fn: OptimizerFn,
    batch_size: int,
    num_epochs: int,
    num_epochs_per_eval: int,
    shuffle: bool = True,
    *,
    loss_fn: LossFn = F.cross_entropy,
    eval_batch_size: int = EVAL_BATCH_SIZE,
) -> PersonalizeFn:
    """Build TFF's example strategy: fine-tune with ``optimizer_fn``, evaluate periodically.

    Returns ``personalize_fn(model, train_data, test_data, context=None)`` (TFF's
    signature, with the pre-2023 ``context``, which is ignored) that trains ``model`` in
    place on ``train_data`` for ``num_epochs`` epochs of batches of ``batch_size`` and
    returns an ``OrderedDict`` ``epoch_<k>`` -> :func:`evaluate_fn` metrics on
    ``test_data`` for every ``k`` divisible by ``num_epochs_per_eval`` and for
    ``k = num_epochs``, then ``num_train_examples``: examples seen in training, summed over epochs.

    ``optimizer_fn(params)`` builds a fresh ``torch.optim.Optimizer`` (e.g.
    ``functools.partial(torch.optim.SGD, lr=0.02)``). Unlike TFF, where the optimizer is
    built with the strategy, it is built at every call: a PyTorch optimizer belongs to
    the parameters of one model, and a fresh one means no optimizer state (momentum, Adam
    moments) ever carries over from one client to the next.

    Shuffling (``shuffle=True``, a new order every epoch, as TFF) draws its numpy
    Generator's seed from torch's global RNG at the start of the call, so one
    ``torch.manual_seed`` before the call fixes both the order of examples and any
    dropout; :func:`build_personalization_eval` seeds it per (seed, client, strategy).

    The result is the strategy of a
    :class:`~fedp13n.personalization.strategies.FineTune` (the registry's kind
    ``"finetune"``) with these settings, so a batched engine recognises it.
    """
    from fedp13n.personalization.strategies.finetune import FineTune  # it builds on this module

    return FineTune.from_tff(
        optimizer_fn, batch_size, num_epochs, num_epochs_per_eval, shuffle,
        loss_fn=loss_fn, eval_batch_size=eval_batch_size,
    )()  # fmt: skip


def fine_tune(
    model: nn.Module,
    train: Any,
    program: LocalTraining,
    *,
    num_epochs_per_eval: int,
    on_eval: Callable[[int], None],
) -> int:
    """The fine-tuning every strategy shares: ``program`` (one pass per epoch) on
    ``train`` (unbatched data, as :func:`evaluate_fn` takes), shuffled when
    ``program.shuffle`` by a generator seeded from torch's global RNG now
    (:func:`~fedp13n.client.generator_from_torch`), and ``on_eval(epoch)`` after every
    ``num_epochs_per_eval``-th epoch and after the last. Returns the examples seen,
    summed over epochs."""

    def on_epoch_end(epoch: int) -> None:
        if epoch % num_epochs_per_eval == 0 or epoch == program.epochs:
            on_eval(epoch)

    generator = generator_from_torch() if program.shuffle else None
    program = dataclasses.replace(program, on_epoch_end=on_epoch_end)
    data = as_client_dataset(train, "train_data")
    return program.run(model, data, generator).num_trained
