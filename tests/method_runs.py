"""Shared helpers of the fault tests of the methods trained in the federation
(tests/test_fedper.py, tests/test_method_faults.py): a tiny task of one's own for the CLI,
a run killed -9 at a chosen point then resumed, the client state of a run directory, and
client work whose worker is killed -9 the first time it runs a chosen client."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import numpy as np
from torch import nn

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get these by value

# -- a tiny task of one's own: ``--dataset method_runs:load --model method_runs:build`` -------
NUM_CLIENTS, NUM_CLASSES, DIM = 16, 3, 5


def load() -> tuple[dict, dict]:
    """16 clients, 6 to 12 training examples each (even: a batch-norm layer in training mode
    never sees a batch of one), 4 test examples, 3 classes skewed per client."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(NUM_CLASSES, DIM))
    train, test = {}, {}
    for c in range(NUM_CLIENTS):
        p = rng.dirichlet(np.full(NUM_CLASSES, 0.5))
        for out, n in ((train, 6 + 2 * (c % 4)), (test, 4)):
            y = rng.choice(NUM_CLASSES, size=n, p=p)
            x = centers[y] + rng.normal(size=(n, DIM))
            out[f"w{c:02d}"] = (x.astype(np.float32), y.astype(np.int64))
    return train, test


def build(num_classes: int) -> nn.Module:
    """Linear, batch norm (FedBN's local layer), ReLU, Linear: 69 parameters."""
    return nn.Sequential(nn.Linear(DIM, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, num_classes))


# -- kill -9 of a run at a chosen point, then --resume --------------------------------------
def _killed_at_checkpoint(args: list[str], round_num: int, log: str) -> None:
    """``fedp13n run *args`` in this process (its output to ``log``), killed -9 where it is
    about to write round ``round_num``'s checkpoint: that round's client state is
    committed, its checkpoint is not, so ``--resume`` starts from the round before and must
    undo the commit."""
    from fedp13n.cli.main import app
    from fedp13n.experiments import callbacks

    with open(log, "wb") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    save = callbacks.save_checkpoint

    def killing(path, state):
        if state.round_num == round_num:
            os.kill(os.getpid(), signal.SIGKILL)
        return save(path, state)

    callbacks.save_checkpoint = killing  # the Checkpointer's
    app(args, prog_name="fedp13n")


#: What a run imports that takes long (torch._dynamo: sympy, which torch.optim imports on use).
PRELOAD = [
    "torch", "torch._dynamo", "fedp13n.cli.main", "fedp13n.experiments.p13n_experiment",
    "fedp13n.algorithms.fed_avg", "fedp13n.personalization.strategies", "method_runs",
    "fedp13n.execution.process_pool", "fedp13n.state.store",
]  # fmt: skip


def forkserver_context() -> multiprocessing.context.BaseContext:
    """A ``forkserver`` context whose server has torch and fedp13n imported (when this is
    the first to start it; the library never forks a process that runs torch): its children
    start in a fraction of a second instead of importing torch afresh."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_killed_at_checkpoint(args: list[str], round_num: int, timeout: float = 120) -> None:
    """Run ``fedp13n run *args`` in a fresh process and see it killed -9 just before round
    ``round_num``'s checkpoint (:func:`_killed_at_checkpoint`); its output is in
    ``<output dir>.log``."""
    log = Path(args[args.index("--output-dir") + 1] + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    proc = forkserver_context().Process(
        target=_killed_at_checkpoint, args=(args, round_num, str(log))
    )
    proc.start()
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    if proc.exitcode != -signal.SIGKILL:
        tail = log.read_text(errors="replace")[-2000:]
        raise AssertionError(
            f"the run was not killed at round {round_num}'s checkpoint (exit code "
            f"{proc.exitcode}; timeout {timeout} s); its output ends:\n{tail}"
        )


def client_state(run_dir: Path) -> tuple[list, dict]:
    """A run's stored client state: the clients that have some, in the store's order, and
    every named tensor's rows of those clients."""
    from fedp13n.rundir import layout as rd
    from fedp13n.state import ClientStateStore

    store = ClientStateStore.open(run_dir / rd.CLIENT_STATE)
    have = [i for i, c in enumerate(store.client_ids) if store.initialised(c)]
    rows = {name: np.array(store.array(name))[have] for name in store.spec}
    return [store.client_ids[i] for i in have], rows


# -- rounds in Python, and a worker killed -9 mid-task -----------------------------------------
def federated_rounds(
    folder: Path, model_fn, data, schedule, method: str = "fedper", work=None, **settings
) -> tuple[dict, dict]:
    """``method`` (``build_weighted_fed_avg``'s ``method=``, with ``settings``) for the
    rounds of ``schedule`` (each round's client ids of the ClientData ``data``), its client
    state (if it keeps some) in a new store in ``folder``, committed after each round;
    ``work`` wraps the client work (e.g. ``functools.partial(KilledOnce, marker=...)``).
    The final global weights and every client's state (None: never trained)."""
    from fedp13n.algorithms import build_weighted_fed_avg
    from fedp13n.algorithms.fed_avg import ClientSelection
    from fedp13n.algorithms.fedper import fedper_state_spec, keeps_state
    from fedp13n.state import ClientStateStore

    store = None
    if keeps_state(method):
        spec = fedper_state_spec(model_fn, settings.get("personal_layers"), method)
        store = ClientStateStore.create(folder, data.client_ids, spec)
    process = build_weighted_fed_avg(model_fn, method=method, client_state=store, **settings)
    if work is not None:
        process.client_work = work(process.client_work)
    state = process.initialize()
    for r, clients in enumerate(schedule, start=1):
        state, _ = process.next(state, ClientSelection(data, clients))
        if store is not None:
            store.commit(r)
    return state.model, {c: store.get(c) if store else None for c in data.client_ids}


@dataclass
class KilledOnce:
    """Client work whose worker is killed -9 the first time it runs ``client`` in round
    ``round_num`` (when the marker file is absent; it is created first)."""

    inner: object
    marker: str
    client: object = "b"
    round_num: int = 2

    def __call__(self, task):
        if (
            task.client_key == self.client
            and task.round_num == self.round_num
            and not os.path.exists(self.marker)
        ):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(task)

    def __getattr__(self, name):  # the process reads the client work's settings
        if name in ("inner", "marker", "client", "round_num"):  # unpickling: no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)
