"""pFedMe: personalized models by Moreau envelopes, a global model averaged from the
clients' local copies of it.

Source: Dinh, Tran and Nguyen, "Personalized Federated Learning with Moreau Envelopes",
NeurIPS 2020 (arXiv:2006.08848), Algorithm 1. A selected client k receives the global
``w`` (its ``w_local = w``) and, for each local step on a batch D,

1. solves ``theta = argmin f(theta; D) + lambda/2 ||theta - w_local||^2`` approximately by
   K steps ``theta <- theta - personal_lr * (grad f(theta; D) + lambda (theta -
   w_local))``;
2. ``w_local <- w_local - eta * lambda * (w_local - theta)``.

The server: ``w <- (1 - beta) w + beta * mean(w_local)`` (beta = 1: plain averaging).

Here, as in the authors' code (CharlieDinh/pFedMe, ``FLAlgorithms/users/userpFedMe.py``:
``set_parameters`` gives both ``theta`` and ``w_local`` the global model at the start of
a round, and ``theta`` carries over from one local step to the next): each local step is
a batch of the client's plan (:meth:`fedp13n.client.program.LocalTraining.segments`);
``eta`` is the client optimizer, stepped with the "gradient" ``lambda (w_local - theta)``
(plain SGD with learning rate eta is step 2); the inner steps are plain SGD with
``pfedme_personal_lr``. The mean is FedAvg's, weighted by the clients' examples (the
authors' ``persionalized_aggregate_parameters``), and beta scales it before the server
optimizer (server SGD lr 1.0 without momentum: the update above). The client's last
``theta`` (every trainable parameter) is its state in a
:class:`fedp13n.state.ClientStateStore` (spec ``fedper_state_spec(model_fn, None,
"pfedme")``), evaluated by the own-state protocol; a new client runs the round's steps
from the global model and is evaluated with its ``theta``. Only the round's clients train
(the authors' code trains every client each round and averages the selected ones). The
loss counted for the round is theta's on D at each step's first inner iteration.

Defaults (:data:`DEFAULT_LAMBDA` 15, :data:`DEFAULT_K` 5, :data:`DEFAULT_PERSONAL_LR`
0.01, :data:`DEFAULT_BETA` 1.0) are FL-bench's (KarhouTam/FL-bench,
``src/server/pfedme.py``: ``--lamda 15 --k 5 --pers_lr 0.01 --beta 1.0``); the paper tunes
them per data set. Not here: the small L2 term ``mu * theta`` (``mu`` 1e-3) that the
authors' inner optimizer (``FLAlgorithms/optimizers/fedoptimizer.py``), FL-bench and PFLlib
add to step 1; Algorithm 1 has none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedp13n.algorithms.fedper import method_builder
from fedp13n.utils.checks import check_positive_int, check_positive_number

if TYPE_CHECKING:  # torch is imported where it is used: the configuration reads this module
    import numpy as np
    import torch
    from torch import nn

    from fedp13n.client.program import LocalTraining, TrainStats
    from fedp13n.data.client_data import ClientDataset

DEFAULT_LAMBDA = 15.0
DEFAULT_K = 5
DEFAULT_PERSONAL_LR = 0.01
DEFAULT_BETA = 1.0


def check_settings(
    lam: Any, k: Any, personal_lr: Any, beta: Any, error: type[Exception] = ValueError
) -> tuple[float, int, float, float]:
    """(lambda, K, personal_lr, beta), each checked (None: its default)."""
    return (
        check_positive_number("pfedme_lambda", DEFAULT_LAMBDA if lam is None else lam, error),
        check_positive_int("pfedme_k", DEFAULT_K if k is None else k, error),
        check_positive_number(
            "pfedme_personal_lr", DEFAULT_PERSONAL_LR if personal_lr is None else personal_lr, error
        ),
        check_positive_number("pfedme_beta", DEFAULT_BETA if beta is None else beta, error),
    )


def unstable_note(eta: float, lam: Any, personal_lr: Any, optimizer: str) -> str | None:
    """A warning when a rate times lambda is 2 or more (None: none): with plain SGD as
    the client optimizer, step 2 ``w_local <- w_local - eta * lambda * (w_local - theta)``
    multiplies the distance to ``theta`` by ``1 - eta * lambda`` (and the inner step the
    distance of ``theta`` to ``w_local`` by ``1 - personal_lr * lambda``), which grows
    when the product passes 2: the local models blow up and the round leaves their
    clients out (seen on Shakespeare at TFF's client rate 1 with lambda 15)."""
    lam = DEFAULT_LAMBDA if lam is None else lam
    personal_lr = DEFAULT_PERSONAL_LR if personal_lr is None else personal_lr
    rates = {"pfedme_personal_lr": personal_lr}
    if optimizer == "sgd":
        rates = {"client_learning_rate": eta, **rates}
    bad = [(k, r) for k, r in rates.items() if r * lam >= 2]
    if not bad:
        return None
    key, rate = bad[0]
    return (
        f"pFedMe: {key} x pfedme_lambda = {rate:g} x {lam:g} = {rate * lam:g} is 2 or more, "
        f"so its local models overshoot and diverge; lower {key} below 2 / pfedme_lambda "
        f"= {2 / lam:.3g} (e.g. {1 / lam:.3g}) or pfedme_lambda"
    )


def pfedme_train(
    local: LocalTraining,
    model: nn.Module,
    data: ClientDataset,
    generator: np.random.Generator | None,
    device: torch.device,
    settings: tuple[float, int, float],
) -> tuple[TrainStats, dict[str, torch.Tensor]]:
    """pFedMe's local steps from the model's weights (``w``): the model ends holding
    ``theta``; returns the statistics and ``w_local`` (trainable parameters, by name).
    ``settings``: (lambda, K, personal_lr); ``local``: the batch plan, trainable
    parameters, loss, metric and optimizer (eta)."""
    import torch

    from fedp13n.client.program import TrainStats

    lam, k, personal_lr = settings
    named = dict(model.named_parameters())
    names = list(local.trainable or named)
    theta = [named[n] for n in names]
    w_local = [torch.nn.Parameter(p.detach().clone()) for p in theta]
    optimizer = local.optimizer_fn(w_local)
    loss_sum = metric_sum = 0.0
    seen = steps = 0
    for plan in local.segments(len(data), generator):
        model.train()
        for idx in plan:
            x, y = data.batch(idx, device)
            for i in range(k):
                outputs = model(x)
                loss = local.loss_fn(outputs, y)
                grads = torch.autograd.grad(loss, theta)
                with torch.no_grad():
                    for p, g, w in zip(theta, grads, w_local, strict=True):
                        p.sub_(personal_lr * (g + lam * (p - w)))
                if i == 0 and local.metric_fn is not None:
                    loss_sum += float(loss.detach()) * len(y)
                    metric_sum += float(local.metric_fn(outputs.detach(), y)) * len(y)
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for p, w in zip(theta, w_local, strict=True):
                    w.grad = lam * (w.detach() - p.detach())
            optimizer.step()
            seen += len(y)
            steps += 1
    out = {n: w.detach().clone() for n, w in zip(names, w_local, strict=True)}
    return TrainStats(seen, loss_sum, metric_sum, steps), out


build_pfedme = method_builder(
    "pfedme",
    """pFedMe: :func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` with
    ``method="pfedme"``: each client's ``theta`` in ``client_state`` (a
    :class:`~fedp13n.state.ClientStateStore` made with ``fedper_state_spec(model_fn, None,
    "pfedme")``); eta is the client optimizer; ``pfedme_lambda``, ``pfedme_k``,
    ``pfedme_personal_lr``, ``pfedme_beta`` default to :data:`DEFAULT_LAMBDA`,
    :data:`DEFAULT_K`, :data:`DEFAULT_PERSONAL_LR`, :data:`DEFAULT_BETA`. Commit the store
    after each round.""",
)
