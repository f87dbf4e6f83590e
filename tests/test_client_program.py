"""The client program (fedp13n.client): its one training loop against a plain hand-written
loop, its evaluation, and a new strategy built as a few lines on it."""

from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.client import EVAL_BATCH_SIZE, LocalTraining, evaluate
from fedp13n.data import ClientDataset
from fedp13n.personalization import build_personalization_eval, evaluate_fn
from fedp13n.personalization.p13n_utils import fine_tune

RNG = np.random.default_rng(0)
X = RNG.normal(size=(5, 3)).astype(np.float32)
Y = RNG.normal(size=(5, 2)).astype(np.float32)
W0 = RNG.normal(size=(2, 3)).astype(np.float32)
B0 = np.array([0.5, -0.25], np.float32)


def linear() -> nn.Linear:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W0))
        model.bias.copy_(torch.from_numpy(B0))
    return model


def hand_loop(lr, lam, epochs, batch_size, seed):
    """Plain numpy SGD on mean((W x + b - y)^2) + lam / 2 ||W - W0||^2, W only (b fixed),
    one permutation per epoch from default_rng(seed): (W, per-batch loss * n)."""
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    gen = np.random.default_rng(seed)
    sums = []
    for _ in range(epochs):
        order = gen.permutation(len(X))
        for s in range(0, len(X), batch_size):
            idx = order[s : s + batch_size]
            x, y = X[idx].astype(np.float64), Y[idx].astype(np.float64)
            r = x @ w.T + b - y
            sums.append(np.mean(r**2) * len(idx))
            grad = 2 * r.T @ x / r.size + lam * (w - W0)
            w = w - lr * grad
    return w, sums


def test_the_loop_equals_a_hand_written_loop_with_a_penalty_and_only_the_weight_training():
    model = linear()
    anchor = model.weight.detach().clone()
    lam, calls, modes = 0.3, [], []
    program = LocalTraining(
        functools.partial(torch.optim.SGD, lr=0.1),
        F.mse_loss,
        batch_size=2,
        epochs=2,
        shuffle=True,
        trainable=["weight"],
        penalty=lambda: lam / 2 * ((model.weight - anchor) ** 2).sum(),
        after_train_mode=lambda: modes.append(model.training),
        on_epoch_end=calls.append,
        metric_fn=lambda out, y: (out - y).abs().mean(),
    )
    model.eval()
    stats = program.run(model, ClientDataset(X, Y), np.random.default_rng(7))
    w, sums = hand_loop(0.1, lam, 2, 2, 7)
    np.testing.assert_allclose(model.weight.detach().numpy(), w, rtol=1e-5, atol=1e-6)
    assert np.array_equal(model.bias.detach().numpy(), B0)  # not trained: bit-identical
    assert model.bias.requires_grad  # restored after the run
    assert calls == [1, 2] and modes == [True, True]  # train mode before every epoch
    assert stats.num_trained == 10  # 2 epochs x 5 examples (batches 2, 2, 1)
    assert stats.loss_sum == pytest.approx(sum(sums), rel=1e-5)  # the loss without penalty


def test_without_hooks_the_whole_plan_at_once_is_the_same_training():
    """TFF's stream with epochs = 1 and no shuffle is the per-epoch plan of one epoch."""
    a, b = linear(), linear()
    sgd = functools.partial(torch.optim.SGD, lr=0.05)
    LocalTraining(sgd, F.mse_loss, 2).run(a, ClientDataset(X, Y))
    LocalTraining(sgd, F.mse_loss, 2, pipeline="tff").run(b, ClientDataset(X, Y))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    w, _ = hand_loop_no_shuffle(0.05)
    np.testing.assert_allclose(a.weight.detach().numpy(), w, rtol=1e-5, atol=1e-6)


def hand_loop_no_shuffle(lr):
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    for s in range(0, len(X), 2):
        x, y = X[s : s + 2].astype(np.float64), Y[s : s + 2].astype(np.float64)
        r = x @ w.T + b - y
        w, b = w - lr * 2 * r.T @ x / r.size, b - lr * 2 * r.sum(0) / r.size
    return w, b


