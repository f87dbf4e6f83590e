"""The client side of Federated Averaging (McMahan et al. 2017): local SGD from the
broadcast global weights, returning the model delta.

This module is pure client work: :class:`ClientWork` is a picklable callable that an
:class:`~fedp13n.execution.Executor` applies to :class:`ClientTask` objects, in this or
another process. Its result depends only on (global weights, client data, settings,
seed, round, client key), never on which worker runs it or in what order, which is what
makes FedAvg bit-for-bit reproducible across executors.

Batches: the local steps are :func:`fedp13n.data.pipeline.batch_plan` of the client's
examples, with the pipeline, shuffle buffer and step limit of the :class:`ClientWork`
(``"epochs"``: ``epochs`` shuffled passes; ``"tff"``: TFF's
``repeat(E).shuffle(buffer).batch(B)``, batches across epoch boundaries; ``max_steps``:
``.take(K)``).

Randomness: dropout uses the torch generator seeded with
``derive_seed(seed, "fedavg", round, client_key)``; the example order is drawn from
``derive_rng(seed, "fedavg-shuffle", round, client_key)`` (one generator per client and
round; for ``"epochs"`` one permutation per epoch). The caller's global torch random
state is left untouched.

Devices: ``ClientWork.compute.device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``) is where the
client trains (:func:`fedp13n.utils.device.work_device`: in a worker process an executor
pinned to a GPU, any CUDA device means that GPU). The model is built on the CPU (the same
random initialisation as ever), then moved; the client's examples stay resident on the
device (a shared ``ClientData`` is copied there once per process, see
:meth:`~fedp13n.data.ClientData.create_dataset`), so batches are cut on the device;
dropout masks are drawn on the CPU from the client's generator and moved, so a GPU trains
on the same masks and example order as the CPU, and the numbers differ by float rounding
only. The delta and buffers come back on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from dataclasses import dataclass, field

import torch
from torch import nn

from fedp13n.algorithms.apfl import apfl_local
from fedp13n.algorithms.fedper import with_personal_state
from fedp13n.algorithms.fedprox import proximal_penalty
from fedp13n.algorithms.per_fedavg import adapt, meta_train
from fedp13n.algorithms.pfedme import pfedme_train
from fedp13n.algorithms.scaffold import control_penalty, learning_rate, next_control
from fedp13n.client.program import LocalTraining, TrainStats, evaluate
from fedp13n.client.result import ClientOutput
from fedp13n.data.client_data import ClientDataset
from fedp13n.data.pipeline import DEFAULT_CLIENT_PIPELINE, DEFAULT_SHUFFLE_BUFFER
from fedp13n.execution.base import SharedRef
from fedp13n.models.objectives import accuracy  # noqa: F401 (re-exported: its old home)
from fedp13n.utils.device import Compute
from fedp13n.utils.lru import LRUCache
from fedp13n.utils.seeding import derive_rng, derive_seed
from fedp13n.utils.types import LossFn, MetricFn, ModelFn, OptimizerFn


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters FedAvg trains (``requires_grad``), in module order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def buffer_names(model: nn.Module) -> list[str]:
    """State-dict entries that are buffers (e.g. BatchNorm statistics), in module order."""
    params = {n for n, _ in model.named_parameters()}
    return [n for n in model.state_dict() if n not in params]


def _on_device(
    data: ClientDataset | SharedRef, client_key: int | str, on_device: torch.device | None
) -> ClientDataset:
    """The client's examples (``data`` itself, a dataset, or the client's of a shared
    ClientData), resident on ``on_device`` (None: where they are)."""
    if isinstance(data, ClientDataset):
        return data if on_device is None else data.to(on_device)
    return data.get().create_dataset(client_key, device=on_device)


@dataclass(frozen=True)
class ClientTask:
    """One client's work in one round: small and cheap to pickle.

    ``data`` is either the client's :class:`ClientDataset` itself or a shared reference to
    a :class:`~fedp13n.data.ClientData`, in which case ``client_key`` is the client id to
    look up in it. ``client_key`` also keys the client's random streams. ``state``: the
    client's own tensors kept across rounds (:meth:`fedp13n.state.ClientStateStore.get`,
    ``None`` for none), carried by value with the task so that a retried task starts
    from the same state; the new state comes back in ``ClientOutput.state`` and only the
    lead process writes it.
    """

    weights: SharedRef
    data: ClientDataset | SharedRef
    client_key: int | str
    round_num: int
    state: dict[str, torch.Tensor] | None = None
    #: what the method's server sends beside the weights (SCAFFOLD's control variate c)
    server: SharedRef | None = None


# One model per worker process and ClientWork, reused across tasks and rounds: building a
# model costs more than loading weights into it. Keyed by ClientWork.token, which survives
# pickling; bounded so that old processes' models do not accumulate.
_MODEL_CACHE = LRUCache(4)


def _cached_model(token: str, model_fn: ModelFn, device: torch.device) -> nn.Module:
    """The worker's model for ``token`` on ``device`` (built on the CPU, then moved)."""
    if device.type == "cpu":
        return _MODEL_CACHE.get(token, model_fn)
    return _MODEL_CACHE.get(f"{token}@{device}", lambda: model_fn().to(device))


