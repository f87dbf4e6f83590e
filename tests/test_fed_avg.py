"""Weighted FedAvg against plain, independent computations (numpy loops, closed forms)."""

from __future__ import annotations

import functools
import math

import cloudpickle
import numpy as np
import pytest
import torch
from torch import nn

from fedp13n.algorithms import (
    ClientSelection,
    build_weighted_fed_avg,
    sample_clients,
)
from fedp13n.data import ClientData, ClientDataset
from fedp13n.execution import Executor, InProcessExecutor
from fedp13n.utils.seeding import derive_rng

D, C = 3, 4  # features, classes of the tiny linear model


def linear_model() -> nn.Module:
    return nn.Linear(D, C)


def make_clients() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Unequal sizes, a client without examples, and one whose features make it blow up."""
    rng = np.random.default_rng(7)
    clients = []
    for cid, n in (("a", 7), ("empty", 0), ("b", 12), ("c", 5)):
        x = rng.normal(size=(n, D)).astype(np.float32)
        y = rng.integers(0, C, size=n).astype(np.int32)
        clients.append((cid, x, y))
    bad_x = rng.normal(size=(4, D)).astype(np.float32)
    bad_x[2, 1] = np.inf
    clients.insert(2, ("bad", bad_x, rng.integers(0, C, size=4).astype(np.int32)))
    return clients


# -- an independent weighted FedAvg with server momentum, in float64 numpy -------------------
def _softmax_ce_grad(W, b, x, y):
    z = x @ W.T + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y]).mean()
    correct = (p.argmax(axis=1) == y).sum()
    g = p.copy()
    g[np.arange(len(y)), y] -= 1.0
    g /= len(y)
    return g.T @ x, g.sum(axis=0), loss, correct


def reference_fed_avg(W, b, clients, keys, *, rounds, seed, epochs, bs, client_lr, lr, mom):
    """Returns final (W, b) and per-round (loss, accuracy, examples, clients, skipped)."""
    bufW, bufb = None, None
    history = []
    for r in range(1, rounds + 1):
        sumW, sumb, total = np.zeros_like(W), np.zeros_like(b), 0
        loss_sum = correct = trained = used = skipped = 0
        for (_, x, y), key in zip(clients, keys, strict=True):
            x, y = x.astype(np.float64), y.astype(np.int64)
            Wk, bk = W.copy(), b.copy()
            gen = derive_rng(seed, "fedavg-shuffle", r, key)
            k_loss = k_correct = k_trained = 0.0
            with np.errstate(all="ignore"):
                for _ in range(epochs):
                    order = gen.permutation(len(y))
                    for s in range(0, len(y), bs):
                        idx = order[s : s + bs]
                        gW, gb, loss, corr = _softmax_ce_grad(Wk, bk, x[idx], y[idx])
                        Wk, bk = Wk - client_lr * gW, bk - client_lr * gb
                        k_loss += loss * len(idx)
                        k_correct += corr
                        k_trained += len(idx)
                dW, db = W - Wk, b - bk
            if not (np.isfinite(dW).all() and np.isfinite(db).all() and np.isfinite(k_loss)):
                skipped += 1
                continue
            used += 1
            sumW += len(y) * dW
            sumb += len(y) * db
            total += len(y)
            loss_sum, correct, trained = loss_sum + k_loss, correct + k_correct, trained + k_trained
        gW, gb = sumW / total, sumb / total
        bufW = gW if bufW is None else mom * bufW + gW
        bufb = gb if bufb is None else mom * bufb + gb
        W, b = W - lr * bufW, b - lr * bufb
        history.append((loss_sum / trained, correct / trained, trained, used, skipped))
    return W, b, history


def _as_numpy(weights):
    return weights["weight"].double().numpy(), weights["bias"].double().numpy()


@pytest.mark.parametrize("form", ["datasets", "selection"])
def test_rounds_match_an_independent_weighted_fed_avg_with_server_momentum(form):
    clients = make_clients()
    settings = dict(seed=11, epochs=2, bs=3, client_lr=0.1, lr=0.7, mom=0.9)
    process = build_weighted_fed_avg(
        linear_model,
        lambda p: torch.optim.SGD(p, lr=settings["client_lr"]),
        lambda p: torch.optim.SGD(p, lr=settings["lr"], momentum=settings["mom"]),
        client_epochs=settings["epochs"],
        batch_size=settings["bs"],
        seed=settings["seed"],
        executor=InProcessExecutor(),
        client_pipeline="epochs",  # the reference trains separately shuffled epochs
    )
    if form == "datasets":
        data = [ClientDataset(x, y) for _, x, y in clients]
        keys = list(range(len(clients)))  # TFF style: streams keyed by position
    else:
        cd = ClientData.from_clients(clients)
        data = ClientSelection(cd, [c for c, _, _ in clients])
        keys = [c for c, _, _ in clients]  # streams keyed by client id

    state = process.initialize()
    W0, b0 = _as_numpy(process.get_model_weights(state))
    metrics = []
    for _ in range(3):
        state, m = process.next(state, data)
        metrics.append(m)
    W_ref, b_ref, history = reference_fed_avg(W0, b0, clients, keys, rounds=3, **settings)

    W, b = _as_numpy(process.get_model_weights(state))
    assert not np.allclose(W, W0, atol=1e-2)  # training moved the weights
    np.testing.assert_allclose(W, W_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, b_ref, rtol=1e-5, atol=1e-6)
    assert state.round_num == 3
    for r, (m, (loss, acc, trained, used, skipped)) in enumerate(
        zip(metrics, history, strict=True), 1
    ):
        assert m.round_num == r
        assert m.loss == pytest.approx(loss, rel=1e-5)
        assert m.accuracy == pytest.approx(acc, abs=1e-9)
        # 2 epochs x (7 + 0 + 12 + 5) examples; the infinite client is skipped and counted,
        # the empty one takes part with weight 0.
        assert (m.num_examples, m.num_clients, m.num_skipped_clients) == (48, 4, 1)
        assert (trained, used, skipped) == (48, 4, 1)
        assert m.seconds > 0 and m.examples_per_second == pytest.approx(48 / m.seconds)


def test_server_sgd_lr_1_without_momentum_is_the_plain_weighted_average():
    clients = [c for c in make_clients() if c[0] != "bad"]
    build = functools.partial(
        build_weighted_fed_avg,
        linear_model,
        lambda p: torch.optim.SGD(p, lr=0.3),
        lambda p: torch.optim.SGD(p, lr=1.0),
        client_epochs=3,
        batch_size=4,
        shuffle=False,  # so one client trains the same alone or among others
        seed=3,
    )
    process = build()
    state = process.initialize()
    # With one client, the new global model is that client's trained model.
    trained = [
        process.get_model_weights(process.next(state, [ClientDataset(x, y)])[0])
        for _, x, y in clients
    ]
    sizes = [len(y) for _, _, y in clients]
    new_state, _ = process.next(state, [ClientDataset(x, y) for _, x, y in clients])
    got = process.get_model_weights(new_state)
    empty = sizes.index(0)
    assert torch.equal(trained[empty]["weight"], state.model["weight"])  # no data: no update
    for name in ("weight", "bias"):
        expected = sum(n * t[name].double() for n, t in zip(sizes, trained, strict=True)) / sum(
            sizes
        )
        torch.testing.assert_close(got[name].double(), expected, rtol=1e-6, atol=1e-6)


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(D)
        self.fc = nn.Linear(D, C)

    def forward(self, x):
        return self.fc(self.bn(x))


@pytest.mark.parametrize("mode", ["average", "keep", None])
def test_buffers_are_example_weighted_averages_or_kept(mode):
    rng = np.random.default_rng(1)
    xs = [rng.normal(loc=i, size=(n, D)).astype(np.float32) for i, n in enumerate((6, 10))]
    data = [ClientDataset(x, np.zeros(len(x), dtype=np.int64)) for x in xs]
    process = build_weighted_fed_avg(
        BatchNormNet,
        lambda p: torch.optim.SGD(p, lr=0.1),
        lambda p: torch.optim.SGD(p, lr=1.0),
        batch_size=100,  # one batch per client
        **({} if mode is None else {"buffer_aggregation": mode}),
    )
    initial = process.initialize()
    state, _ = process.next(initial, data)
    w = process.get_model_weights(state)
    if mode != "average":  # the default, as TFF: the server never changes non-trainable state
        assert torch.equal(w["bn.running_mean"], torch.zeros(D))
        assert torch.equal(w["bn.running_var"], torch.ones(D))
        assert int(w["bn.num_batches_tracked"]) == 0
        # ... while the trainable weights did move
        assert not torch.equal(w["fc.weight"], initial.model["fc.weight"])
        return
    # BatchNorm after one batch from running_mean 0: 0.1 * batch mean; averaged by size.
    expected = (6 * 0.1 * xs[0].mean(0) + 10 * 0.1 * xs[1].mean(0)) / 16
    np.testing.assert_allclose(w["bn.running_mean"].numpy(), expected, rtol=1e-5)
    assert int(w["bn.num_batches_tracked"]) == 1
    assert w["bn.num_batches_tracked"].dtype == torch.int64


class DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, 16)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, C)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class PicklingReversedExecutor(Executor):
    """Runs tasks last to first on cloudpickled copies, like a remote worker pool would."""

    @property
    def num_workers(self) -> int:
        return 2

    def map(self, fn, tasks):
        fn = cloudpickle.loads(cloudpickle.dumps(fn))
        out = [fn(cloudpickle.loads(cloudpickle.dumps(t))) for t in reversed(tasks)]
        return out[::-1]


def _run_dropout(seed: int, executor: Executor, rounds: int = 2):
    clients = [c for c in make_clients() if c[0] != "bad"]
    cd = ClientData.from_clients(clients)
    process = build_weighted_fed_avg(
        DropoutNet, batch_size=4, seed=seed, client_epochs=2, executor=executor
    )
    state = process.initialize()
    for r in range(1, rounds + 1):
        ids = sample_clients(cd.client_ids, 3, seed=seed, round_num=r)
        state, _ = process.next(state, ClientSelection(cd, ids))
    return process.get_model_weights(state)


def test_same_seed_same_weights_whatever_the_executor_and_task_order():
    a = _run_dropout(5, InProcessExecutor())
    b = _run_dropout(5, PicklingReversedExecutor())
    c = _run_dropout(6, InProcessExecutor())
    for name in a:
        assert torch.equal(a[name], b[name])
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


@pytest.mark.slow
def test_same_weights_with_two_worker_processes():
    from fedp13n.execution import process_pool as pool

    a = _run_dropout(5, InProcessExecutor())
    with pool.LocalProcessExecutor(num_workers=2) as executor:
        b = _run_dropout(5, executor)
    for name in a:
        assert torch.equal(a[name], b[name])


def test_next_is_pure_and_leaves_the_callers_random_state_alone():
    data = [ClientDataset(x, y) for c, x, y in make_clients() if c != "bad"]
    process = build_weighted_fed_avg(DropoutNet, batch_size=4, seed=2)
    s1, _ = process.next(process.initialize(), data)  # creates the momentum buffers
    before = {k: v.clone() for k, v in s1.optimizer_state["state"][0].items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    s2a, _ = process.next(s1, data)
    assert torch.equal(torch.rand(3), expected_draw)
    s2b, _ = process.next(s1, data)
    assert torch.equal(s1.optimizer_state["state"][0]["momentum_buffer"], before["momentum_buffer"])
    for name in s2a.model:
        assert torch.equal(s2a.model[name], s2b.model[name])
    assert s1.round_num == 1 and s2a.round_num == 2


def test_initialize_is_deterministic_from_the_seed():
    w1 = build_weighted_fed_avg(DropoutNet, seed=4).initialize().model
    w2 = build_weighted_fed_avg(DropoutNet, seed=4).initialize().model
    w3 = build_weighted_fed_avg(DropoutNet, seed=5).initialize().model
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not torch.equal(w1["fc1.weight"], w3["fc1.weight"])


def test_a_round_where_no_client_contributes_changes_nothing():
    clients = make_clients()
    data = [ClientDataset(x, y) for c, x, y in clients if c in ("bad", "empty")]
    process = build_weighted_fed_avg(linear_model, seed=1)
    state = process.initialize()
    new, m = process.next(state, data)
    assert all(torch.equal(new.model[k], state.model[k]) for k in state.model)
    assert new.optimizer_state["state"] == {}  # no server step was taken
    assert (m.num_clients, m.num_skipped_clients, m.num_examples) == (1, 1, 0)
    assert math.isnan(m.loss) and math.isnan(m.accuracy)
    assert set(m.as_dict()) >= {"round", "loss", "accuracy", "examples_per_second"}


def test_bad_inputs_get_clear_errors():
    cd = ClientData.from_clients(make_clients())
    process = build_weighted_fed_avg(linear_model)
    state = process.initialize()
    with pytest.raises(KeyError, match="not in the ClientData"):
        process.next(state, ClientSelection(cd, ["a", "nobody"]))
    with pytest.raises(TypeError, match="ClientSelection"):
        process.next(state, cd)
    with pytest.raises(TypeError, match="from_arrays"):
        process.next(state, [np.zeros((2, D))])
    other = build_weighted_fed_avg(DropoutNet).initialize()
    with pytest.raises(ValueError, match="another model"):
        process.next(other, [cd.create_dataset("a")])
    with pytest.raises(ValueError, match="batch_size"):
        build_weighted_fed_avg(linear_model, batch_size=0)
    with pytest.raises(ValueError, match="buffer_aggregation"):
        build_weighted_fed_avg(linear_model, buffer_aggregation="sum")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"client_pipeline": "keras"}, r"client_pipeline must be one of \('epochs', 'tff'\)"),
        ({"shuffle_buffer": 0}, "shuffle_buffer must be a positive integer, got 0"),
        ({"shuffle_buffer": 2.5}, "shuffle_buffer must be a positive integer"),
        ({"max_steps": 0}, "max_steps .or None for no limit. must be a positive integer"),
        ({"max_steps": True}, "max_steps"),
        ({"client_epochs": None}, "give max_steps"),
        ({"client_epochs": 0}, "client_epochs must be a positive integer"),
    ],
)
def test_bad_pipeline_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_weighted_fed_avg(linear_model, **kwargs)


def test_the_library_default_client_pipeline_is_tffs_as_the_clis():
    """Issue 17: the library defaulted to "epochs" where the CLI runs "tff", so the same
    settings gave different numbers. One default, declared once (data.pipeline)."""
    import inspect

    from fedp13n.algorithms.client_update import ClientWork
    from fedp13n.data.pipeline import DEFAULT_CLIENT_PIPELINE
    from fedp13n.experiments.config import ExperimentConfig

    assert DEFAULT_CLIENT_PIPELINE == "tff"
    default = inspect.signature(build_weighted_fed_avg).parameters["client_pipeline"].default
    assert default == "tff" == ExperimentConfig().client_pipeline
    assert ClientWork.__dataclass_fields__["pipeline"].default == "tff"
    clients = [ClientDataset(x, y) for c, x, y in make_clients() if c != "bad"]

    def run(**kw):
        process = build_weighted_fed_avg(linear_model, client_epochs=2, batch_size=3, seed=5, **kw)
        state, m = process.next(process.initialize(), clients)
        return process.get_model_weights(state), m

    (w, m), (w_tff, m_tff), (w_ep, _) = (
        run(),
        run(client_pipeline="tff"),
        run(client_pipeline="epochs"),
    )
    assert all(torch.equal(w[k], w_tff[k]) for k in w) and m.loss == m_tff.loss
    assert not torch.equal(w["weight"], w_ep["weight"])


def test_sample_clients_is_keyed_by_seed_and_round():
    ids = [f"c{i}" for i in range(20)]
    a = sample_clients(ids, 5, seed=1, round_num=3)
    assert a == sample_clients(ids, 5, seed=1, round_num=3)
    assert len(set(a)) == 5 and set(a) <= set(ids)
    assert a != sample_clients(ids, 5, seed=1, round_num=4)
    with pytest.raises(ValueError, match="between 1 and 20"):
        sample_clients(ids, 21, seed=1, round_num=1)
