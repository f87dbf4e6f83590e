"""Weighted Federated Averaging (McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data"), with TFF's ``build_weighted_fed_avg`` semantics
and vocabulary.

A round: the server broadcasts the global weights; each client starts from them, trains
locally (:mod:`fedp13n.algorithms.client_update`) and returns its delta
``initial - trained``; the server averages the deltas weighted by each client's number of
training examples and applies its optimizer to that average as a *pseudo-gradient*
(``weights -= lr * avg_delta`` for SGD), so server SGD with lr 1.0 and no momentum is
plain weighted averaging, and momentum / Adam give FedAvgM / FedAdam (Reddi et al. 2020).

Choices worth knowing:

* Clients whose update (or training loss) is not finite are left out of the average and
  counted in ``RoundMetrics.num_skipped_clients``. Clients with no examples take part
  with weight 0. When no client contributes, the weights and the server optimizer state
  are left unchanged (no optimizer step, so momentum does not move them either).
* Buffers (non-trainable state such as BatchNorm running statistics) do not go through
  the server optimizer. With ``buffer_aggregation="keep"`` (default) they keep the
  server's value whatever the clients did, which is exactly TFF (its server only updates
  trainable weights); ``"average"`` makes each buffer the example-weighted average of the
  clients' trained buffers (integer buffers such as ``num_batches_tracked`` rounded to
  nearest). Parameters with ``requires_grad=False`` are never changed.
* The client pipeline: ``client_pipeline="tff"`` (default, as the CLI) is TFF's
  ``repeat(E).shuffle(shuffle_buffer).batch(B)`` whose batches run across epoch
  boundaries, ``"epochs"`` trains ``client_epochs`` separately shuffled passes;
  ``max_steps`` caps the local steps (``.take(K)``).
  Under ``"tff"`` a client's weight is the number of examples it processed (TFF's
  ``NUM_EXAMPLES`` weighting), under ``"epochs"`` its number of examples.
* Aggregation runs in float64 in the fixed order of the clients given to ``next``, then
  casts, so results do not depend on the executor or number of workers.
* Rounds are numbered from 1: ``state.round_num`` counts completed rounds and ``next``
  runs round ``state.round_num + 1``; its random streams are keyed by that number.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.algorithms.client_update import (
    ClientOutput,
    ClientTask,
    ClientWork,
    LossFn,
    MetricFn,
    ModelFn,
    OptimizerFn,
    accuracy,
    buffer_names,
    trainable_names,
)
from fedp13n.algorithms.fedprox import check_proximal_mu
from fedp13n.data.client_data import (
    ClientData,
    ClientDataset,
    features_to_tensor,
    labels_to_tensor,
)
from fedp13n.data.pipeline import DEFAULT_CLIENT_PIPELINE, DEFAULT_SHUFFLE_BUFFER, PIPELINES
from fedp13n.execution.base import Executor, SharedRef
from fedp13n.execution.in_process import InProcessExecutor
from fedp13n.models.objectives import engine_ignore_ids
from fedp13n.models.spec import check_labels_fit, check_model_fn, input_spec_of, num_classes
from fedp13n.utils.checks import (
    check_bool,
    check_callable,
    check_id_list,
    check_positive_int,
    check_seed,
    error_line,
)
from fedp13n.utils.device import Compute
from fedp13n.utils.seeding import derive_rng, derive_seed

#: Client optimizer of TFF's personalization experiment: SGD, learning rate 0.02.
DEFAULT_CLIENT_OPTIMIZER = functools.partial(torch.optim.SGD, lr=0.02)
#: Server optimizer of TFF's personalization experiment: SGD, lr 1.0, momentum 0.9.
DEFAULT_SERVER_OPTIMIZER = functools.partial(torch.optim.SGD, lr=1.0, momentum=0.9)


@dataclass
class ServerState:
    """Everything a FedAvg run carries from round to round (and into a checkpoint).

    ``model`` is the global model's state dict (parameters and buffers, loadable into
    ``model_fn()``); ``optimizer_state`` the server optimizer's ``state_dict()`` (plain
    tensors, numbers, lists and dicts). As in torch, that includes the hyperparameters
    (learning rate, momentum): a resumed run keeps those it started with.
    ``method_state``: the method's server tensors (SCAFFOLD's control variate ``c``, by
    parameter name; empty for the others), checkpointed with the rest.
    """

    round_num: int
    model: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    method_state: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class RoundMetrics:
    """Training metrics of one round, example-weighted over the contributing clients.

    ``loss`` and ``accuracy`` are the means over the round's training batches of each
    batch's ``loss_fn`` / ``metrics_fn`` value, weighted by the batch's examples (rows):
    for sequence labels (Shakespeare) a batch's accuracy is its fraction of counted
    positions, so this is batch-weighted, not token-exact (evaluations are token-exact).

    ``num_examples`` counts examples processed (over all local epochs); ``num_clients``
    the clients whose update entered the average, ``num_skipped_clients`` those left out
    because it was not finite; ``seconds`` the wall time of the whole round.
    """

    round_num: int
    loss: float
    accuracy: float
    num_examples: int
    num_clients: int
    num_skipped_clients: int
    seconds: float

    @property
    def examples_per_second(self) -> float:
        return self.num_examples / self.seconds if self.seconds > 0 else math.nan

    def as_dict(self) -> dict[str, float | int]:
        fields = dataclasses.asdict(self)
        del fields["round_num"]
        return {"round": self.round_num, **fields, "examples_per_second": self.examples_per_second}


@dataclass(frozen=True)
class ClientSelection:
    """Clients of a shared :class:`ClientData`, named by id.

    Passing this to :meth:`WeightedFedAvg.next` (instead of a list of datasets) publishes
    the ClientData to the executor once for the whole run; tasks then carry only a
    reference and a client id. Random streams are keyed by client id.
    """

    client_data: ClientData
    client_ids: Sequence[str]

    def __post_init__(self) -> None:
        if not isinstance(self.client_data, ClientData):
            raise TypeError(
                f"ClientSelection needs a fedp13n.data.ClientData, got "
                f"{type(self.client_data).__name__}."
            )
        ids = check_id_list("ClientSelection client_ids", self.client_ids)
        twice = [c for c, n in collections.Counter(ids).items() if n > 1]
        if twice:
            raise ValueError(
                f"client id {twice[0]!r} is selected more than once; a client takes part in a "
                "round once (its random streams are keyed by its id)."
            )


def sample_clients(
    client_ids: Sequence[str], num_clients: int, *, seed: int, round_num: int
) -> list[str]:
    """Draw ``num_clients`` distinct clients for a round, uniformly without replacement.

    Determined by (seed, round_num) only, so a resumed run samples the same clients.
    """
    check_id_list("client_ids", client_ids)
    check_seed(seed)
    check_positive_int("num_clients", num_clients)
    if not 1 <= num_clients <= len(client_ids):
        raise ValueError(
            f"cannot sample {num_clients} clients per round from {len(client_ids)} clients; "
            f"choose a number between 1 and {len(client_ids)}."
        )
    rng = derive_rng(seed, "fedavg-sample", round_num)
    picked = rng.choice(len(client_ids), size=num_clients, replace=False)
    return [client_ids[i] for i in picked]


def _clone_tree(obj: Any) -> Any:
    """Deep copy of nested dicts/lists/tuples with tensors cloned onto the CPU (no shared
    storage)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_tree(v) for v in obj)
    return obj


