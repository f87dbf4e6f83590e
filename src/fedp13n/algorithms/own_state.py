"""The second evaluation protocol of personalized FL: the training clients, with their own
state, on their own test data; and its "new clients" variant for held-out clients.

TFF's protocol (Jiang et al. 2019; :mod:`fedp13n.personalization`) evaluates held-out
clients that personalize a model they never trained. Methods trained *in* the federation
(FedPer, FedRep, ...) are evaluated differently by the libraries that compare them,
FL-bench and PFLlib (TsingZ0/PFLlib, ``system/flcore/servers/serverbase.py``,
``test_metrics``: every client evaluates its own model on its own test set): each
training client is evaluated on its **own test data**, with the global shared part and its
**own stored state** (:func:`evaluate_own_state`). A client that never trained has no
state; the "new clients" variant (:func:`evaluate_new_clients`) lets a held-out client run
the method's local step(s) once, as in a round (the stage's client optimizer, learning
rate, local epochs and batch size; its personal part starting from the global model's,
the initial head), then evaluates it on its test data.

Nothing here is tuned: the local step is the training stage's, as set.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedp13n.algorithms.client_update import ClientTask, ClientWork
from fedp13n.algorithms.fedper import client_model_weights
from fedp13n.client.program import evaluate
from fedp13n.data.client_data import ClientData
from fedp13n.execution.base import Executor, SharedRef
from fedp13n.utils.types import LossFn, ModelFn

#: The protocols of this module (their sentences: ``OWN_STATE_PROTOCOLS`` of
#: :mod:`fedp13n.rundir.layout`).
OWN_STATE = "own_state"
NEW_CLIENTS = "new_clients"


def evaluate_own_state(
    model_fn: ModelFn,
    weights: Mapping[str, torch.Tensor],
    client_state: Any,
    test_data: ClientData,
    client_ids: Sequence[str],
    loss_fn: LossFn,
    device: torch.device | str = "cpu",
    method: str = "fedper",
) -> list[OrderedDict[str, Any]]:
    """Each client's metrics (:func:`fedp13n.client.program.evaluate`) on its test data
    in ``test_data``, with its own model under ``method``
    (:func:`fedp13n.algorithms.fedper.client_model_weights`: ``weights`` and its tensors
    from ``client_state``, a :class:`fedp13n.state.ClientStateStore`; a client without
    stored state: the global ones)."""
    with torch.random.fork_rng(devices=[]):
        model = model_fn().to(device)
    out = []
    for c in client_ids:
        state = client_state.get(c)
        model.load_state_dict(client_model_weights(method, weights, state))
        out.append(evaluate(model, test_data.create_dataset(c, device=_on(device)), loss_fn))
    return out


def _on(device: torch.device | str) -> Any:
    return None if torch.device(device).type == "cpu" else device


@dataclass
class _NewClient:
    """One held-out client's local step(s), then its test metrics (picklable)."""

    work: ClientWork
    loss_fn: LossFn

    def __call__(self, item: tuple[ClientTask, SharedRef]) -> dict[str, Any]:
        task, test = item
        return dict(self.work.fit_and_evaluate(task, test, self.loss_fn))


def evaluate_new_clients(
    work: ClientWork,
    weights: Mapping[str, torch.Tensor],
    train_data: ClientData,
    test_data: ClientData,
    client_ids: Sequence[str],
    loss_fn: LossFn,
    executor: Executor,
    round_num: int,
) -> list[dict[str, Any]]:
    """Each held-out client's metrics on its test data after ``work``'s local step(s) (a
    training process's ``client_work``) on its train data, from ``weights`` with no state
    (the personal part: the global model's), on ``executor``; the random streams are those
    of round ``round_num`` (e.g. the round after the last), keyed by the client's id."""
    weights_ref = executor.share({k: v.detach().clone() for k, v in weights.items()})
    train_ref, test_ref = executor.share(train_data), executor.share(test_data)
    items = [(ClientTask(weights_ref, train_ref, c, round_num, None), test_ref) for c in client_ids]
    return executor.map(_NewClient(work, loss_fn), items)
