"""Partitioners of a centralized labelled data set (fedp13n.data.partition): IID, Dirichlet
label skew, McMahan's shards, on made arrays (hand-checkable) and on scikit-learn's real
``load_digits`` (1,797 8x8 images), then end to end through FedAvg and personalization."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

import fedp13n
from fedp13n.data.partition import (
    client_ids_for,
    federate,
    num_test_examples,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_shards,
)


def _covers_once(parts, n):
    every = np.concatenate(parts)
    return len(every) == n and np.array_equal(np.sort(every), np.arange(n))


def _label_shares(parts, y, classes):
    return np.array([np.bincount(y[p], minlength=classes) / len(p) for p in parts])


# -- IID ------------------------------------------------------------------------------------------
def test_iid_sizes_differ_by_at_most_one_and_cover_every_example_once():
    parts = partition_iid(103, 10, seed=3)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3  # 103 = 7 * 10 + 3 * 11
    assert _covers_once(parts, 103)
    assert all(np.array_equal(p, np.sort(p)) for p in parts)


def test_iid_same_seed_same_parts_other_seed_other_parts():
    a, b, c = (partition_iid(50, 5, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


# -- shards ---------------------------------------------------------------------------------------
def test_shards_hand_worked_4_clients_x_2_shards():
    # 16 examples, labels 0..7 twice each, scrambled: sorted by label the 8 shards of 2 are
    # exactly {label k's two examples}, so every client gets 2 whole labels, 4 examples.
    y = np.array([3, 0, 7, 1, 5, 2, 6, 4, 4, 6, 2, 5, 1, 7, 0, 3])
    parts = partition_shards(y, 4, shards_per_client=2, seed=0)
    assert _covers_once(parts, 16)
    seen = []
    for p in parts:
        labels, counts = np.unique(y[p], return_counts=True)
        assert len(labels) == 2 and list(counts) == [2, 2]
        seen += list(labels)
    assert sorted(seen) == list(range(8))


def test_shards_seed_changes_which_shards_a_client_gets():
    y = np.repeat(np.arange(8), 2)
    a = [tuple(np.unique(y[p])) for p in partition_shards(y, 4, seed=0)]
    b = [tuple(np.unique(y[p])) for p in partition_shards(y, 4, seed=0)]
    others = {tuple(tuple(np.unique(y[p])) for p in partition_shards(y, 4, seed=s)) for s in
              range(1, 6)}  # fmt: skip
    assert a == b and others - {tuple(a)}


def test_shards_uneven_sizes_differ_by_at_most_one():
    y = np.arange(11) % 3
    parts = partition_shards(y, 2, shards_per_client=2, seed=0)  # 4 shards: 3, 3, 3, 2
    assert _covers_once(parts, 11) and sorted(len(p) for p in parts) in ([5, 6], [6, 5])


# -- Dirichlet ------------------------------------------------------------------------------------
Y10 = np.repeat(np.arange(10), 100)  # 1,000 examples, 100 of each of 10 labels


def test_dirichlet_covers_every_example_once_and_keeps_min_size():
    parts = partition_dirichlet(Y10, 20, alpha=0.5, min_size=10, seed=0)
    assert _covers_once(parts, 1000) and min(len(p) for p in parts) >= 10


def test_dirichlet_large_alpha_gives_each_client_nearly_the_global_mix():
    parts = partition_dirichlet(Y10, 5, alpha=1e6, min_size=1, seed=0)
    # each class split ~ evenly: 100 / 5 = 20 per client and class (floor cuts: +-1)
    counts = np.array([np.bincount(Y10[p], minlength=10) for p in parts])
    assert np.abs(counts - 20).max() <= 1
    assert np.abs(_label_shares(parts, Y10, 10) - 0.1).max() < 0.01


def test_dirichlet_small_alpha_gives_each_client_few_labels():
    parts = partition_dirichlet(Y10, 10, alpha=0.05, min_size=1, seed=0)
    shares = _label_shares(parts, Y10, 10)
    top2 = np.sort(shares, axis=1)[:, -2:].sum(axis=1)
    assert np.median(top2) > 0.9  # IID would give 0.2
    assert _covers_once(parts, 1000)


def test_dirichlet_is_deterministic_per_seed():
    a, b, c = (partition_dirichlet(Y10, 8, alpha=0.3, min_size=5, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_dirichlet_gives_up_with_one_line_error():
    with pytest.raises(ValueError, match="raise alpha, lower min_size") as e:
        partition_dirichlet(Y10, 50, alpha=0.01, min_size=19, seed=0, max_tries=5)
    assert "\n" not in str(e.value)


# -- the (train, test) pair -----------------------------------------------------------------------
def test_test_split_sizes_by_hand():
    assert [num_test_examples(n, 0.2) for n in (2, 5, 7, 8, 10)] == [1, 1, 1, 2, 2]
    assert num_test_examples(12, 0.25) == 3 and num_test_examples(3, 0.9) == 2
    assert num_test_examples(10, 0.0) == 0


def test_federate_same_ids_and_every_example_once():
    x = np.arange(40, dtype=np.float32).reshape(20, 2)  # row i is (2i, 2i + 1)
    y = np.arange(20) % 4
    parts = [np.arange(0, 8), np.arange(8, 20)]
    train, test = federate(x, y, parts, test_fraction=0.25, seed=0)
    assert train.client_ids == test.client_ids == ("client_0", "client_1")
    assert list(test.client_sizes()) == [2, 3] and list(train.client_sizes()) == [6, 9]
    rows = np.concatenate([train.x[:, 0], test.x[:, 0]]) / 2
    assert np.array_equal(np.sort(rows), np.arange(20))
    for cd in (train, test):  # labels travel with their rows
        assert np.array_equal(cd.y, (cd.x[:, 0] // 2).astype(int) % 4)
    assert client_ids_for(11)[:2] == ["client_00", "client_01"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha must be a finite number > 0"),
        ({"alpha": -1.0}, "alpha must be a finite number > 0"),
        ({"num_clients": 31}, "only 30 examples"),
        ({"scheme": "shards", "shards_per_client": 4, "num_clients": 10}, "a shard would be empty"),
        ({"y": np.linspace(0, 1, 30)}, "integer class labels"),
        ({"y": np.zeros(29, dtype=int)}, "x has 30 examples but y has 29"),
        ({"scheme": "iid", "alpha": 0.5}, "alpha applies to scheme 'dirichlet', not 'iid'"),
        ({"scheme": "label"}, "scheme must be one of"),
        ({"num_clients": 20, "scheme": "iid"}, "client_10 has 1 example"),
        ({"test_fraction": 1.0}, r"test_fraction must be a number in \[0, 1\)"),
        ({"min_size": 20}, "need 40, but there are 30"),
    ],
)
def test_bad_input_is_a_one_line_error(kwargs, match):
    args = {"x": np.zeros((30, 3)), "y": np.arange(30) % 3, "num_clients": 2, **kwargs}
    with pytest.raises(ValueError, match=match) as e:
        partition(args.pop("x"), args.pop("y"), args.pop("num_clients"), **args)
    assert "\n" not in str(e.value)


# -- real data: scikit-learn's digits -------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def test_digits_dirichlet_20_clients(digits):
    x, y = digits
    assert x.shape == (1797, 8, 8)
    train, test = partition(x, y, 20, "dirichlet", alpha=0.5, seed=0)
    assert train.client_ids == test.client_ids and len(train) == 20
    assert train.num_examples + test.num_examples == 1797
    global_hist = np.bincount(y, minlength=10)
    per_client = [
        np.bincount(train.create_dataset(c).y, minlength=10)
        + np.bincount(test.create_dataset(c).y, minlength=10)
        for c in train.client_ids
    ]
    assert np.array_equal(np.sum(per_client, axis=0), global_hist)
    sizes = train.client_sizes() + test.client_sizes()
    assert sizes.min() >= 10 and len(set(sizes.tolist())) > 5  # skewed, unequal clients
    for c in train.client_ids:  # 20% held out per client (round half up, at least 1)
        n = train.size(c) + test.size(c)
        assert test.size(c) == num_test_examples(n, 0.2)


class _DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_digits_end_to_end_fedavg_then_personalization(digits):
    x, y = digits
    train, test = partition(x, y, 20, "dirichlet", alpha=0.5, seed=0)
    fedavg_ids, p13n_ids = fedp13n.split_clients(train.client_ids, 15, 5)
    process = fedp13n.build_weighted_fed_avg(
        _DigitsMLP,
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=0.3),
        server_optimizer_fn=functools.partial(torch.optim.SGD, lr=1.0),
        client_epochs=2,
        batch_size=10,
        seed=0,
    )
    state = process.initialize()
    for r in (1, 2):
        ids = fedp13n.sample_clients(fedavg_ids, 10, seed=0, round_num=r)
        state, metrics = process.next(state, fedp13n.ClientSelection(train, ids))
        assert np.isfinite(metrics.loss)
    fns = {"sgd": functools.partial(
        fedp13n.build_personalize_fn, optimizer_fn=functools.partial(torch.optim.SGD, lr=0.1),
        batch_size=10, num_epochs=2, num_epochs_per_eval=1)}  # fmt: skip
    p13n_eval = fedp13n.build_personalization_eval(_DigitsMLP, fns, fedp13n.evaluate_fn, seed=0)
    inputs = [{"client_id": c, "train_data": train.create_dataset(c),
               "test_data": test.create_dataset(c)} for c in p13n_ids]  # fmt: skip
    result = p13n_eval(process.get_model_weights(state), inputs)
    base = np.array(result["baseline_metrics"]["accuracy"])
    tuned = np.array(result["sgd"]["epoch_2"]["accuracy"])
    assert np.isfinite(base).all() and np.isfinite(tuned).all()
    # chance is 0.1; on label-skewed clients fine-tuning helps (measured 0.44 -> 0.76)
    assert 0.2 < base.mean() < tuned.mean()
