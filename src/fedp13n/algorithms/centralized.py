"""Centralized training: the same model trained by plain SGD on the pooled examples of the
training clients (datacenter training), the baseline of Jiang et al. 2019's third claim
("a model trained centrally is harder to personalize than one trained with FedAvg").

It is a process with FedAvg's interface (:mod:`fedp13n.algorithms.loop`):
``initialize() -> ServerState``, ``next(state, clients) -> (state, RoundMetrics)`` and
``get_model_weights(state)``, so the round loop, checkpoints, ``--resume``, the global
evaluation every ``eval_every`` rounds and the personalization curve work unchanged, and a
run personalizes the centrally trained model with the same strategies.

A *round* is ``epochs`` passes over the pooled examples (or at most ``max_steps``
batches), by the one client program (:class:`fedp13n.client.program.LocalTraining`, the
per-epoch pipeline: a fresh permutation of all pooled examples every epoch, cut into
batches of ``batch_size``, the last one smaller). Exactly:

* pooled examples: the clients given to ``next`` concatenated in their order (a
  :class:`~fedp13n.algorithms.fed_avg.ClientSelection`'s ids, or a list of datasets);
* example order of round ``r``: ``derive_rng(seed, "centralized-shuffle", r)``, one
  ``permutation(n)`` per epoch; dropout: torch's generator seeded with
  ``derive_seed(seed, "centralized", r)`` (the caller's global random state untouched);
* the optimizer (``optimizer_fn`` of the trainable parameters) carries its state (SGD
  momentum, Adam moments) from round to round in ``ServerState.optimizer_state``: rounds
  are one uninterrupted training, cut for checkpoints and evaluation;
* the initial weights are FedAvg's for the same seed (``model_fn()`` under
  ``derive_seed(seed, "init")``), so both start from the same model.

There are no clients, server optimizer or aggregation: ``RoundMetrics.num_clients``
counts the clients whose examples were pooled. Training runs in this process, on
``compute.device`` (the pooled examples copied there once).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.algorithms.client_update import accuracy, trainable_names
from fedp13n.algorithms.fed_avg import (
    DEFAULT_CLIENT_OPTIMIZER,
    ClientSelection,
    RoundMetrics,
    ServerState,
    _check_model,
    _check_state,
    _clone_tree,
    check_data_fits,
    load_model_weights,
    load_optimizer_state,
)
from fedp13n.algorithms.loop import TrainingError
from fedp13n.client.program import LocalTraining
from fedp13n.data.client_data import ClientDataset
from fedp13n.models.spec import check_model_fn
from fedp13n.utils.checks import check_callable, check_positive_int, check_seed
from fedp13n.utils.device import Compute
from fedp13n.utils.seeding import derive_rng, derive_seed
from fedp13n.utils.types import LossFn, MetricFn, ModelFn, OptimizerFn


class CentralizedTraining:
    """The process returned by :func:`build_centralized` (see the module docstring)."""

    def __init__(
        self,
        model_fn: ModelFn,
        optimizer_fn: OptimizerFn,
        *,
        loss_fn: LossFn,
        metrics_fn: MetricFn,
        epochs: int | None,
        batch_size: int,
        seed: int,
        max_steps: int | None,
        compute: Compute,
    ) -> None:
        self.model_fn, self.optimizer_fn = model_fn, optimizer_fn
        self.loss_fn, self.metrics_fn = loss_fn, metrics_fn
        self.epochs, self.batch_size, self.max_steps = epochs, batch_size, max_steps
        self.seed, self.compute = seed, compute
        self._model: nn.Module | None = None
        self._model_device: torch.device | None = None
        self._classes: dict[tuple, int | None] = {}
        #: the last pooled dataset and what it was pooled from (rounds reuse it)
        self._pooled: tuple[Any, tuple[str, ...], ClientDataset] | None = None

    def initialize(self) -> ServerState:
        """Round 0: FedAvg's initial weights for the seed and a fresh optimizer state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "init"))
            model = _check_model(self.model_fn())
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        params = dict(model.named_parameters())
        optimizer = self.optimizer_fn([params[n] for n in trainable_names(model)])
        return ServerState(0, weights, _clone_tree(optimizer.state_dict()))

    def get_model_weights(self, state: ServerState) -> dict[str, torch.Tensor]:
        """The model's state dict (a copy), loadable into ``model_fn()``."""
        _check_state(state)
        return {k: v.detach().clone() for k, v in state.model.items()}

    def next(
        self, state: ServerState, clients: ClientSelection | Sequence[ClientDataset]
    ) -> tuple[ServerState, RoundMetrics]:
        """One round: ``epochs`` passes of SGD over the pooled examples of ``clients``."""
        start = time.perf_counter()
        _check_state(state)
        round_num = state.round_num + 1
        device = self.compute.placed()
        model = self._load_model(state, device)
        data, num_clients = self._pool(model, clients, device)
        made: list[torch.optim.Optimizer] = []  # the run's optimizer, for its state after

        def optimizer_fn(params: Any) -> torch.optim.Optimizer:
            made.append(self._optimizer(params, state))
            return made[-1]

        training = LocalTraining(
            optimizer_fn,
            self.loss_fn,
            self.batch_size,
            epochs=self.epochs,
            shuffle=True,
            max_steps=self.max_steps,
            trainable=trainable_names(model),
            metric_fn=self.metrics_fn,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "centralized", round_num))
            with self.compute.autocast(device):
                stats = training.run(
                    model,
                    data,
                    generator=derive_rng(self.seed, "centralized-shuffle", round_num),
                    device=device,
                )
        weights = _clone_tree(model.state_dict())
        bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise TrainingError(
                f"round {round_num}: centralized training diverged (weights {bad[:3]} are not "
                "finite); lower the client learning rate."
            )
        n = stats.num_trained
        metrics = RoundMetrics(
            round_num=round_num,
            loss=stats.loss_sum / n if n else math.nan,
            accuracy=stats.metric_sum / n if n else math.nan,
            num_examples=n,
            num_clients=num_clients,
            num_skipped_clients=0,
            seconds=time.perf_counter() - start,
        )
        return ServerState(round_num, weights, _clone_tree(made[0].state_dict())), metrics

    # -- internals ----------------------------------------------------------------------------
    def _optimizer(self, params: Any, state: ServerState) -> torch.optim.Optimizer:
        """``optimizer_fn(params)`` holding the state's optimizer state (momentum, ...)."""
        optimizer = self.optimizer_fn(params)
        load_optimizer_state(optimizer, state.optimizer_state)
        return optimizer

    def _load_model(self, state: ServerState, device: torch.device) -> nn.Module:
        if self._model is None or self._model_device != device:
            with torch.random.fork_rng(devices=[]):
                self._model = _check_model(self.model_fn()).to(device)
            self._model_device = device
        return load_model_weights(self._model, state.model)

    def _pool(
        self,
        model: nn.Module,
        clients: ClientSelection | Sequence[ClientDataset],
        device: torch.device,
    ) -> tuple[ClientDataset, int]:
        """The clients' examples as one dataset (on ``device``), checked against the model
        client by client; a selection's pooled data is kept for the next rounds."""
        if isinstance(clients, ClientSelection):
            cd, ids = clients.client_data, tuple(str(c) for c in clients.client_ids)
            if self._pooled is not None and self._pooled[0] is cd and self._pooled[1] == ids:
                return self._pooled[2], len(ids)
            missing = [c for c in ids if c not in cd]
            if missing:
                raise KeyError(
                    f"{len(missing)} selected client ids are not in the ClientData "
                    f"(e.g. {missing[:3]}); select from client_data.client_ids."
                )
            datasets, keys = [cd.create_dataset(c) for c in ids], list(ids)
        elif isinstance(clients, Sequence) and all(isinstance(d, ClientDataset) for d in clients):
            datasets, keys = list(clients), list(range(len(clients)))
        else:
            raise TypeError(
                "clients must be a ClientSelection(client_data, client_ids) or a list of "
                f"ClientDataset, got {type(clients).__name__}."
            )
        check_data_fits(model, datasets, keys, self._classes)
        if not any(len(d) for d in datasets):
            raise ValueError("the selected clients have no examples to train on.")
        pooled = ClientDataset(
            np.concatenate([d.x for d in datasets]), np.concatenate([d.y for d in datasets])
        )
        if device.type != "cpu":
            pooled = pooled.to(device)
        if isinstance(clients, ClientSelection):
            self._pooled = (clients.client_data, tuple(keys), pooled)
        return pooled, len(datasets)


