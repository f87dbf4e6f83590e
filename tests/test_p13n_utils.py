"""build_personalize_fn / evaluate_fn on models whose numbers can be worked out by hand.

The main example: y = w.x on 2-feature vectors with the mean squared error, w0 = 0,
train x = I (2 examples), y = (1, 2), test x = (1, 1), y = 3. Full-batch SGD with lr 0.5
gives w_k = (1 - 2^-k) (1, 2), so the test prediction is 3 (1 - 2^-k) and the test loss
after epoch k is 9 / 4^k (9 before training).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.data import ClientDataset
from fedp13n.personalization import build_evaluate_fn, build_personalize_fn, evaluate_fn

SGD_HALF = functools.partial(torch.optim.SGD, lr=0.5)


def linear(w=(0.0, 0.0)) -> nn.Linear:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([w], dtype=torch.float32))
    return model


def ds(x, y) -> ClientDataset:
    return ClientDataset(np.asarray(x, np.float32), np.asarray(y, np.float32))


TRAIN = ds([[1, 0], [0, 1]], [[1], [2]])
TEST = ds([[1, 1]], [[3]])


def numpy_sgd(w, x, y, lr, batch_size, epochs):
    """Reference mini-batch SGD on the MSE of y = w.x, in float64, batches in order."""
    w = np.asarray(w, np.float64).copy()
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)[:, 0]
    for _ in range(epochs):
        for s in range(0, len(y), batch_size):
            xb, yb = x[s : s + batch_size], y[s : s + batch_size]
            w -= lr * 2.0 / len(yb) * xb.T @ (xb @ w - yb)
    return w


def mse(w, x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)[:, 0]
    return float(np.mean((x @ np.asarray(w) - y) ** 2))


# -- evaluate_fn ---------------------------------------------------------------------------------
def test_evaluate_regression_reports_mse_and_no_accuracy():
    m = evaluate_fn(
        linear((1.0, 2.0)), ds([[1, 0], [0, 1], [1, 1]], [[0], [0], [0]]), loss_fn=F.mse_loss
    )
    # predictions 1, 2, 3 against 0: (1 + 4 + 9) / 3
    assert list(m) == ["num_test_examples", "loss", "num_examples", "num_batches"]
    assert m["num_test_examples"] == m["num_examples"] == 3
    assert m["num_batches"] == 1  # one evaluation batch of 1000
    assert m["loss"] == pytest.approx(14 / 3, rel=1e-6)


def test_evaluate_classification_loss_and_accuracy_by_hand():
    model = nn.Linear(2, 3, bias=False)
    w = np.array([[1, 0], [0, 1], [-1, -1]], np.float32)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w))
    x = np.array([[2, 0], [0, 3], [-1, -1], [1, 0.5]], np.float32)
    y = np.array([0, 1, 2, 1], np.int32)  # predicted classes: 0, 1, 2, 0 -> 3 of 4 right
    m = evaluate_fn(model, ClientDataset(x, y))
    logits = x.astype(np.float64) @ w.T
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(4), y]
    assert list(m) == [
        "num_test_examples",
        "loss",
        "accuracy",
        "sparse_categorical_accuracy",
        "num_examples",
        "num_batches",
    ]
    assert m["num_test_examples"] == m["num_examples"] == 4
    assert m["accuracy"] == m["sparse_categorical_accuracy"] == 0.75
    assert m["num_batches"] == 1
    assert m["loss"] == pytest.approx(ce.mean(), rel=1e-6)


def test_evaluation_batch_size_does_not_change_the_numbers():
    rng = np.random.default_rng(0)
    data = ClientDataset(rng.normal(size=(10, 2)).astype(np.float32), rng.integers(0, 3, 10))
    model = nn.Linear(2, 3)
    results = [evaluate_fn(model, data, batch_size=b) for b in (1, 3, 4, 1000)]
    # TFF's num_batches counter is the one number that depends on the batch size
    assert [r["num_batches"] for r in results] == [10, 4, 3, 1]
    for r in results[1:]:
        assert r["num_test_examples"] == r["num_examples"] == 10
        assert r["sparse_categorical_accuracy"] == results[0]["accuracy"]
        assert r["accuracy"] == results[0]["accuracy"]
        assert r["loss"] == pytest.approx(results[0]["loss"], rel=1e-6)


def test_evaluate_uses_eval_mode_and_restores_the_mode():
    model = nn.Sequential(linear((1.0, 2.0)), nn.Dropout(0.9))
    model.train()
    data = ds([[1, 0], [0, 1]], [[0], [0]])
    m = evaluate_fn(model, data, loss_fn=F.mse_loss)
    assert m["loss"] == pytest.approx(2.5)  # dropout off: (1 + 4) / 2
    assert model.training


def test_evaluate_empty_dataset_gives_nan():
    m = evaluate_fn(
        nn.Linear(2, 3), ClientDataset(np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    )
    assert m["num_test_examples"] == m["num_examples"] == m["num_batches"] == 0
    assert math.isnan(m["loss"]) and math.isnan(m["accuracy"])
    assert math.isnan(m["sparse_categorical_accuracy"])


def test_build_evaluate_fn_binds_loss_and_accepts_tensor_tuples():
    ev = build_evaluate_fn(loss_fn=F.mse_loss, batch_size=1)
    m = ev(linear((1.0, 2.0)), (torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0]])))
    assert m["loss"] == pytest.approx(4.0)


# -- build_personalize_fn --------------------------------------------------------------------------
def test_one_epoch_by_hand():
    p = build_personalize_fn(
        SGD_HALF, batch_size=2, num_epochs=1, num_epochs_per_eval=1, loss_fn=F.mse_loss
    )
    model = linear()
    m = p(model, TRAIN, TEST)
    assert list(m) == ["epoch_1", "num_train_examples"]
    assert model.weight.detach().numpy().tolist() == [[0.5, 1.0]]
    assert m["epoch_1"]["loss"] == pytest.approx(2.25, rel=1e-6)
    assert m["epoch_1"]["num_test_examples"] == 1
    assert m["num_train_examples"] == 2


def test_evaluates_every_k_epochs_and_after_the_last():
    p = build_personalize_fn(
        SGD_HALF, batch_size=2, num_epochs=5, num_epochs_per_eval=2, loss_fn=F.mse_loss
    )
    m = p(linear(), TRAIN, TEST)
    assert list(m) == ["epoch_2", "epoch_4", "epoch_5", "num_train_examples"]
    for k in (2, 4, 5):
        assert m[f"epoch_{k}"]["loss"] == pytest.approx(9 / 4**k, rel=1e-5)
    assert m["num_train_examples"] == 5 * 2


def test_eval_period_longer_than_training_still_evaluates_the_last_epoch():
    p = build_personalize_fn(SGD_HALF, 2, num_epochs=3, num_epochs_per_eval=10, loss_fn=F.mse_loss)
    m = p(linear(), TRAIN, TEST)
    assert list(m) == ["epoch_3", "num_train_examples"]
    assert m["epoch_3"]["loss"] == pytest.approx(9 / 4**3, rel=1e-5)


def test_mini_batches_match_a_numpy_sgd_loop():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 2))
    y = (x @ np.array([1.5, -0.5]) + 0.1 * rng.normal(size=5))[:, None]
    tx = rng.normal(size=(4, 2))
    ty = (tx @ np.array([1.5, -0.5]))[:, None]
    p = build_personalize_fn(
        functools.partial(torch.optim.SGD, lr=0.1),
        batch_size=2,
        num_epochs=3,
        num_epochs_per_eval=1,
        shuffle=False,
        loss_fn=F.mse_loss,
    )
    m = p(linear((0.2, 0.3)), ds(x, y), ds(tx, ty))
    for k in (1, 2, 3):
        w = numpy_sgd([0.2, 0.3], x, y, lr=0.1, batch_size=2, epochs=k)
        assert m[f"epoch_{k}"]["loss"] == pytest.approx(mse(w, tx, ty), rel=1e-5)
    assert m["num_train_examples"] == 3 * 5  # the last batch of each epoch has 1 example


def test_shuffle_follows_torch_seed():
    rng = np.random.default_rng(2)
    train = ds(rng.normal(size=(8, 2)), rng.normal(size=(8, 1)))
    p = build_personalize_fn(
        functools.partial(torch.optim.SGD, lr=0.3), 1, 2, 1, loss_fn=F.mse_loss
    )

    def run(seed):
        torch.manual_seed(seed)
        return p(linear(), train, TEST)["epoch_2"]["loss"]

    assert run(3) == run(3)
    assert len({run(s) for s in range(4)}) > 1  # batch size 1: the order matters
    unshuffled = build_personalize_fn(
        functools.partial(torch.optim.SGD, lr=0.3), 1, 2, 1, shuffle=False, loss_fn=F.mse_loss
    )
    w = numpy_sgd([0, 0], train.x, train.y, lr=0.3, batch_size=1, epochs=2)
    assert unshuffled(linear(), train, TEST)["epoch_2"]["loss"] == pytest.approx(
        mse(w, TEST.x, TEST.y), rel=1e-5
    )


def test_optimizer_state_is_fresh_at_every_call():
    p = build_personalize_fn(
        functools.partial(torch.optim.Adam, lr=0.1), 1, 3, 1, shuffle=False, loss_fn=F.mse_loss
    )
    first = p(linear(), TRAIN, TEST)
    second = p(linear(), TRAIN, TEST)  # a leaked Adam state would change these numbers
    assert first == second


def test_classification_fine_tuning_improves_a_separable_client():
    x = np.array([[1, 0], [0, 1], [2, 0], [0, 2]], np.float32)
    y = np.array([0, 1, 0, 1])
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # everything wrong
        model.bias.zero_()
    data = ClientDataset(x, y)
    assert evaluate_fn(model, data)["accuracy"] == 0.0
    p = build_personalize_fn(functools.partial(torch.optim.SGD, lr=1.0), 4, 20, 20, shuffle=False)
    m = p(model, data, data)
    assert m["epoch_20"]["accuracy"] == 1.0
    assert m["epoch_20"]["loss"] < math.log(2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"num_epochs": 0}, ValueError, "num_epochs"),
        ({"num_epochs_per_eval": 1.5}, ValueError, "num_epochs_per_eval"),
        ({"optimizer_fn": "sgd"}, TypeError, "optimizer_fn"),
        ({"loss_fn": None}, TypeError, "loss_fn"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {"optimizer_fn": SGD_HALF, "batch_size": 2, "num_epochs": 1, "num_epochs_per_eval": 1}
    with pytest.raises(error, match=match):
        build_personalize_fn(**{**args, **kwargs})


def test_batched_data_is_refused():
    p = build_personalize_fn(SGD_HALF, 2, 1, 1, loss_fn=F.mse_loss)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4, 1))
    )
    with pytest.raises(TypeError, match="DataLoader.*unbatched"):
        p(linear(), loader, TEST)
    batches = [(torch.zeros(2, 2), torch.zeros(2, 1))] * 3
    with pytest.raises(TypeError, match="list of .x, y. batches"):
        p(linear(), TRAIN, batches)
    with pytest.raises(ValueError, match="3 feature rows but 2 labels"):
        p(linear(), (np.zeros((3, 2), np.float32), np.zeros((2, 1), np.float32)), TEST)