@dataclass
class ClientWork:
    """Local training with fixed settings; call it on a :class:`ClientTask`.

    ``loss_fn`` and ``metric_fn`` map ``(outputs, targets)`` to the batch *mean* (as torch's
    losses do by default); sums over examples are formed by multiplying by the batch size,
    so metrics are example-weighted whatever the batch sizes. ``pipeline``,
    ``shuffle_buffer`` and ``max_steps`` choose the local steps (see
    :func:`~fedp13n.data.pipeline.batch_plan`; ``epochs=None`` needs ``max_steps``). The
    weight of the client's update (``ClientOutput.num_examples``) is its number of
    examples under ``"epochs"`` (fedp13n's convention) and the number of examples it
    processed under ``"tff"`` (TFF's ``ClientWeighting.NUM_EXAMPLES``). ``proximal_mu``
    > 0 is FedProx's client (:mod:`fedp13n.algorithms.fedprox`). ``personal`` (parameter
    names) makes it FedPer's client (:mod:`fedp13n.algorithms.fedper`): those parameters
    start from the task's ``state`` (the global ones when it is None), train with the
    rest, and come back as the result's ``state``, not in its delta (FedBN's also name
    buffers, the batch norms' statistics: :mod:`fedp13n.algorithms.fedbn`).
    """

    model_fn: ModelFn
    optimizer_fn: OptimizerFn
    loss_fn: LossFn
    metric_fn: MetricFn
    epochs: int | None
    batch_size: int
    shuffle: bool
    seed: int
    pipeline: str = DEFAULT_CLIENT_PIPELINE
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    max_steps: int | None = None
    #: FedProx's mu (:mod:`fedp13n.algorithms.fedprox`): the local loss gets
    #: ``mu/2 * ||w - w_global||^2`` over the trainable parameters; 0 (default) is FedAvg.
    proximal_mu: float = 0.0
    #: FedPer's personal parameters (:mod:`fedp13n.algorithms.fedper`); () for none.
    personal: tuple[str, ...] = ()
    #: FedRep's head phase (:mod:`fedp13n.algorithms.fedrep`): epochs of the personal
    #: parameters alone (the rest frozen) before the rest trains alone; 0: no phases.
    head_epochs: int = 0
    #: Ditto's lambda (:mod:`fedp13n.algorithms.ditto`): after the global phase, the
    #: task's state (a whole personal model) trains with ``lambda/2 * ||v - w_global||^2``
    #: and comes back as the result's state; None: no personal phase.
    ditto_lambda: float | None = None
    #: SCAFFOLD (:mod:`fedp13n.algorithms.scaffold`): local steps corrected by
    #: ``c - c_i`` (the task's ``server`` and ``state``); ``c_i+`` comes back as the state.
    scaffold: bool = False
    #: Per-FedAvg's variant (:mod:`fedp13n.algorithms.per_fedavg`, "fo" or "hf"): meta
    #: steps with inner rate ``per_fedavg_alpha``; None: plain local steps.
    per_fedavg: str | None = None
    per_fedavg_alpha: float = 0.0
    #: pFedMe's (lambda, K, personal_lr) (:mod:`fedp13n.algorithms.pfedme`): the model
    #: trained is theta (the state), ``w_local`` is sent; None: plain local steps.
    pfedme: tuple[float, int, float] | None = None
    #: APFL (:mod:`fedp13n.algorithms.apfl`): a new client's mixing weight alpha (None: not
    #: APFL); the task's state holds v and alpha, which come back as the result's state.
    apfl_alpha: float | None = None
    #: APFL: whether alpha is learned (the paper's adaptive alpha) or stays fixed.
    apfl_adaptive: bool = True
    #: Where the client trains (see the module docstring), in which precision and, on a
    #: GPU, whether with deterministic kernels: resolved by the builder (no engine here).
    compute: Compute = Compute()
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __call__(self, task: ClientTask) -> ClientOutput:
        return self._in_context(task, self._train)

    def fit_and_evaluate(self, task: ClientTask, test: ClientDataset | SharedRef, loss_fn: LossFn):
        """The client's local step(s) on its train data (``task``, as in a round), then the
        trained model's metrics (:func:`fedp13n.client.program.evaluate`) on its ``test``
        data (a dataset, or a shared ClientData holding the client): how a held-out client
        is evaluated under the "new clients" protocol (:mod:`fedp13n.algorithms.own_state`)."""

        def then(model, weights, dataset, task, device):
            if self.per_fedavg is not None:  # its personalization: one step with alpha
                model.load_state_dict(weights)
                adapt(
                    model, dataset, self.loss_fn, self.per_fedavg_alpha, self.batch_size,
                    self.shuffle, self._generator(task), device,
                )  # fmt: skip
            elif self.head_epochs:  # FedRep: a new client learns its head, the body stays
                model.load_state_dict(with_personal_state(weights, task.state))
                head = [n for n in trainable_names(model) if n in self.personal]
                local = self._local(self.head_epochs, None, head, None)
                local.run(model, dataset, self._generator(task), device)
            else:
                self._fit(model, weights, dataset, task, device)
            on_device = None if device.type == "cpu" else device
            return evaluate(model, _on_device(test, task.client_key, on_device), loss_fn)

        return self._in_context(task, then)

    def _in_context(self, task: ClientTask, then):
        """``then(model, weights, dataset, task, device)`` with the client's data on its
        device, the worker's model, the task's seed and the run's precision."""
        device = self.compute.placed()
        on_device = None if self.compute.device == "cpu" else device
        dataset = _on_device(task.data, task.client_key, on_device)
        with torch.random.fork_rng(devices=[]):
            # Build (or reuse) the model *before* seeding: building draws random numbers,
            # and only the first task of a worker builds it.
            model = _cached_model(self.token, self.model_fn, device)
            torch.manual_seed(derive_seed(self.seed, "fedavg", task.round_num, task.client_key))
            with self.compute.autocast(device):
                return then(model, task.weights.get(), dataset, task, device)

    def _fit(
        self,
        model: nn.Module,
        weights: dict[str, torch.Tensor],
        dataset: ClientDataset,
        task: ClientTask,
        device: torch.device,
    ) -> tuple[dict, list[str], TrainStats, dict | None, dict | None]:
        """Load the task's starting weights (the global ones, the personal ones from its
        state) and train ``model`` in place; the starting weights, the shared trainable
        names, the training statistics, for Ditto and APFL the global copy's trained state
        dict (on the CPU; the model then holds the personal model; pFedMe: the sent
        ``w_local``, the model holding theta; else None) and APFL's new state (else None:
        the state is read from the model)."""
        if self.personal:
            weights = with_personal_state(weights, task.state)
        model.load_state_dict(weights)
        names = trainable_names(model)
        shared = [n for n in names if n not in self.personal]
        penalty = None
        if self.proximal_mu:
            penalty = proximal_penalty(model, weights, self.proximal_mu, shared)
        if self.scaffold and task.server is not None:  # (a new client: no correction)
            penalty = control_penalty(model, task.server.get(), task.state, shared)
        generator = self._generator(task)
        if self.apfl_alpha is not None:  # APFL: w, v and alpha in one client program

            def run(module, loss_fn, mixed_loss):
                local = self._local(self.epochs, self.max_steps, None, mixed_loss)
                local = dataclasses.replace(local, loss_fn=loss_fn)
                return local.run(module, dataset, generator=generator, device=device)

            stats, trained, own = apfl_local(self, model, weights, task.state, names, run)
            return weights, shared, stats, trained, own
        if self.head_epochs:  # FedRep: the head alone first, then the body alone
            head = [n for n in names if n in self.personal]
            self._local(self.head_epochs, None, head, None).run(model, dataset, generator, device)
            names = shared
        local = self._local(self.epochs, self.max_steps, names, penalty)
        if self.per_fedavg is not None:  # Per-FedAvg: meta steps (beta: the optimizer's)
            alpha, variant = self.per_fedavg_alpha, self.per_fedavg
            stats = meta_train(local, model, dataset, generator, device, alpha, variant)
        elif self.pfedme is not None:  # pFedMe: the model ends as theta, w_local is sent
            stats, w_local = pfedme_train(local, model, dataset, generator, device, self.pfedme)
            sent = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            sent = {**sent, **{n: t.cpu() for n, t in w_local.items()}}
            return weights, shared, stats, sent, None
        else:
            stats = local.run(model, dataset, generator=generator, device=device)
        trained = None
        if self.ditto_lambda is not None:  # Ditto: then the personal model, pulled to w^t
            trained = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(with_personal_state(weights, task.state))
            pull = proximal_penalty(model, weights, self.ditto_lambda, names)
            local = self._local(self.epochs, self.max_steps, names, pull)
            local.run(model, dataset, generator=generator, device=device)
        return weights, shared, stats, trained, None

    def _generator(self, task: ClientTask):  # the example order (see the module docstring)
        return derive_rng(self.seed, "fedavg-shuffle", task.round_num, task.client_key)

    def _local(self, epochs, max_steps, trainable, penalty) -> LocalTraining:
        """The client program with this client's settings, for these epochs / steps of
        the ``trainable`` parameters."""
        return LocalTraining(
            self.optimizer_fn,
            self.loss_fn,
            self.batch_size,
            epochs=epochs,
            shuffle=self.shuffle,
            pipeline=self.pipeline,
            shuffle_buffer=self.shuffle_buffer,
            max_steps=max_steps,
            trainable=trainable,
            penalty=penalty,
            metric_fn=self.metric_fn,
        )

    def _train(
        self,
        model: nn.Module,
        weights: dict[str, torch.Tensor],
        dataset: ClientDataset,
        task: ClientTask,
        device: torch.device,
    ) -> ClientOutput:
        weights, shared, stats, trained, own = self._fit(model, weights, dataset, task, device)
        with torch.no_grad():
            sent = trained if trained is not None else model.state_dict()
            delta = {n: (weights[n] - sent[n].detach().cpu()).clone() for n in shared}
            buffers = {n: sent[n].detach().cpu().clone() for n in buffer_names(model)}
            kept = shared if trained is not None else self.personal  # Ditto: the whole model
            now = model.state_dict()  # FedBN's personal part holds buffers too
            state = {n: now[n].detach().cpu().clone() for n in kept} or None
            state = own if own is not None else state
            if self.scaffold and task.server is not None:
                c, lr = task.server.get(), learning_rate(self.optimizer_fn)
                state = next_control(task.state, c, delta, max(stats.num_steps, 1), lr)
            finite = math.isfinite(stats.loss_sum) and all(
                bool(torch.isfinite(t).all())
                for t in (*delta.values(), *buffers.values(), *(state or {}).values())
                if t.is_floating_point()
            )
        if not finite:
            delta = buffers = state = None
        return ClientOutput(
            delta=delta,
            buffers=buffers,
            num_examples=stats.num_trained if self.pipeline == "tff" else len(dataset),
            num_trained=stats.num_trained,
            loss_sum=stats.loss_sum,
            metric_sum=stats.metric_sum,
            finite=finite,
            state=state,
        )
