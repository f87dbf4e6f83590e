"""build_personalization_eval: TFF's semantics on models small enough to check by hand.

Hand example (y = w.x, mean squared error, global w = 0, strategy: full-batch SGD lr 0.5):
client A: train x = I, y = (1, 2); test x = (1, 1), y = 3 -> baseline loss 9, then 9/4^k
after epoch k (w_k = (1 - 2^-k) (1, 2)); client B: train x = (1, 0), y = 2; test x = I,
y = (2, 1) -> baseline (4 + 1)/2 = 2.5, then w = (2, 0) and loss (0 + 1)/2 = 0.5.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.data import ClientDataset
from fedp13n.execution import InProcessExecutor
from fedp13n.personalization import (
    PersonalizationResult,
    build_evaluate_fn,
    build_personalization_eval,
    build_personalize_fn,
    evaluate_fn,
    reservoir_sample,
)
from fedp13n.utils.seeding import derive_rng

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/femnist_sample"

MSE_EVAL = build_evaluate_fn(loss_fn=F.mse_loss)
ZERO = {"weight": torch.zeros(1, 2)}


def linear_fn() -> nn.Module:
    return nn.Linear(2, 1, bias=False)


def ds(x, y) -> ClientDataset:
    return ClientDataset(np.asarray(x, np.float32), np.asarray(y, np.float32))


CLIENT_A = {
    "client_id": "A",
    "train_data": ds([[1, 0], [0, 1]], [[1], [2]]),
    "test_data": ds([[1, 1]], [[3]]),
}
CLIENT_B = {
    "client_id": "B",
    "train_data": ds([[1, 0]], [[2]]),
    "test_data": ds([[1, 0], [0, 1]], [[2], [1]]),
}


def sgd(lr=0.5, batch_size=2, epochs=2, per_eval=1, shuffle=True, optimizer=torch.optim.SGD):
    return functools.partial(
        build_personalize_fn,
        functools.partial(optimizer, lr=lr),
        batch_size,
        epochs,
        per_eval,
        shuffle,
        loss_fn=F.mse_loss,
    )


def sizes_strategy():
    """A custom strategy with nested metrics and 0-d tensor leaves (TFF allows both)."""

    def personalize(model, train_data, test_data, context=None):
        return {"sizes": {"train": len(train_data), "test": torch.tensor(len(test_data))}}

    return personalize


def assert_tree_close(actual, expected, rel=1e-5):
    if isinstance(expected, Mapping):
        assert list(actual) == list(expected)
        for k in expected:
            assert_tree_close(actual[k], expected[k], rel)
    else:
        assert actual == pytest.approx(expected, rel=rel)


def random_client(rng, cid, n_train, n_test):
    w = rng.normal(size=2)
    x, tx = rng.normal(size=(n_train, 2)), rng.normal(size=(n_test, 2))
    return {
        "client_id": cid,
        "train_data": ds(x, (x @ w)[:, None]),
        "test_data": ds(tx, (tx @ w)[:, None]),
    }


# -- semantics --------------------------------------------------------------------------------
def test_baseline_and_strategies_by_hand():
    p13n_eval = build_personalization_eval(
        linear_fn, {"sgd": sgd(), "custom": sizes_strategy}, MSE_EVAL, seed=0
    )
    result = p13n_eval(ZERO, [CLIENT_A, CLIENT_B])
    assert isinstance(result, PersonalizationResult)
    assert list(result) == ["baseline_metrics", "sgd", "custom"]
    assert result.client_ids == ("A", "B")
    assert result.seed == 0
    assert_tree_close(
        result,
        {
            "baseline_metrics": {
                "num_test_examples": [1, 2],
                "loss": [9.0, 2.5],
                "num_examples": [1, 2],
                "num_batches": [1, 1],
            },
            "sgd": {
                "epoch_1": {
                    "num_test_examples": [1, 2],
                    "loss": [2.25, 0.5],
                    "num_examples": [1, 2],
                    "num_batches": [1, 1],
                },
                "epoch_2": {
                    "num_test_examples": [1, 2],
                    "loss": [0.5625, 0.5],
                    "num_examples": [1, 2],
                    "num_batches": [1, 1],
                },
                "num_train_examples": [4, 2],
            },
            "custom": {"sizes": {"train": [2, 1], "test": [1, 2]}},
        },
    )
    leaf = result["custom"]["sizes"]["test"]
    assert all(type(v) is int for v in leaf)  # 0-d tensors became Python scalars


def test_lists_are_aligned_with_client_ids_whatever_the_input_order():
    rng = np.random.default_rng(0)
    clients = [random_client(rng, f"c{i}", n, 3) for i, n in enumerate((4, 6, 5))]
    strategies = {
        "gd": sgd(lr=0.1, batch_size=10, epochs=2, shuffle=False),
        "adam": sgd(lr=0.05, batch_size=2, epochs=2, optimizer=torch.optim.Adam),
    }
    p13n_eval = build_personalization_eval(linear_fn, strategies, MSE_EVAL, seed=7)
    weights = {"weight": torch.tensor([[0.3, -0.2]])}
    forward = p13n_eval(weights, clients)
    backward = p13n_eval(weights, clients[::-1])
    assert forward.client_ids == ("c0", "c1", "c2")
    assert backward.client_ids == ("c2", "c1", "c0")
    for i, c in enumerate(clients):
        alone = p13n_eval(weights, [c])
        j = 2 - i
        for key in ("baseline_metrics", "gd", "adam"):
            _assert_position(forward[key], i, alone[key], 0)
            _assert_position(backward[key], j, alone[key], 0)
        # independent check of position i: full-batch gradient descent in numpy
        w = np.array([0.3, -0.2])
        x, y = c["train_data"].x.astype(np.float64), c["train_data"].y[:, 0].astype(np.float64)
        tx, ty = c["test_data"].x.astype(np.float64), c["test_data"].y[:, 0].astype(np.float64)
        assert forward["baseline_metrics"]["loss"][i] == pytest.approx(
            np.mean((tx @ w - ty) ** 2), rel=1e-5
        )
        for epoch in (1, 2):
            w = w - 0.1 * 2 / len(y) * x.T @ (x @ w - y)
            assert forward["gd"][f"epoch_{epoch}"]["loss"][i] == pytest.approx(
                np.mean((tx @ w - ty) ** 2), rel=1e-5
            )
        assert forward["gd"]["num_train_examples"][i] == 2 * len(y)


def _assert_position(tree, i, other, j):
    if isinstance(tree, Mapping):
        assert list(tree) == list(other)
        for k in tree:
            _assert_position(tree[k], i, other[k], j)
    else:
        assert tree[i] == other[j]


def test_client_ids_default_to_positions_and_context_reaches_strategies():
    def ctx_strategy():
        return lambda model, train, test, context=None: {"ctx": context["scale"] * len(train)}

    inputs = [
        {
            "train_data": CLIENT_A["train_data"],
            "test_data": CLIENT_A["test_data"],
            "context": {"scale": 10},
        },
        {
            "train_data": CLIENT_B["train_data"],
            "test_data": CLIENT_B["test_data"],
            "context": {"scale": 3},
        },
    ]
    result = build_personalization_eval(linear_fn, {"c": ctx_strategy}, MSE_EVAL, seed=1)(
        ZERO, inputs
    )
    assert result.client_ids == ("0", "1")
    assert result["c"]["ctx"] == [20, 3]


def test_accepts_xy_tuples_and_generators_of_inputs():
    def gen():
        yield {
            "train_data": (torch.eye(2), torch.tensor([[1.0], [2.0]])),
            "test_data": (np.ones((1, 2), np.float32), np.full((1, 1), 3, np.float32)),
        }

    result = build_personalization_eval(linear_fn, {"sgd": sgd(epochs=1)}, MSE_EVAL, seed=0)(
        ZERO, gen()
    )
    assert result["sgd"]["epoch_1"]["loss"] == [pytest.approx(2.25)]


def test_classification_accuracy_with_the_default_evaluate_fn():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    x = np.array([[2, 0], [0, 3], [-1, -1], [1, 0.5]], np.float32)  # predicted 0, 1, 2, 0
    client = {
        "train_data": ClientDataset(x, np.array([0, 1, 2, 0])),
        "test_data": ClientDataset(x, np.array([0, 1, 2, 1])),
    }
    strategy = functools.partial(
        build_personalize_fn, functools.partial(torch.optim.SGD, lr=0.0), 4, 1, 1
    )
    model_fn = functools.partial(nn.Linear, 2, 3, bias=False)
    result = build_personalization_eval(model_fn, {"frozen": strategy}, evaluate_fn, seed=0)(
        {"weight": w}, [client]
    )
    assert result["baseline_metrics"]["accuracy"] == [0.75]
    assert result["frozen"]["epoch_1"]["accuracy"] == [0.75]  # lr 0: unchanged model
    logits = x.astype(np.float64) @ w.numpy().T.astype(np.float64)
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(4), [0, 1, 2, 1]]
    assert result["baseline_metrics"]["loss"][0] == pytest.approx(ce.mean(), rel=1e-6)


# -- sampling ---------------------------------------------------------------------------------
def counting_clients(n):
    """Client i has i + 1 training examples: the metric tells which client produced it."""
    return [
        {
            "client_id": str(i),
            "train_data": ds(np.zeros((i + 1, 2)), np.zeros((i + 1, 1))),
            "test_data": ds(np.zeros((1, 2)), np.zeros((1, 1))),
        }
        for i in range(n)
    ]


def counting_eval(max_num_samples, seed, calls=None):
    def builder():
        def personalize(model, train, test, context=None):
            if calls is not None:
                calls.append(len(train))
            return {"n": len(train)}

        return personalize

    return build_personalization_eval(
        linear_fn, {"count": builder}, MSE_EVAL, max_num_samples=max_num_samples, seed=seed
    )


def test_sample_without_replacement_and_only_sampled_clients_run():
    calls = []
    result = counting_eval(4, seed=3, calls=calls)(ZERO, counting_clients(10))
    ids = result.client_ids
    assert len(ids) == 4 and len(set(ids)) == 4
    assert [int(c) for c in ids] == sorted(int(c) for c in ids)  # input order kept
    assert result["count"]["n"] == [int(c) + 1 for c in ids]  # aligned with the ids
    assert sorted(calls) == sorted(int(c) + 1 for c in ids)  # nobody else was trained
    assert len(result["baseline_metrics"]["loss"]) == 4


def test_same_seed_same_sample_different_seeds_differ():
    clients = counting_clients(10)
    samples = [counting_eval(3, seed=s)(ZERO, clients).client_ids for s in range(8)]
    assert samples[0] == counting_eval(3, seed=0)(ZERO, clients).client_ids
    assert len(set(samples)) > 1


def test_max_num_samples_one_and_fewer_clients_than_samples():
    one = counting_eval(1, seed=5)(ZERO, counting_clients(6))
    assert len(one.client_ids) == 1
    assert one["count"]["n"] == [int(one.client_ids[0]) + 1]
    everyone = counting_eval(100, seed=5)(ZERO, counting_clients(6))
    assert everyone.client_ids == tuple(str(i) for i in range(6))
    assert everyone["count"]["n"] == [1, 2, 3, 4, 5, 6]


def test_reservoir_sampling_is_uniform():
    items, k, trials = 6, 2, 3000
    singles, pairs = Counter(), Counter()
    for s in range(trials):
        chosen = reservoir_sample(items, k, derive_rng(s, "test"))
        assert len(chosen) == k and len(set(chosen)) == k
        singles.update(chosen)
        pairs[tuple(chosen)] += 1
    # each item is kept with probability k/items = 1/3; each of the 15 pairs with 1/15
    assert all(abs(singles[i] - trials / 3) < 0.1 * trials / 3 for i in range(items))
    assert len(pairs) == 15
    assert all(abs(c - trials / 15) < 0.25 * trials / 15 for c in pairs.values())
    assert reservoir_sample(3, 5, derive_rng(0, "x")) == [0, 1, 2]


def test_seed_none_draws_a_seed_that_reproduces_the_run():
    clients = counting_clients(12)
    first = counting_eval(3, seed=None)(ZERO, clients)
    assert isinstance(first.seed, int)
    again = counting_eval(3, seed=first.seed)(ZERO, clients)
    assert again.to_dict() == first.to_dict()


# -- isolation and determinism -------------------------------------------------------------------
def bn_dropout_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.3), nn.Linear(4, 1)
    )


def vandal():
    """Wrecks the model in every way it can: weights, BN buffers, RNG, leftover attributes."""

    def personalize(model, train, test, context=None):
        with torch.no_grad():
            for t in model.state_dict().values():
                t.fill_(7)
        model.leftover = "junk"
        torch.rand(1000)
        return {"done": 1}

    return personalize


def test_no_state_leaks_between_strategies_or_clients():
    rng = np.random.default_rng(4)
    clients = [random_client(rng, f"c{i}", 6, 4) for i in range(3)]
    torch.manual_seed(0)
    weights = {k: v.clone() for k, v in bn_dropout_model().state_dict().items()}
    original = {k: v.clone() for k, v in weights.items()}
    adam = sgd(lr=0.05, batch_size=3, epochs=2, optimizer=torch.optim.Adam)
    plain = sgd(lr=0.05, batch_size=3, epochs=2)

    def run(strategies, inputs):
        return build_personalization_eval(bn_dropout_model, strategies, MSE_EVAL, seed=11)(
            weights, inputs
        )

    together = run({"vandal": vandal, "adam": adam, "sgd": plain}, clients)
    for name, builder in (("adam", adam), ("sgd", plain)):
        alone = run({name: builder}, clients)
        assert alone[name] == together[name]
        for i, c in enumerate(clients):  # and no leak from one client to the next
            _assert_position(together[name], i, run({name: builder}, [c])[name], 0)
    # the baseline is the global model in eval mode, exactly as evaluated directly
    model = bn_dropout_model()
    model.load_state_dict(original)
    for i, c in enumerate(clients):
        direct = MSE_EVAL(model, c["test_data"])
        assert together["baseline_metrics"]["loss"][i] == direct["loss"]
    assert all(torch.equal(weights[k], original[k]) for k in original)  # caller's weights intact


def test_caller_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_personalization_eval(linear_fn, {"sgd": sgd()}, MSE_EVAL, seed=0)(ZERO, [CLIENT_A])
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow  # starts two worker processes (seconds of torch imports)
def test_same_numbers_across_executors_and_worker_counts():
    rng = np.random.default_rng(5)
    clients = [random_client(rng, f"c{i}", 4 + 2 * i, 3) for i in range(4)]
    torch.manual_seed(1)
    weights = bn_dropout_model().state_dict()
    strategies = {
        "adam": sgd(lr=0.05, batch_size=2, epochs=2, optimizer=torch.optim.Adam),
        "sgd": sgd(lr=0.05, batch_size=2),
    }

    def run(executor):
        return build_personalization_eval(
            bn_dropout_model, strategies, MSE_EVAL, max_num_samples=3, seed=9, executor=executor
        )(weights, clients).to_dict()

    reference = run(None)
    assert run(InProcessExecutor()) == reference
    with _two_worker_processes() as ex:
        assert ex.num_workers == 2
        assert run(ex) == reference


def _two_worker_processes():
    try:
        from fedp13n.execution.factory import make_executor
    except ImportError:
        pass
    else:
        return make_executor("processes", num_workers=2)
    from fedp13n.execution import process_pool as pool

    return pool.LocalProcessExecutor(num_workers=2)


# -- result object ----------------------------------------------------------------------------
def test_json_round_trip_keeps_ids_seed_and_nan():
    empty_test = {
        "client_id": "E",
        "train_data": CLIENT_B["train_data"],
        "test_data": ds(np.zeros((0, 2)), np.zeros((0, 1))),
    }
    result = build_personalization_eval(linear_fn, {"sgd": sgd(epochs=1)}, MSE_EVAL, seed=2)(
        ZERO, [CLIENT_A, empty_test]
    )
    assert math.isnan(result["baseline_metrics"]["loss"][1])
    data = json.loads(result.to_json())
    assert data["client_ids"] == ["A", "E"] and data["seed"] == 2
    assert data["baseline_metrics"]["loss"] == [9.0, None]
    back = PersonalizationResult.from_dict(data)
    assert back.client_ids == result.client_ids and back.seed == 2
    assert list(back) == list(result)
    assert back["sgd"]["epoch_1"]["loss"][0] == result["sgd"]["epoch_1"]["loss"][0]
    assert math.isnan(back["baseline_metrics"]["loss"][1])


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"personalize_fn_dict": {"baseline_metrics": sizes_strategy}},
            ValueError,
            "baseline_metrics",
        ),
        ({"personalize_fn_dict": {"client_ids": sizes_strategy}}, ValueError, "client_ids"),
        (
            {"personalize_fn_dict": {"x": sizes_strategy()(None, [], [])}},
            TypeError,
            "no-argument callable",
        ),
        ({"personalize_fn_dict": {"x": lambda: 3}}, TypeError, "returned a int"),
        ({"personalize_fn_dict": [("x", sizes_strategy)]}, TypeError, "must be a mapping"),
        ({"personalize_fn_dict": {1: sizes_strategy}}, TypeError, "strategy names must be strings"),
        ({"max_num_samples": 0}, ValueError, "positive"),
        ({"max_num_samples": -3}, ValueError, "positive"),
        ({"max_num_samples": 2.0}, TypeError, "max_num_samples must be an int"),
        ({"max_num_samples": True}, TypeError, "max_num_samples must be an int"),
        ({"model_fn": "linear"}, TypeError, "model_fn"),
        ({"baseline_evaluate_fn": None}, TypeError, "baseline_evaluate_fn"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"executor": "processes"}, TypeError, "executor"),
    ],
)
def test_bad_build_arguments(kwargs, error, match):
    args = {
        "model_fn": linear_fn,
        "personalize_fn_dict": {"s": sizes_strategy},
        "baseline_evaluate_fn": MSE_EVAL,
    }
    with pytest.raises(error, match=match):
        build_personalization_eval(**{**args, **kwargs})


LOADER = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4, 1)), batch_size=2
)


@pytest.mark.parametrize(
    ("inputs", "error", "match"),
    [
        ([{"train_data": CLIENT_A["train_data"]}], TypeError, "no 'test_data'"),
        ([{"test_data": CLIENT_A["test_data"]}], TypeError, "no 'train_data'"),
        ([{**CLIENT_A, "extra": 1}], TypeError, r"unknown keys \['extra'\]"),
        ([(CLIENT_A["train_data"], CLIENT_A["test_data"])], TypeError, "must be a mapping"),
        ([{**CLIENT_A, "train_data": LOADER}], TypeError, "train_data of client 'A'.*DataLoader"),
        ([{**CLIENT_A, "test_data": list(LOADER)}], TypeError, "list of .x, y. batches"),
        ([{**CLIENT_A, "test_data": "data.h5"}], TypeError, "unbatched"),
        (
            [{**CLIENT_A, "train_data": (np.zeros((3, 2)), np.zeros(2))}],
            ValueError,
            "3 feature rows but 2 labels",
        ),
        (CLIENT_A, TypeError, "list of per-client mappings"),
        ([CLIENT_A, {**CLIENT_B, "client_id": "A"}], ValueError, "appears twice"),
    ],
)
def test_bad_client_inputs(inputs, error, match):
    p13n_eval = build_personalization_eval(linear_fn, {"s": sizes_strategy}, MSE_EVAL, seed=0)
    with pytest.raises(error, match=match):
        p13n_eval(ZERO, inputs)


def test_bad_weights_and_bad_metrics():
    p13n_eval = build_personalization_eval(linear_fn, {"s": sizes_strategy}, MSE_EVAL, seed=0)
    with pytest.raises(ValueError, match=r"missing \['weight'\]"):
        p13n_eval({"w": torch.zeros(1, 2)}, [CLIENT_A])
    with pytest.raises(ValueError, match="shape"):
        p13n_eval({"weight": torch.zeros(2, 2)}, [CLIENT_A])
    with pytest.raises(TypeError, match="state_dict"):
        p13n_eval(linear_fn(), [CLIENT_A])

    def vector_metric():
        return lambda model, train, test, context=None: {"v": torch.zeros(3)}

    with pytest.raises(TypeError, match=r"strategy 'v'/v has shape \(3,\)"):
        build_personalization_eval(linear_fn, {"v": vector_metric}, MSE_EVAL, seed=0)(
            ZERO, [CLIENT_A]
        )

    def not_a_mapping():
        return lambda model, train, test, context=None: 0.5

    with pytest.raises(TypeError, match="must return a mapping"):
        build_personalization_eval(linear_fn, {"m": not_a_mapping}, MSE_EVAL, seed=0)(
            ZERO, [CLIENT_A]
        )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_global_weights_are_refused_with_one_line(bad):
    """Issue 17: NaN global weights reported accuracy 0 and loss NaN without a word."""
    calls = []

    def strategy():
        return lambda model, train, test: calls.append(1) or {"n": len(train)}

    def two_layers():
        return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))

    weights = two_layers().state_dict()
    weights["2.weight"] = torch.tensor([[0.0, bad]])
    weights["2.bias"] = torch.tensor([bad])
    p13n_eval = build_personalization_eval(two_layers, {"s": strategy}, MSE_EVAL, seed=0)
    for clients in ([CLIENT_A], []):
        with pytest.raises(ValueError) as info:
            p13n_eval(weights, clients)
        assert str(info.value) == (
            "model_weights['2.weight'] has 1 non-finite value(s) (NaN or infinity): the global "
            "model diverged or was corrupted; evaluate finite weights (e.g. an earlier round's, "
            "or retrain with a lower learning rate)."
        )
    assert calls == []
    # integer buffers (num_batches_tracked) and finite weights pass
    assert p13n_eval(two_layers().state_dict(), [CLIENT_A])["s"]["n"] == [2]


# -- real data --------------------------------------------------------------------------------
def test_real_femnist_clients():
    h5py = pytest.importorskip("h5py")
    if not (DATA_DIR / "fed_emnist_train.h5").exists():
        pytest.skip(f"real data sample not found at {DATA_DIR}")
    inputs = []
    with (
        h5py.File(DATA_DIR / "fed_emnist_train.h5") as tr,
        h5py.File(DATA_DIR / "fed_emnist_test.h5") as te,
    ):
        for cid in sorted(tr["examples"])[:2]:
            inputs.append(
                {
                    "client_id": cid,
                    "train_data": ClientDataset(
                        tr["examples"][cid]["pixels"][:], tr["examples"][cid]["label"][:]
                    ),
                    "test_data": ClientDataset(
                        te["examples"][cid]["pixels"][:], te["examples"][cid]["label"][:]
                    ),
                }
            )

    def model_fn():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 62))

    weights = {"1.weight": torch.zeros(62, 784), "1.bias": torch.zeros(62)}
    strategy = functools.partial(
        build_personalize_fn, functools.partial(torch.optim.SGD, lr=0.01), 20, 1, 1
    )
    result = build_personalization_eval(model_fn, {"sgd": strategy}, evaluate_fn, seed=0)(
        weights, inputs
    )
    base = result["baseline_metrics"]
    assert base["num_test_examples"] == [len(c["test_data"]) for c in inputs]
    # zero weights: uniform logits, cross-entropy ln 62; argmax ties pick class 0
    assert base["loss"] == [pytest.approx(math.log(62), rel=1e-6)] * 2
    assert base["accuracy"] == [float(np.mean(c["test_data"].y == 0)) for c in inputs]
    assert result["sgd"]["num_train_examples"] == [len(c["train_data"]) for c in inputs]
    assert all(math.isfinite(v) for v in result["sgd"]["epoch_1"]["loss"])