class WeightedFedAvg:
    """The learning process returned by :func:`build_weighted_fed_avg`.

    Stateless apart from caches: all training state lives in the :class:`ServerState`
    values passed in and returned, so ``next`` on the same state gives the same result.
    """

    def __init__(
        self,
        client_work: ClientWork,
        server_optimizer_fn: OptimizerFn,
        *,
        executor: Executor | None,
        buffer_aggregation: Literal["average", "keep"],
        engine: Any = None,
        client_state: Any = None,
        delta_scale: float = 1.0,
    ) -> None:
        #: the clients' local training, with the method's settings (built and checked by
        #: :func:`build_weighted_fed_avg`)
        self.client_work = client_work
        #: FedPer's per-client personal parameters (:mod:`fedp13n.algorithms.fedper`), in a
        #: ClientStateStore that the caller commits (None: no state is kept)
        self.client_state = client_state
        self.personal = client_work.personal
        self.engine = engine
        self.server_optimizer_fn = server_optimizer_fn
        self.executor = executor if executor is not None else InProcessExecutor()
        self.buffer_aggregation = buffer_aggregation
        #: the averaged delta's factor before the server optimizer (pFedMe's beta)
        self.delta_scale = delta_scale
        self._server_model: nn.Module | None = None
        #: The model's classes by per-example feature shape (None: not a classifier).
        self._classes: dict[tuple, int | None] = {}
        self._shared_data: weakref.WeakKeyDictionary[ClientData, SharedRef] = (
            weakref.WeakKeyDictionary()
        )

    # -- the TFF-style API -------------------------------------------------------------------
    def initialize(self) -> ServerState:
        """Round-0 state: ``model_fn()``'s initial weights under ``derive_seed(seed, "init")``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.client_work.seed, "init"))
            model = _check_model(self.client_work.model_fn())
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        optimizer = self.server_optimizer_fn(self._trainable(model))
        controls = {}
        if self.client_work.scaffold:  # SCAFFOLD's c starts at 0
            controls = {n: torch.zeros_like(weights[n]) for n in trainable_names(model)}
        return ServerState(0, weights, _clone_tree(optimizer.state_dict()), controls)

    def get_model_weights(self, state: ServerState) -> dict[str, torch.Tensor]:
        """The global model's state dict (a copy), loadable into ``model_fn()``."""
        _check_state(state)
        return {k: v.detach().clone() for k, v in state.model.items()}

    def next(
        self, state: ServerState, client_datasets: Sequence[ClientDataset] | ClientSelection
    ) -> tuple[ServerState, RoundMetrics]:
        """Run one round with these clients; returns the new state and the round's metrics."""
        start = time.perf_counter()
        _check_state(state)
        round_num = state.round_num + 1
        model = self._load_server_model(state)  # checks the state fits model_fn first
        optimizer = self.server_optimizer_fn(self._trainable(model))
        _check_optimizer_state_fits(state.optimizer_state, optimizer)
        load_optimizer_state(optimizer, state.optimizer_state, "server_")
        datasets, keys = self._round_clients(client_datasets)
        check_data_fits(model, datasets, keys, self._classes)
        controls = _clone_tree(state.method_state)
        if self.engine is not None:
            outputs = self._engine_outputs(client_datasets, datasets, keys, state, round_num)
        else:
            weights_ref = self.executor.share(self.get_model_weights(state))
            server_ref = None
            if self.client_work.scaffold:
                controls = self._controls(model, controls)
                server_ref = self.executor.share(controls)
            tasks = self._tasks(client_datasets, datasets, keys, weights_ref, round_num, server_ref)
            outputs: list[ClientOutput] = self.executor.map(self.client_work, tasks)
            controls = self._keep_states(keys, outputs, controls)

        contributing = [o for o in outputs if o.finite]
        total = sum(o.num_examples for o in contributing)
        if total > 0:
            self._apply(model, optimizer, contributing, total)
        new_state = ServerState(
            round_num,
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            _clone_tree(optimizer.state_dict()),
            controls,
        )
        trained = sum(o.num_trained for o in contributing)
        metrics = RoundMetrics(
            round_num=round_num,
            loss=sum(o.loss_sum for o in contributing) / trained if trained else math.nan,
            accuracy=sum(o.metric_sum for o in contributing) / trained if trained else math.nan,
            num_examples=trained,
            num_clients=len(contributing),
            num_skipped_clients=len(outputs) - len(contributing),
            seconds=time.perf_counter() - start,
        )
        return new_state, metrics

    # -- internals ----------------------------------------------------------------------------
    def _engine_outputs(
        self,
        client_datasets: Sequence[ClientDataset] | ClientSelection,
        datasets: list[ClientDataset],
        keys: list[Any],
        state: ServerState,
        round_num: int,
    ) -> list[ClientOutput]:
        """The round's client work on the multi-client engine: the same numbers as the
        per-client path (same seeds and batch plans) up to float rounding."""
        if isinstance(client_datasets, ClientSelection) and self.engine.device.type != "cpu":
            # on a GPU the engine's data stays there between rounds (copied once)
            cd = client_datasets.client_data
            datasets = [cd.create_dataset(c, device=self.engine.device) for c in keys]
        work = self.client_work
        return self.engine.fedavg_clients(
            self.get_model_weights(state),
            datasets,
            keys,
            optimizer=work.optimizer_fn,
            epochs=work.epochs,
            batch_size=work.batch_size,
            shuffle=work.shuffle,
            seed=work.seed,
            round_num=round_num,
            pipeline=work.pipeline,
            shuffle_buffer=work.shuffle_buffer,
            max_steps=work.max_steps,
            ignore_ids=engine_ignore_ids(work.loss_fn, work.metric_fn) or (),
        )

    @staticmethod
    def _trainable(model: nn.Module) -> list[nn.Parameter]:
        params = dict(model.named_parameters())
        return [params[n] for n in trainable_names(model)]

    def _round_clients(
        self, client_datasets: Sequence[ClientDataset] | ClientSelection
    ) -> tuple[list[ClientDataset], list[Any]]:
        """The round's clients, checked: their datasets (views, no copy) and the keys of
        their random streams (a selection's ids; a list's positions)."""
        if isinstance(client_datasets, ClientSelection):
            cd = client_datasets.client_data
            missing = [c for c in client_datasets.client_ids if c not in cd]
            if missing:
                raise KeyError(
                    f"{len(missing)} selected client ids are not in the ClientData "
                    f"(e.g. {missing[:3]}); select from client_data.client_ids."
                )
            ids = [str(c) for c in client_datasets.client_ids]
            return [cd.create_dataset(c) for c in ids], ids
        if isinstance(client_datasets, (ClientData, ClientDataset)) or not isinstance(
            client_datasets, Sequence
        ):
            raise TypeError(
                "client_datasets must be a sequence of ClientDataset or a "
                f"ClientSelection(client_data, client_ids), got {type(client_datasets).__name__}."
            )
        for i, d in enumerate(client_datasets):
            if not isinstance(d, ClientDataset):
                raise TypeError(
                    f"client_datasets[{i}] is a {type(d).__name__}, not a ClientDataset; "
                    "build one with ClientDataset.from_arrays(x, y)."
                )
        return list(client_datasets), list(range(len(client_datasets)))

    def _tasks(
        self,
        client_datasets: Sequence[ClientDataset] | ClientSelection,
        datasets: list[ClientDataset],
        keys: list[Any],
        weights_ref: SharedRef,
        round_num: int,
        server_ref: SharedRef | None = None,
    ) -> list[ClientTask]:
        store = self.client_state
        states = [store.get(k) if store is not None else None for k in keys]
        data: list[ClientDataset | SharedRef] = list(datasets)
        if isinstance(client_datasets, ClientSelection):  # tasks carry a reference and an id
            cd = client_datasets.client_data
            ref = self._shared_data.get(cd)
            if ref is None:
                ref = self._shared_data[cd] = self.executor.share(cd)
            data = [ref] * len(keys)
        return [
            ClientTask(weights_ref, d, k, round_num, s, server_ref)
            for d, k, s in zip(data, keys, states, strict=True)
        ]

    @staticmethod
    def _controls(model: nn.Module, c: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """SCAFFOLD's c for every trainable parameter (zeros where the state has none,
        e.g. after a stage of another method)."""
        params = dict(model.named_parameters())
        names = trainable_names(model)
        return {n: c[n] if n in c else torch.zeros_like(params[n].detach()) for n in names}

    def _keep_states(
        self, keys: list[Any], outputs: list[ClientOutput], controls: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Each client's new state into the store (here, in the lead process only); a
        client whose update was not finite keeps its old state. The server's method state:
        for SCAFFOLD ``c + sum_S(c_i+ - c_i) / N`` (N: the store's clients), else as it was."""
        store = self.client_state
        if store is None:
            return controls
        change = {n: torch.zeros_like(t, dtype=torch.float64) for n, t in controls.items()}
        for key, out in zip(keys, outputs, strict=True):
            if out.finite and out.state is not None:
                if self.client_work.scaffold:
                    old = store.get(key)
                    for n, t in out.state.items():
                        change[n] += t.double() - (0.0 if old is None else old[n].double())
                store.put(key, out.state)
        if not self.client_work.scaffold:
            return controls
        n = len(store.client_ids)
        return {k: (c.double() + change[k] / n).to(c.dtype) for k, c in controls.items()}

    def _load_server_model(self, state: ServerState) -> nn.Module:
        if self._server_model is None:
            with torch.random.fork_rng(devices=[]):
                self._server_model = _check_model(self.client_work.model_fn())
        return load_model_weights(self._server_model, state.model)

    def _apply(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        outputs: list[ClientOutput],
        total: int,
    ) -> None:
        params = dict(model.named_parameters())
        personal = set(self.personal)  # never averaged: the server keeps its own
        for name in trainable_names(model):
            if name in personal:
                continue
            p = params[name]
            mean = _weighted_mean([o.delta[name] for o in outputs], outputs, total)
            if self.delta_scale != 1.0:  # pFedMe's beta: w - beta * (w - mean w_local)
                mean = mean * self.delta_scale
            p.grad = mean.to(p.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.buffer_aggregation == "keep":
            return
        state = model.state_dict()
        with torch.no_grad():
            for name in buffer_names(model):
                if name in personal:  # FedBN: each client's statistics stay its own
                    continue
                buf = state[name]
                mean = _weighted_mean([o.buffers[name] for o in outputs], outputs, total)
                if not buf.is_floating_point():
                    mean = torch.round(mean)
                buf.copy_(mean.to(buf.dtype))


def check_data_fits(
    model: nn.Module,
    datasets: Sequence[ClientDataset],
    keys: Sequence[Any],
    classes_by_shape: dict[tuple, int | None],
) -> None:
    """One-line errors, before any work, for clients whose examples do not fit the
    model: features against its ``input_spec`` (when it declares one), integer labels
    against its classes (one dry forward per feature shape, remembered in
    ``classes_by_shape``)."""
    spec = input_spec_of(model)
    for d, key in zip(datasets, keys, strict=True):
        if not len(d):
            continue
        x_shape = tuple(d.x.shape[1:])
        if spec is not None and (
            why := spec.x_mismatch(x_shape, features_to_tensor(d.x[:0]).dtype)
        ):
            raise TypeError(
                f"client {key!r}: its examples do not fit the model's input_spec: {why}."
            )
        if not np.issubdtype(d.y.dtype, np.integer):
            continue
        if x_shape not in classes_by_shape:
            try:
                classes_by_shape[x_shape] = num_classes(model, features_to_tensor(d.x[:1]))
            except (RuntimeError, TypeError, ValueError, IndexError) as e:
                raise TypeError(
                    f"client {key!r}: its examples (features of shape {x_shape}, "
                    f"{d.x.dtype}) do not fit the model: a forward pass of one example failed "
                    f"with {error_line(e)}; give features the model takes."
                ) from None
        classes = classes_by_shape[x_shape]
        if classes is not None and spec is not None and spec.y_shape:  # e.g. a label per position
            why = spec.y_mismatch(tuple(d.y.shape[1:]), labels_to_tensor(d.y[:0]).dtype)
            if why:
                raise ValueError(f"client {key!r}: its labels do not fit the model: {why}.")
        elif classes is not None and d.y.ndim != 1:
            raise ValueError(
                f"client {key!r}: class labels must be 1-D (one integer per example), got "
                f"shape {tuple(d.y.shape)}; e.g. y.ravel()."
            )
        check_labels_fit(classes, d.y, f"client {key!r}")


def load_model_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` holding a state's ``weights``; a one-line ValueError when they do not fit."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(
            "the state's model weights do not fit model_fn()'s model; was the state "
            f"made with another model? ({str(e).splitlines()[0]})"
        ) from None
    return model


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Any, prefix: str = "") -> None:
    """``optimizer`` holding a copy of a state's optimizer state ``saved``; a one-line
    ValueError naming ``{prefix}optimizer_fn`` when it does not fit."""
    try:
        optimizer.load_state_dict(_clone_tree(saved))
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"the state's {prefix.replace('_', ' ')}optimizer state does not fit "
            f"{prefix}optimizer_fn's optimizer ({e}); resume with the optimizer settings the "
            "run started with."
        ) from None


def _check_model_fn_builds(model_fn: ModelFn) -> None:
    """``model_fn()`` once while the process is built, as TFF's ``build_weighted_fed_avg``
    calls it (its ``fed_avg_test.py``: a callable that returns no model is a ``TypeError``
    there, not at ``initialize``); the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        model = _check_model(model_fn())
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"model_fn()'s model ({type(model).__name__}) has no trainable parameters (none "
            "with requires_grad): FedAvg would have nothing to train or average."
        )


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model_fn() must return a torch nn.Module, got {type(model).__name__}; pass a "
            "function that builds the model (e.g. functools.partial(emnist_conv_dropout, "
            "num_classes=62))."
        )
    return model


#: torch optimizers a server optimizer state may come from, to name it in an error.
_KNOWN_OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam")


def _group_keys(optimizer_state: Any) -> frozenset[str] | None:
    """The hyperparameter names of a server optimizer state's first parameter group."""
    groups = optimizer_state.get("param_groups") if isinstance(optimizer_state, dict) else None
    if not isinstance(groups, list) or not groups or not isinstance(groups[0], dict):
        return None
    return frozenset(k for k in groups[0] if k != "params")


@functools.cache
def _optimizer_keys() -> dict[frozenset[str], str]:
    """Each known torch optimizer's parameter-group keys -> its name (the first one wins)."""
    out: dict[frozenset[str], str] = {}
    p = [nn.Parameter(torch.zeros(1))]
    for name in _KNOWN_OPTIMIZERS:
        cls = getattr(torch.optim, name, None)
        if cls is not None:
            keys = _group_keys(cls(p, lr=0.1).state_dict())
            if keys is not None:
                out.setdefault(keys, name)
    return out


def _check_optimizer_state_fits(optimizer_state: Any, optimizer: torch.optim.Optimizer) -> None:
    """A one-line ValueError when the state's server optimizer state was written by another
    kind of optimizer than this process's (e.g. an Adam state given to an SGD process, which
    torch loads without a word and fails on at the first step with ``KeyError: 'momentum'``)."""
    saved = _group_keys(optimizer_state)
    wanted = _group_keys(optimizer.state_dict())
    if saved is None or wanted is None or saved == wanted:
        return
    theirs = _optimizer_keys().get(saved, "another optimizer")
    ours = type(optimizer).__name__
    raise ValueError(
        f"the state's server optimizer state is from {theirs} but this process's server "
        f"optimizer is {ours}; resume with the server optimizer the run started with (or start "
        "from process.initialize())."
    )


def _check_state(state: Any) -> None:
    if not isinstance(state, ServerState):
        raise TypeError(
            f"state must be the ServerState that initialize() or next() returned, got "
            f"{type(state).__name__}; start with state = process.initialize()."
        )


def _weighted_mean(
    values: list[torch.Tensor], outputs: list[ClientOutput], total: int
) -> torch.Tensor:
    """sum_k n_k * v_k / sum_k n_k in float64, in client order (deterministic)."""
    acc = torch.zeros(values[0].shape, dtype=torch.float64)
    for v, o in zip(values, outputs, strict=True):
        if o.num_examples:
            acc += o.num_examples * v.to(torch.float64)
    return acc / total


def build_weighted_fed_avg(
    model_fn: ModelFn,
    client_optimizer_fn: OptimizerFn = DEFAULT_CLIENT_OPTIMIZER,
    server_optimizer_fn: OptimizerFn = DEFAULT_SERVER_OPTIMIZER,
    *,
    loss_fn: LossFn = F.cross_entropy,
    metrics_fn: MetricFn = accuracy,
    client_epochs: int | None = 1,
    batch_size: int = 20,
    shuffle: bool = True,
    seed: int = 0,
    executor: Executor | None = None,
    buffer_aggregation: Literal["average", "keep"] = "keep",
    client_pipeline: str = DEFAULT_CLIENT_PIPELINE,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    max_steps: int | None = None,
    engine: Any = None,
    precision: str | None = None,
    device: str | None = None,
    deterministic: bool = True,
    compute: Compute | None = None,
    proximal_mu: float = 0.0,
    method: str = "fedavg",
    personal_layers: str | Sequence[str] | None = None,
    client_state: Any = None,
    head_epochs: int | None = None,
    ditto_lambda: float | None = None,
    per_fedavg_variant: str | None = None,
    per_fedavg_alpha: float | None = None,
    pfedme_lambda: float | None = None,
    pfedme_k: int | None = None,
    pfedme_personal_lr: float | None = None,
    pfedme_beta: float | None = None,
    apfl_alpha: float | None = None,
    apfl_adaptive: bool | None = None,
) -> WeightedFedAvg:
    """Build weighted FedAvg (TFF's ``tff.learning.algorithms.build_weighted_fed_avg``).

    ``engine``: a :class:`fedp13n.engine.MultiClientEngine` trains the round's clients in
    lockstep as one batched computation (on its device) instead of one task per client on
    ``executor``; same numbers up to float rounding. A setting it cannot batch (another
    loss, optimizer or layer) falls back to the executor, saying why once.
    ``precision``: ``"fp32"`` (default; with an engine, the engine's), ``"bf16"``
    (autocast with float32 master weights, for GPUs and CPUs with native bf16; see
    :mod:`fedp13n.utils.device`) or, on CUDA, ``"tf32"``, for client work.
    ``device``: where the executor's client work trains (``"cpu"``, the default;
    ``"cuda"``, ``"cuda:N"``, ``"mps"``; with an engine, the engine's device, and another
    one is a ``ValueError``; see :mod:`fedp13n.algorithms.client_update`): the clients' data
    stays resident there, and worker processes an executor pinned to GPUs use their own
    GPU. ``deterministic`` (default True): deterministic GPU kernels, the same numbers run
    to run (False: faster, not reproducible). ``compute``: all four as one
    :class:`fedp13n.utils.device.Compute` (``Compute.resolve(...)``), instead of them. The
    server's aggregation stays on the CPU (float64).

    ``model_fn()`` builds any ``torch.nn.Module``; optimizer functions take an iterable of
    parameters and return a ``torch.optim.Optimizer`` (e.g. ``lambda p: torch.optim.SGD(p,
    lr=0.1)``). The defaults are those of TFF's EMNIST personalization experiment: client
    SGD lr 0.02, server SGD lr 1.0 with momentum 0.9, one local epoch, batches of 20.
    ``loss_fn``/``metrics_fn`` map ``(outputs, targets)`` to a batch mean. Client work runs
    on ``executor`` (in this process by default); everything it sends to other processes
    (model_fn, optimizer and loss functions) must be picklable with cloudpickle.

    ``buffer_aggregation``: ``"keep"`` (default, TFF) leaves buffers at the server's
    value, ``"average"`` averages the clients' trained buffers (see the module docstring).

    The local steps (:func:`fedp13n.data.pipeline.batch_plan`): ``client_pipeline`` is
    ``"tff"`` (default, the CLI's too: TFF's
    ``dataset.repeat(client_epochs).shuffle(shuffle_buffer).batch(batch_size)``,
    ``ceil(n * E / B)`` steps) or ``"epochs"`` (``client_epochs`` passes, each a fresh
    shuffle); ``shuffle_buffer`` (default 1000, TFF's) is tf.data's
    shuffle buffer of ``"tff"``; ``max_steps`` (default ``None``: no limit) is
    ``.take(max_steps)``, at most that many local steps, and with it ``client_epochs=None``
    repeats the data until ``max_steps`` batches exist (K local steps, not epochs).

    ``proximal_mu`` (default 0: FedAvg, bit for bit) makes it FedProx (Li et al. 2020,
    :mod:`fedp13n.algorithms.fedprox`): each client's loss gets ``mu/2 * ||w -
    w_global||^2``. The multi-client engine does not batch the term: with ``mu > 0`` the
    round's clients run one task each, said once.

    ``method="fedper"`` (:mod:`fedp13n.algorithms.fedper`; :data:`~fedp13n.algorithms.
    fedper.METHODS` names the methods) keeps ``personal_layers`` (default: the last layer
    with parameters) per client in ``client_state``, a
    :class:`fedp13n.state.ClientStateStore` of :func:`~fedp13n.algorithms.fedper.
    fedper_state_spec` (``next`` reads and ``put`` s it; the caller commits it with its
    checkpoints); only the rest is averaged. The engine does not run it (said once).
    ``method="fedrep"`` (:mod:`fedp13n.algorithms.fedrep`) keeps the same state and
    trains it alone for ``head_epochs`` (default
    :data:`~fedp13n.algorithms.fedrep.DEFAULT_HEAD_EPOCHS`) before the rest alone.
    ``method="lg_fedavg"`` (:mod:`fedp13n.algorithms.lg_fedavg`) keeps all but the head
    (unset ``personal_layers``). ``method="ditto"`` (:mod:`fedp13n.algorithms.ditto`)
    averages the whole model as FedAvg does and keeps a whole personal model per client,
    trained after the global phase with ``ditto_lambda`` (default
    :data:`~fedp13n.algorithms.ditto.DEFAULT_DITTO_LAMBDA`) pulling it to the global model.
    ``method="scaffold"`` (:mod:`fedp13n.algorithms.scaffold`) corrects every local step
    with control variates: each client's ``c_i`` in ``client_state``, the server's ``c``
    in ``ServerState.method_state``. ``method="per_fedavg"``
    (:mod:`fedp13n.algorithms.per_fedavg`) takes meta steps (``per_fedavg_variant`` "fo"
    or "hf", inner rate ``per_fedavg_alpha``; beta: the client optimizer's rate).
    ``method="pfedme"`` (:mod:`fedp13n.algorithms.pfedme`) keeps each client's theta in
    ``client_state`` (``pfedme_lambda``, ``pfedme_k``, ``pfedme_personal_lr``; eta: the
    client optimizer's rate) and scales the averaged delta by ``pfedme_beta``. ``method="fedbn"``
    (:mod:`fedp13n.algorithms.fedbn`) keeps every batch-norm layer's parameters and
    statistics per client, never averaged. ``method="apfl"`` (:mod:`fedp13n.algorithms.apfl`)
    keeps a personal model and a mixing weight per client (initially ``apfl_alpha``, default
    :data:`~fedp13n.algorithms.apfl.DEFAULT_APFL_ALPHA`; learned unless ``apfl_adaptive``
    is False), trained beside the averaged global copy at every local step.
    """
    fns = (model_fn, client_optimizer_fn, loss_fn, metrics_fn)
    _check_functions(fns, server_optimizer_fn, seed, shuffle)
    _check_local_steps(client_epochs, batch_size, client_pipeline, shuffle_buffer, max_steps)
    _check_server_side(buffer_aggregation, executor)
    _check_model_fn_builds(model_fn)
    compute = Compute.given(
        compute, device=device, precision=precision, deterministic=deterministic, engine=engine
    )
    options, delta_scale = _method_settings(
        model_fn, method, check_proximal_mu(proximal_mu), personal_layers, client_state,
        dict(head_epochs=head_epochs, ditto_lambda=ditto_lambda, apfl_alpha=apfl_alpha,
             per_fedavg_variant=per_fedavg_variant, per_fedavg_alpha=per_fedavg_alpha,
             pfedme_lambda=pfedme_lambda, pfedme_k=pfedme_k, pfedme_beta=pfedme_beta,
             pfedme_personal_lr=pfedme_personal_lr, apfl_adaptive=apfl_adaptive),
    )  # fmt: skip
    compute = _engine_compute(compute, fns, method, options, client_state)
    work = ClientWork(
        model_fn=model_fn,
        optimizer_fn=client_optimizer_fn,
        loss_fn=loss_fn,
        metric_fn=metrics_fn,
        epochs=client_epochs,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=int(seed),
        pipeline=client_pipeline,
        shuffle_buffer=int(shuffle_buffer),
        max_steps=None if max_steps is None else int(max_steps),
        compute=compute.without_engine(),
        **options,
    )
    return WeightedFedAvg(
        work,
        server_optimizer_fn,
        executor=executor,
        buffer_aggregation=buffer_aggregation,
        engine=compute.engine,
        client_state=client_state,
        delta_scale=delta_scale,
    )


def _check_functions(fns: tuple, server_optimizer_fn: Any, seed: Any, shuffle: Any) -> None:
    """The model, optimizer, loss and metric functions (``fns``: model, client optimizer,
    loss, metrics), the seed and shuffle."""
    model_fn, client_optimizer_fn, loss_fn, metrics_fn = fns
    check_model_fn(model_fn)
    check_seed(seed)
    check_bool("shuffle", shuffle)
    for name, fn in (("client_optimizer_fn", client_optimizer_fn),
                     ("server_optimizer_fn", server_optimizer_fn),
                     ("loss_fn", loss_fn), ("metrics_fn", metrics_fn)):  # fmt: skip
        check_callable(name, fn)


def _engine_compute(
    compute: Compute, fns: tuple, method: Any, options: dict[str, Any], client_state: Any
) -> Compute:
    """``compute`` with its engine when the engine can batch this FedAvg's client work
    (``fns``: model, client optimizer, loss and metric functions; ``options``: the
    method's ClientWork settings), else without it (why said once)."""
    if compute.engine is None:
        return compute
    from fedp13n.engine import can_batch, note_fallback

    why = "FedProx's proximal term (proximal_mu > 0)" if options["proximal_mu"] else None
    why = f"{method}'s per-client state" if client_state is not None else why
    why = "Per-FedAvg's meta steps" if "per_fedavg" in options else why
    model_fn, optimizer_fn, loss_fn, metrics_fn = fns
    if engine_ignore_ids(loss_fn, metrics_fn) is None:
        note_fallback("the engine computes cross-entropy and accuracy only")
        return compute.without_engine()
    ok, refusal = can_batch(model_fn, optimizer_fn)
    if ok and not why:
        return compute
    note_fallback(refusal if not ok else f"the engine does not batch {why}")
    return compute.without_engine()


#: Methods whose local steps are their own, with why FedProx's term does not join them.
_OWN_LOCAL_STEPS = {
    "scaffold": "corrects the local steps with control variates",
    "per_fedavg": "takes its own local steps",
    "pfedme": "takes its own local steps",
    "apfl": "trains its own mixture beside the global copy",
}


#: Each method's own settings' owner and what another method lacks, for their errors.
_OWNERS = {
    "fedrep": ("FedRep", " has no head phase"),
    "ditto": ("Ditto", " keeps no personal model"),
    "per_fedavg": ("Per-FedAvg", ""),
    "pfedme": ("pFedMe", ""),
    "apfl": ("APFL", " keeps no mixture"),
}


def _method_settings(
    model_fn: ModelFn,
    method: Any,
    proximal_mu: float,
    personal_layers: Any,
    client_state: Any,
    own: dict[str, Any],
) -> tuple[dict[str, Any], float]:
    """The :class:`ClientWork` settings of ``method`` (checked; another method's settings
    in ``own``, those of :data:`~fedp13n.algorithms.fedper.METHOD_SETTINGS`, given are a
    one-line error) and the averaged delta's scale (pFedMe's beta, else 1)."""
    from fedp13n.algorithms.fedper import METHOD_SETTINGS

    personal = _personal_names(model_fn, method, personal_layers, client_state)
    for owner, keys in METHOD_SETTINGS.items():
        if owner != method and any(own[k] is not None for k in keys):
            name, lacks = _OWNERS[owner]
            listed = " and ".join(filter(None, (", ".join(keys[:-1]), keys[-1])))
            one = len(keys) == 1
            raise ValueError(
                f"{listed} {'is' if one else 'are'} {name}'s (method={owner!r}); "
                f"method={method!r}{lacks}: leave {'it' if one else 'them'} out."
            )
    options: dict[str, Any] = {"proximal_mu": proximal_mu, "scaffold": method == "scaffold"}
    options.update(_own_settings(method, own))
    delta_scale = options.pop("pfedme_beta", 1.0)
    if proximal_mu and method in _OWN_LOCAL_STEPS:
        raise ValueError(
            f"method={method!r} {_OWN_LOCAL_STEPS[method]}; FedProx's proximal_mu does not "
            "combine with it here: set proximal_mu = 0."
        )
    if method in ("ditto", "scaffold", "pfedme", "apfl"):
        personal = ()  # the whole model is averaged; the state is not part of it
    options["personal"] = personal
    return options, delta_scale


def _own_settings(method: str, own: dict[str, Any]) -> dict[str, Any]:
    """``method``'s own :class:`ClientWork` settings, checked, each unset one at its
    default (pFedMe's beta as ``pfedme_beta``; {} for a method without settings)."""
    from fedp13n.algorithms import apfl, ditto, fedrep, pfedme
    from fedp13n.algorithms import per_fedavg as pf

    if method == "fedrep":
        epochs = own["head_epochs"]
        if epochs is None:
            return {"head_epochs": fedrep.DEFAULT_HEAD_EPOCHS}
        return {"head_epochs": check_positive_int("head_epochs", epochs)}
    if method == "ditto":
        lam = own["ditto_lambda"]
        return {"ditto_lambda": ditto.DEFAULT_DITTO_LAMBDA if lam is None
                else ditto.check_ditto_lambda(lam)}  # fmt: skip
    if method == "per_fedavg":
        variant, alpha = own["per_fedavg_variant"], own["per_fedavg_alpha"]
        return {
            "per_fedavg": pf.check_variant(pf.DEFAULT_VARIANT if variant is None else variant),
            "per_fedavg_alpha": pf.check_alpha(pf.DEFAULT_ALPHA if alpha is None else alpha),
        }
    if method == "pfedme":
        keys = ("pfedme_lambda", "pfedme_k", "pfedme_personal_lr", "pfedme_beta")
        lam, k, personal_lr, beta = pfedme.check_settings(*(own[k] for k in keys))
        return {"pfedme": (lam, k, personal_lr), "pfedme_beta": beta}
    if method == "apfl":
        alpha, adaptive = own["apfl_alpha"], own["apfl_adaptive"]
        if adaptive is not None:
            check_bool("apfl_adaptive", adaptive)
        alpha = apfl.DEFAULT_APFL_ALPHA if alpha is None else apfl.check_apfl_alpha(alpha)
        return {"apfl_alpha": alpha, "apfl_adaptive": True if adaptive is None else bool(adaptive)}
    return {}


def _personal_names(
    model_fn: ModelFn, method: Any, personal_layers: Any, client_state: Any
) -> tuple[str, ...]:
    """The parameters ``method`` keeps per client (() for FedAvg), checked against the
    store that is to hold them (one-line errors)."""
    from fedp13n.algorithms.fedper import (
        check_method,
        fedper_state_spec,
        keeps_state,
        parse_personal_layers,
    )
    from fedp13n.state.store import ClientStateStore

    method = check_method(method)
    if not keeps_state(method):
        if client_state is not None or personal_layers is not None:
            raise ValueError(
                f"client_state and personal_layers are for a method that keeps state per "
                f"client (e.g. method='fedper'); method={method!r} keeps none: leave them out."
            )
        return ()
    layers = parse_personal_layers(personal_layers)
    spec = fedper_state_spec(model_fn, layers, method)
    if not isinstance(client_state, ClientStateStore):
        raise TypeError(
            f"method={method!r} keeps each client's {sorted(spec)} in a ClientStateStore: pass "
            "client_state=ClientStateStore.create(folder, client_ids, "
            f"fedper_state_spec(model_fn, personal_layers, {method!r}))."
        )
    if client_state.spec != spec:
        raise ValueError(
            f"client_state holds {client_state.spec}, but method={method!r} keeps {spec}; "
            f"create the store with fedper_state_spec(model_fn, personal_layers, {method!r})."
        )
    return tuple(spec)


def _check_server_side(buffer_aggregation: Any, executor: Any) -> None:
    if buffer_aggregation not in ("average", "keep"):
        raise ValueError(
            f"buffer_aggregation must be 'average' or 'keep', got {buffer_aggregation!r}."
        )
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(f"executor must be a fedp13n Executor, got {type(executor).__name__}.")


def _check_local_steps(
    client_epochs: Any, batch_size: Any, client_pipeline: Any, shuffle_buffer: Any, max_steps: Any
) -> None:
    """The settings of a client's local steps (see :func:`build_weighted_fed_avg`)."""
    check_positive_int("batch_size", batch_size)
    if client_pipeline not in PIPELINES:
        raise ValueError(
            f"client_pipeline must be one of {PIPELINES} ('epochs': E shuffled passes; "
            f"'tff': TFF's repeat(E).shuffle(buffer).batch(B)), got {client_pipeline!r}."
        )
    check_positive_int("shuffle_buffer", shuffle_buffer)
    if max_steps is not None:
        check_positive_int("max_steps (or None for no limit)", max_steps)
    if client_epochs is None:
        if max_steps is None:
            raise ValueError(
                "client_epochs=None repeats the client data forever; give max_steps (the "
                "number of local steps) or a positive number of epochs."
            )
    else:
        check_positive_int("client_epochs", client_epochs)