def test_epoch_callbacks_need_the_per_epoch_plan():
    program = LocalTraining(
        functools.partial(torch.optim.SGD, lr=0.1),
        F.mse_loss,
        2,
        pipeline="tff",
        on_epoch_end=print,
    )
    with pytest.raises(ValueError, match="per-epoch plan"):
        program.run(linear(), ClientDataset(X, Y))


def test_evaluate_reports_tff_names_and_nan_without_examples():
    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    x = np.array([[2, 0], [0, 2], [1, 0]], np.float32)
    y = np.array([0, 1, 2])
    m = evaluate(model, ClientDataset(x, y), F.cross_entropy, batch_size=2)
    logits = x.astype(np.float64) @ np.array([[1, 0], [0, 1], [0, 0]], np.float64).T
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(3), y]
    assert list(m) == [
        "num_test_examples",
        "loss",
        "accuracy",
        "sparse_categorical_accuracy",
        "num_examples",
        "num_batches",
    ]
    assert m["loss"] == pytest.approx(ce.mean(), rel=1e-6)
    assert m["accuracy"] == m["sparse_categorical_accuracy"] == pytest.approx(2 / 3)
    assert (m["num_test_examples"], m["num_examples"], m["num_batches"]) == (3, 3, 2)
    empty = evaluate(model, ClientDataset(x[:0], y[:0]), F.cross_entropy)
    assert np.isnan(empty["loss"]) and np.isnan(empty["accuracy"])
    assert evaluate_fn(model, (x, y), batch_size=2) == m  # the public name runs it
    assert EVAL_BATCH_SIZE == 1000


# -- a new strategy is a few lines on the program: fine-tune only the biases -------------------
def build_bias_only_personalize_fn(optimizer_fn, batch_size, num_epochs, loss_fn=F.mse_loss):
    def personalize_fn(model, train_data, test_data, context=None):
        metrics = OrderedDict()
        biases = [n for n, _ in model.named_parameters() if n.endswith("bias")]
        program = LocalTraining(
            optimizer_fn, loss_fn, batch_size, epochs=num_epochs, shuffle=True, trainable=biases
        )

        def on_eval(epoch):
            metrics[f"epoch_{epoch}"] = evaluate_fn(model, test_data, loss_fn=loss_fn)

        metrics["num_train_examples"] = fine_tune(
            model, train_data, program, num_epochs_per_eval=1, on_eval=on_eval
        )
        return metrics

    return personalize_fn


def test_a_bias_only_strategy_fits_the_bias_by_hand_and_keeps_the_weights():
    """y = w.x + b, w = (0, 0) held fixed, MSE, full-batch SGD at lr 0.5 on labels 1, 2:
    the bias gradient is 2 (b - 1.5), so one step takes b from 0 to 1.5 and it stays there;
    the test example (label 3) then has loss (3 - 1.5)^2 = 2.25 (9 for the global model)."""

    def model_fn():
        return nn.Linear(2, 1)

    train = (np.array([[1, 0], [0, 1]], np.float32), np.array([[1], [2]], np.float32))
    test = (np.array([[1, 1]], np.float32), np.array([[3]], np.float32))
    strategy = functools.partial(
        build_bias_only_personalize_fn, functools.partial(torch.optim.SGD, lr=0.5), 2, 2
    )
    evaluate_mse = functools.partial(evaluate_fn, loss_fn=F.mse_loss)
    p13n_eval = build_personalization_eval(model_fn, {"bias_only": strategy}, evaluate_mse, seed=0)
    zero = {"weight": torch.zeros(1, 2), "bias": torch.zeros(1)}
    result = p13n_eval(zero, [{"train_data": train, "test_data": test}])
    assert result["baseline_metrics"]["loss"] == [9.0]
    assert result["bias_only"]["epoch_1"]["loss"] == [2.25]
    assert result["bias_only"]["epoch_2"]["loss"] == [2.25]
    assert result["bias_only"]["num_train_examples"] == [4]

    model = model_fn()
    model.load_state_dict(zero)
    strategy()(model, train, test)
    assert torch.equal(model.weight, torch.zeros(1, 2))  # bit-for-bit the global weight
    assert model.bias.item() == 1.5
