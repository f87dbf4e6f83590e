"""Per-FedAvg: FedAvg of a meta-model that one local gradient step personalizes.

Source: Fallah, Mokhtari and Ozdaglar, "Personalized Federated Learning with Theoretical
Guarantees: A Model-Agnostic Meta-Learning Approach", NeurIPS 2020 (arXiv:2002.07948),
Algorithm 1 and Section 5. Each client's objective is ``F_i(w) = f_i(w - alpha * grad
f_i(w))``; a selected client takes local steps on it from the global ``w`` and the server
averages the results (FedAvg). A local step with independent batches D, D', D'':

- first order (FO): ``w <- w - beta * grad f(w - alpha * grad f(w, D), D')``;
- Hessian-free (HF): ``w <- w - beta * (I - alpha * H(w, D'')) grad f(w - alpha * grad
  f(w, D), D')``, the Hessian-vector product ``H(w, D'') v`` by the paper's finite
  difference ``(grad f(w + delta v, D'') - grad f(w - delta v, D'')) / (2 delta)`` (it
  needs no second derivatives, so any model, cuDNN's LSTM included, runs it), with
  :data:`DELTA` = 1e-3 (FL-bench's default: KarhouTam/FL-bench,
  ``src/server/perfedavg.py``, ``--delta``).

Its personalization (the paper's Section 5 evaluation): one step of SGD with ``alpha``
on a batch of the client's train data (:func:`adapt`). There is no per-client state.

Here: ``beta`` is the client optimizer, stepped with the meta-gradient (plain SGD with
learning rate beta is the update above); ``alpha`` is ``per_fedavg_alpha`` (default
:data:`DEFAULT_ALPHA` = 0.01, FL-bench's, whose inner step uses its local learning rate,
default 1e-2). D, D', D'' are consecutive batches of the client's batch plan
(:meth:`fedp13n.client.program.LocalTraining.segments`, within an epoch of the per-epoch
plan): a meta-step takes two batches (FO) or three (HF); a trailing group that is short
reuses its last batch for the missing ones (one batch: D = D' = D''). The loss and metric
counted for the round are those of w on D. The own-state protocol and the "new clients"
protocol both evaluate a client after :func:`adapt` from the global model (on its own
train data; the random stream is the round's); TFF's protocol personalizes with its
strategies as for every method (``sgd:<alpha>`` with one epoch is close to the paper's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fedp13n.algorithms.fedper import method_builder
from fedp13n.utils.checks import check_positive_number

if TYPE_CHECKING:  # torch is imported where it is used: the configuration reads this module
    import numpy as np
    import torch
    from torch import nn

    from fedp13n.client.program import LocalTraining, TrainStats
    from fedp13n.data.client_data import ClientDataset

#: The variants: first order, Hessian-free (see the module docstring).
VARIANTS = ("fo", "hf")
#: The variant when unset (FL-bench's default).
DEFAULT_VARIANT = "fo"
#: The inner (personalization) learning rate alpha when unset (FL-bench's local lr).
DEFAULT_ALPHA = 0.01
#: The finite difference of the HF variant's Hessian-vector product (FL-bench's).
DELTA = 1e-3


def check_variant(value: Any, error: type[Exception] = ValueError) -> str:
    """``value`` if it is one of :data:`VARIANTS`."""
    if value not in VARIANTS:
        raise error(
            f"per_fedavg_variant must be one of {list(VARIANTS)} (first order or "
            f"Hessian-free), got {value!r}."
        )
    return value


def check_alpha(value: Any, error: type[Exception] = ValueError) -> float:
    """``value`` as a finite float > 0."""
    return check_positive_number("per_fedavg_alpha", value, error)


def _grads(model: nn.Module, params: Sequence[torch.Tensor], loss_fn, batch) -> tuple:
    """(loss, outputs, gradients of ``loss_fn(model(x), y)`` with respect to ``params``)."""
    import torch

    x, y = batch
    outputs = model(x)
    loss = loss_fn(outputs, y)
    return loss, outputs, torch.autograd.grad(loss, list(params))


def _shift(params: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor], scale: float):
    import torch

    with torch.no_grad():
        for p, v in zip(params, vectors, strict=True):
            p.add_(v, alpha=scale)


def meta_gradient(model, params, loss_fn, batches, alpha: float, variant: str) -> tuple:
    """The meta-gradient of one local step at the model's current ``params`` (which it
    leaves as it found them) from ``batches`` (D, D'[, D'']); and the loss and outputs
    of ``params`` on D."""
    import torch

    start = [p.detach().clone() for p in params]
    loss, outputs, g = _grads(model, params, loss_fn, batches[0])
    _shift(params, g, -alpha)  # w - alpha grad f(w, D)
    g1 = _grads(model, params, loss_fn, batches[1])[2]
    with torch.no_grad():
        for p, s in zip(params, start, strict=True):
            p.copy_(s)
    if variant == "hf":  # (I - alpha H(w, D'')) g1, H g1 by a central difference
        _shift(params, g1, DELTA)
        plus = _grads(model, params, loss_fn, batches[2])[2]
        _shift(params, g1, -2 * DELTA)
        minus = _grads(model, params, loss_fn, batches[2])[2]
        with torch.no_grad():
            for p, s in zip(params, start, strict=True):
                p.copy_(s)
        g1 = [a - alpha * (u - m) / (2 * DELTA) for a, u, m in zip(g1, plus, minus, strict=True)]
    return loss, outputs, g1


def meta_train(
    local: LocalTraining,
    model: nn.Module,
    data: ClientDataset,
    generator: np.random.Generator | None,
    device: torch.device,
    alpha: float,
    variant: str,
) -> TrainStats:
    """Per-FedAvg's local steps on ``model`` (in place): ``local``'s batch plan, grouped
    (see the module docstring), its trainable parameters, its optimizer (beta) stepped
    with the meta-gradient."""
    from fedp13n.client.program import TrainStats

    named = dict(model.named_parameters())
    params = [named[n] for n in (local.trainable or named)]
    optimizer = local.optimizer_fn(params)
    size = 2 if variant == "fo" else 3
    loss_sum = metric_sum = 0.0
    seen = steps = 0
    for plan in local.segments(len(data), generator):
        model.train()
        for s in range(0, len(plan), size):
            group = plan[s : s + size]
            batches = [data.batch(group[min(j, len(group) - 1)], device) for j in range(size)]
            loss, outputs, g = meta_gradient(model, params, local.loss_fn, batches, alpha, variant)
            optimizer.zero_grad(set_to_none=True)
            for p, gp in zip(params, g, strict=True):
                p.grad = gp.detach().clone()
            optimizer.step()
            y = batches[0][1]
            if local.metric_fn is not None:
                loss_sum += float(loss.detach()) * len(y)
                metric_sum += float(local.metric_fn(outputs.detach(), y)) * len(y)
            seen += len(y)
            steps += 1
    return TrainStats(seen, loss_sum, metric_sum, steps)


def adapt(
    model: nn.Module,
    data: ClientDataset,
    loss_fn,
    alpha: float,
    batch_size: int,
    shuffle: bool,
    generator: np.random.Generator | None,
    device: torch.device,
) -> None:
    """Per-FedAvg's personalization, in place: one SGD step with ``alpha`` on the first
    batch (of ``batch_size``; drawn from ``generator`` with ``shuffle``) of ``data``; no
    step without examples."""
    from fedp13n.data.pipeline import batch_plan

    if not len(data):
        return
    idx = batch_plan(len(data), batch_size, shuffle=shuffle, generator=generator)[0]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    g = _grads(model, params, loss_fn, data.batch(idx, device))[2]
    _shift(params, g, -alpha)


build_per_fedavg = method_builder(
    "per_fedavg",
    """Per-FedAvg: :func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` with
    ``method="per_fedavg"``: FedAvg's server, the clients' local steps Per-FedAvg's
    (``per_fedavg_variant`` "fo" or "hf", inner rate ``per_fedavg_alpha``; beta is the
    client optimizer's learning rate). No client state.""",
)