def build_centralized(
    model_fn: ModelFn,
    optimizer_fn: OptimizerFn = DEFAULT_CLIENT_OPTIMIZER,
    *,
    loss_fn: LossFn = F.cross_entropy,
    metrics_fn: MetricFn = accuracy,
    epochs: int | None = 1,
    batch_size: int = 20,
    seed: int = 0,
    max_steps: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    deterministic: bool = True,
    compute: Compute | None = None,
) -> CentralizedTraining:
    """Build centralized SGD on the pooled examples of the clients given to ``next``.

    ``optimizer_fn(params)``: the optimizer (default: SGD at 0.02, TFF's client
    optimizer); ``epochs`` passes per round, batches of ``batch_size``, at most
    ``max_steps`` batches per round (``epochs=None`` needs it); ``loss_fn``/``metrics_fn``
    map ``(outputs, targets)`` to batch means; ``device``, ``precision``,
    ``deterministic`` or ``compute`` as for :func:`~fedp13n.algorithms.build_weighted_fed_avg`
    (an engine in ``compute`` is not used: one model trains). The exact order of examples
    and random streams is in the module docstring.
    """
    check_model_fn(model_fn)
    check_seed(seed)
    for name, fn in (("optimizer_fn", optimizer_fn), ("loss_fn", loss_fn),
                     ("metrics_fn", metrics_fn)):  # fmt: skip
        check_callable(name, fn)
    check_positive_int("batch_size", batch_size)
    if max_steps is not None:
        check_positive_int("max_steps (or None for no limit)", max_steps)
    if epochs is None and max_steps is None:
        raise ValueError("epochs=None repeats the pooled data forever; give max_steps.")
    if epochs is not None:
        check_positive_int("epochs", epochs)
    compute = Compute.given(
        compute, device=device, precision=precision, deterministic=deterministic
    ).without_engine()
    return CentralizedTraining(
        model_fn,
        optimizer_fn,
        loss_fn=loss_fn,
        metrics_fn=metrics_fn,
        epochs=epochs,
        batch_size=int(batch_size),
        seed=int(seed),
        max_steps=None if max_steps is None else int(max_steps),
        compute=compute,
    )
