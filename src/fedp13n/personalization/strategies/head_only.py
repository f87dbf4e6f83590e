"""Head-only fine-tuning: personalize only the last layer (or named layers).

The local adaptation that FedPer (Arivazhagan et al. 2019, "Federated Learning with
Personalization Layers") and FedRep (Collins et al. 2021, "Exploiting Shared
Representations for Personalized Federated Learning") evaluate: the shared body keeps the
global weights and only the head is fitted to the client.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import nn

from fedp13n.client.program import LocalTraining
from fedp13n.personalization.inputs import as_client_dataset
from fedp13n.personalization.p13n_utils import EVAL_BATCH_SIZE, evaluate_fn, fine_tune
from fedp13n.personalization.strategies._common import (
    check_loop_args,
)
from fedp13n.utils.types import LossFn, OptimizerFn, PersonalizeFn


def default_head(model: nn.Module) -> str:
    """The name of the last module (in registration order) that owns parameters itself:
    the final ``Linear`` of fedp13n's EMNIST models (``"fc2"``). ``""`` (the whole model)
    when only the root owns parameters (e.g. a bare ``nn.Linear``)."""
    last = None
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = name
    if last is None:
        raise ValueError("the model has no parameters: there is no head to fine-tune.")
    return last


def head_parameter_names(model: nn.Module, head: str | Sequence[str] | None) -> list[str]:
    """Names of the parameters in ``head``: a module or parameter name (every parameter
    whose name is it or starts with it plus ``.``), a sequence of them, or None for
    :func:`default_head`. A name matching no parameter is a ``ValueError`` listing the
    valid names."""
    names = [default_head(model)] if head is None else [head] if isinstance(head, str) else head
    params = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for prefix in names:
        if not isinstance(prefix, str):
            raise TypeError(f"head names must be strings, got {prefix!r}.")
        match = [n for n in params if prefix == "" or n == prefix or n.startswith(prefix + ".")]
        if not match:
            modules = [
                n for n, m in model.named_modules() if n and any(True for _ in m.parameters())
            ]
            raise ValueError(
                f"head {prefix!r} names no layer of {type(model).__name__}; valid module "
                f"names: {modules}, parameter names: {params}."
            )
        chosen.update(match)
    return [n for n in params if n in chosen]  # model order


def build_head_only_personalize_fn(
    optimizer_fn: OptimizerFn,
    batch_size: int,
    num_epochs: int,
    num_epochs_per_eval: int,
    shuffle: bool = True,
    *,
    head: str | Sequence[str] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    eval_batch_size: int = EVAL_BATCH_SIZE,
) -> PersonalizeFn:
    """:func:`~fedp13n.personalization.build_personalize_fn` restricted to the head.

    ``head``: a module or parameter name (``""`` is the whole model), or a sequence of
    them (see :func:`head_parameter_names`); None = the last module owning parameters
    (:func:`default_head`), e.g. ``"fc2"`` for the EMNIST models. A name that matches no
    parameter raises a ``ValueError`` listing the valid names at the call.

    Every other parameter has ``requires_grad`` off during the call (restored afterwards)
    and is not given to ``optimizer_fn``, so it stays bit-for-bit the global weight (weight
    decay, momentum cannot touch it). Modules outside the head that hold buffers (batch
    norm) run in eval mode while training, so their running statistics do not change
    either (they normalize with the global statistics, as at evaluation). Dropout in the
    body still runs in train mode (it has no state).

    Same training, evaluation keys, seeding as the stock strategy: ``epoch_<k>`` ->
    :func:`evaluate_fn` on ``test_data``, then ``num_train_examples``.
    """
    check_loop_args(
        optimizer_fn, batch_size, num_epochs, num_epochs_per_eval, loss_fn, eval_batch_size
    )
    if head is not None and (
        not isinstance(head, str | Sequence)
        or (not isinstance(head, str) and not all(isinstance(h, str) for h in head))
    ):
        raise TypeError(f"head must be a name, a sequence of names or None, got {head!r}.")
    if head is not None and not isinstance(head, str) and len(head) == 0:
        raise ValueError(
            "head is an empty list: it names no layer to fine-tune; name at least one "
            "(e.g. head = ['fc2']) or leave head out for the last layer with parameters."
        )
    return functools.partial(
        _personalize,
        optimizer_fn=optimizer_fn,
        batch_size=batch_size,
        num_epochs=num_epochs,
        num_epochs_per_eval=num_epochs_per_eval,
        shuffle=shuffle,
        head=head,
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
    head: str | Sequence[str] | None,
    loss_fn: LossFn,
    eval_batch_size: int,
) -> OrderedDict[str, Any]:
    del context
    train = as_client_dataset(train_data, "train_data")
    test = as_client_dataset(test_data, "test_data")
    in_head = set(head_parameter_names(model, head))
    frozen_modules = _frozen_stateful_modules(model, head, in_head)
    metrics: OrderedDict[str, Any] = OrderedDict()

    def on_eval(epoch: int) -> None:
        metrics[f"epoch_{epoch}"] = evaluate_fn(
            model, test, loss_fn=loss_fn, batch_size=eval_batch_size
        )

    def freeze_modules() -> None:
        for m in frozen_modules:
            m.eval()

    program = LocalTraining(
        optimizer_fn,
        loss_fn,
        batch_size,
        epochs=num_epochs,
        shuffle=shuffle,
        trainable=[n for n, _ in model.named_parameters() if n in in_head],
        after_train_mode=freeze_modules,
    )
    seen = fine_tune(
        model, train, program, num_epochs_per_eval=num_epochs_per_eval, on_eval=on_eval
    )
    metrics["num_train_examples"] = seen
    return metrics


def _frozen_stateful_modules(
    model: nn.Module, head: str | Sequence[str] | None, in_head: set[str]
) -> list[nn.Module]:
    """Modules outside the head that hold buffers: they run in eval mode while training.

    A module is in the head when its name is under one of the head's names or when it
    owns a head parameter."""
    prefixes = [default_head(model)] if head is None else [head] if isinstance(head, str) else head

    def under_head(name: str) -> bool:
        return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)

    out = []
    for name, m in model.named_modules():
        if not any(True for _ in m.buffers(recurse=False)) or under_head(name):
            continue
        own = (f"{name}.{pn}" if name else pn for pn, _ in m.named_parameters(recurse=False))
        if not any(n in in_head for n in own):
            out.append(m)
    return out
