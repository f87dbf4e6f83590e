"""The personalization strategies against oracles worked out by hand or by the stock strategy.

The hand examples use y = w x with one feature, the mean squared error and full-batch
SGD, whose iterates have closed forms: from w0 = 0 on targets t with lr eta,
w_k = t (1 - (1 - 2 eta)^k); with Ditto's penalty lam, w_k = w* (1 - r^k) with
w* = 2 t / (2 + lam) and r = 1 - eta (2 + lam).
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
from fedp13n.models import emnist_conv_dropout, fedavg_cnn
from fedp13n.personalization import build_personalize_fn, evaluate_fn
from fedp13n.personalization.strategies import (
    build_early_stopping_personalize_fn,
    build_head_only_personalize_fn,
    build_interpolation_personalize_fn,
    build_proximal_personalize_fn,
    build_recommended_adam_personalize_fn,
    default_head,
    holdout_split,
    interpolate,
    num_holdout,
)

MSE = {"loss_fn": F.mse_loss}


def sgd(lr):
    return functools.partial(torch.optim.SGD, lr=lr)


def line(w: float = 0.0) -> nn.Linear:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w)
    return model


def ds(x, y) -> ClientDataset:
    return ClientDataset(np.asarray(x, np.float32), np.asarray(y, np.float32))


def ones(y) -> ClientDataset:
    """x = 1 for every target in ``y`` (1-D regression)."""
    y = np.asarray(y, np.float32).reshape(-1, 1)
    return ClientDataset(np.ones_like(y), y)


def net(seed: int = 0) -> nn.Module:
    """A small classifier with every kind of state: batch norm buffers and dropout."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)
    )


def cls_data(n: int, seed: int) -> ClientDataset:
    rng = np.random.default_rng(seed)
    return ClientDataset(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n))


TRAIN, TEST = cls_data(18, 1), cls_data(9, 2)


def run(strategy, model, train=TRAIN, test=TEST, seed=7):
    torch.manual_seed(seed)
    return strategy(model, train, test)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def oracle_split(n: int, fraction: float, seed: int):
    """The documented split: after torch.manual_seed(seed), one torch draw seeds a numpy
    Generator; the first round(fraction n) (>= 1, <= n - 1) of its permutation are held out."""
    torch.manual_seed(seed)
    g = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    perm = g.permutation(n)
    k = 0 if n < 2 else min(n - 1, max(1, math.floor(fraction * n + 0.5)))
    return np.sort(perm[k:]), np.sort(perm[:k])


# -- the shared loop ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build",
    [
        lambda: build_head_only_personalize_fn(sgd(0.1), 3, 3, 2, head=""),
        lambda: build_proximal_personalize_fn(sgd(0.1), 3, 3, 2, lam=0.0),
    ],
    ids=["head_only_whole_model", "proximal_lam_0"],
)
def test_whole_model_and_lam_0_are_the_stock_strategy_bit_for_bit(build):
    """Head = the whole model and lam = 0 train exactly like build_personalize_fn
    (shuffling, dropout, batch norm: same random draws, same steps, same metrics)."""
    stock_model, model = net(), net()
    expected = run(build_personalize_fn(sgd(0.1), 3, 3, 2), stock_model)
    got = run(build(), model)
    assert got == expected
    assert list(got) == ["epoch_2", "epoch_3", "num_train_examples"]
    assert same_state(model, stock_model)
    assert not same_state(model, net())  # it did train


# -- head-only ------------------------------------------------------------------------------------
def test_head_only_keeps_every_other_parameter_and_buffer_bit_identical():
    model, start = net(), net()
    assert default_head(model) == "4"
    run(build_head_only_personalize_fn(sgd(0.5), 4, 2, 1), model)
    after, before = model.state_dict(), start.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed == ["4.weight", "4.bias"]  # batch-norm statistics included in the rest
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_head_only_step_equals_a_hand_computed_sgd_step():
    """Body W (2x2), head v (1x2), one example, MSE: dL/dv = 2 (v.Wx - y) Wx."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    W = np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32)
    v = np.array([[0.3, -0.2]], np.float32)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(W))
        model[1].weight.copy_(torch.from_numpy(v))
    x, y, lr = np.array([1.0, 2.0]), 1.5, 0.1
    h = W.astype(np.float64) @ x
    pred = float((v.astype(np.float64) @ h)[0])
    expected_v = v - lr * 2.0 * (pred - y) * h
    strategy = build_head_only_personalize_fn(sgd(lr), 1, 1, 1, shuffle=False, **MSE)
    out = strategy(model, ds([x], [[y]]), ds([x], [[y]]))
    assert torch.equal(model[0].weight, torch.from_numpy(W))
    np.testing.assert_allclose(model[1].weight.detach().numpy(), expected_v, rtol=1e-6)
    new_pred = float((expected_v @ h)[0])
    assert out["epoch_1"]["loss"] == pytest.approx((new_pred - y) ** 2, rel=1e-5)
    assert out["num_train_examples"] == 1


def test_head_only_named_layers_and_default_head_of_the_emnist_model():
    assert default_head(emnist_conv_dropout()) == "fc2"
    assert default_head(fedavg_cnn()) == "fc2"
    assert default_head(nn.Linear(2, 1)) == ""  # the root owns the parameters
    model, start = net(), net()
    run(build_head_only_personalize_fn(sgd(0.5), 4, 1, 1, head=["0", "4.bias"]), model)
    after, before = model.state_dict(), start.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    # layer 0 trains; batch norm (outside the head) keeps its statistics and affine weights
    assert changed == {"0.weight", "0.bias", "4.bias"}


def test_head_only_on_the_emnist_model_trains_only_fc2():
    torch.manual_seed(0)
    model = emnist_conv_dropout(num_classes=10)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (6, 28, 28)).astype(np.uint8), np.arange(6)
    out = run(build_head_only_personalize_fn(sgd(0.1), 3, 1, 1), model, (x, y), (x, y))
    after = model.state_dict()
    assert [k for k in after if not torch.equal(after[k], start[k])] == ["fc2.weight", "fc2.bias"]
    assert out["num_train_examples"] == 6


def test_head_only_batch_norm_in_the_head_trains_normally():
    model, start = net(), net()
    run(build_head_only_personalize_fn(sgd(0.5), 4, 1, 1, head="1"), model)
    after, before = model.state_dict(), start.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    }


def test_head_only_unknown_layer_lists_the_valid_names():
    strategy = build_head_only_personalize_fn(sgd(0.1), 4, 1, 1, head="fc9")
    with pytest.raises(ValueError, match=r"'fc9' names no layer") as e:
        run(strategy, net())
    assert "'0', '1', '4'" in str(e.value) and "'4.weight'" in str(e.value)
    assert "\n" not in str(e.value)


# -- proximal -------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.0, 100.0])
def test_proximal_follows_the_closed_form_and_stays_near_the_global_weights(lam):
    eta, epochs, t = 0.005, 4, 1.0
    model = line(0.0)
    strategy = build_proximal_personalize_fn(sgd(eta), 1, epochs, 1, lam=lam, **MSE)
    out = run(strategy, model, ones([t]), ones([t]))
    w_star, r = 2 * t / (2 + lam), 1 - eta * (2 + lam)
    for k in range(1, epochs + 1):
        w_k = w_star * (1 - r**k)
        assert out[f"epoch_{k}"]["loss"] == pytest.approx((w_k - t) ** 2, rel=1e-5)
    w = float(model.weight.detach())
    assert w == pytest.approx(w_star * (1 - r**epochs), rel=1e-5)
    if lam:  # 0 < r < 1: the iterates approach w* monotonically, never beyond it
        assert 0 < w <= w_star == pytest.approx(2 / 102)
    else:
        assert w > 0.03  # plain fine-tuning moves much further


def test_proximal_large_lam_keeps_a_deep_model_near_the_global_weights():
    """On a network with batch norm and dropout the penalty keeps the squared distance to
    the global weights far below plain fine-tuning's (the closed form is the 1-D test)."""
    strategies = {
        lam: build_proximal_personalize_fn(sgd(0.1), 4, 3, 3, lam=lam) for lam in (0.0, 5.0)
    }
    dist = {}
    for lam, strategy in strategies.items():
        model = net()
        run(strategy, model)
        dist[lam] = sum(
            float(((p - q) ** 2).sum().detach())
            for p, q in zip(model.parameters(), net().parameters(), strict=True)
        )
    assert dist[5.0] < 0.25 * dist[0.0]


def test_proximal_rejects_a_negative_lam():
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        build_proximal_personalize_fn(sgd(0.1), 4, 1, 1, lam=-1.0)


# -- interpolation --------------------------------------------------------------------------------
def test_holdout_split_follows_the_documented_rule():
    assert [num_holdout(n, 0.2) for n in (0, 1, 2, 3, 7, 8, 10)] == [0, 0, 1, 1, 1, 2, 2]
    assert num_holdout(4, 0.9) == 3
    data = ds(np.arange(10).reshape(-1, 1), np.arange(10))
    rest_idx, held_idx = oracle_split(10, 0.3, seed=3)
    torch.manual_seed(3)
    g = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    rest, held = holdout_split(data, 0.3, g)
    np.testing.assert_array_equal(rest.y, rest_idx)
    np.testing.assert_array_equal(held.y, held_idx)
    assert len(held) == 3


def test_interpolation_alpha_1_is_the_stock_strategy_on_the_rest_of_the_train_data():
    model, stock_model = net(), net()
    strategy = build_interpolation_personalize_fn(sgd(0.1), 3, 3, 1, alphas=(1.0,))
    out = run(strategy, model, seed=11)
    rest_idx, held_idx = oracle_split(len(TRAIN), 0.2, seed=11)  # leaves torch where it is
    rest = ClientDataset(TRAIN.x[rest_idx], TRAIN.y[rest_idx])
    expected = build_personalize_fn(sgd(0.1), 3, 3, 1)(stock_model, rest, TEST)
    assert same_state(model, stock_model)  # the model holds the fine-tuned weights
    for k in (1, 2, 3):
        epoch = out[f"epoch_{k}"]
        assert epoch.pop("alpha") == 1.0
        assert epoch == expected[f"epoch_{k}"]
    assert out["num_train_examples"] == expected["num_train_examples"] == 3 * 14
    assert out["num_holdout_examples"] == len(held_idx) == 4


def test_interpolation_alpha_0_is_the_global_model():
    global_metrics = evaluate_fn(net(), TEST)
    out = run(build_interpolation_personalize_fn(sgd(0.1), 3, 2, 1, alphas=(0.0,)), net())
    for k in (1, 2):
        assert out[f"epoch_{k}"].pop("alpha") == 0.0
        assert out[f"epoch_{k}"] == global_metrics


def test_interpolate_mixes_floating_state_and_keeps_the_counters():
    a, b = net(0).state_dict(), net(1).state_dict()
    mix = interpolate(a, b, 0.25)
    assert torch.allclose(mix["0.weight"], 0.25 * a["0.weight"] + 0.75 * b["0.weight"])
    assert torch.equal(mix["1.num_batches_tracked"], a["1.num_batches_tracked"])
    assert all(torch.equal(interpolate(a, b, 1.0)[k], a[k]) for k in a)
    assert all(torch.equal(interpolate(a, b, 0.0)[k], b[k]) for k in a)


def test_interpolation_chooses_the_alpha_of_a_hand_built_case():
    """Rest targets 2, held-out targets 1: one full-batch step at lr 0.5 lands on w = 2
    (and stays), the mix 2 alpha fits the held-out 1 best at alpha = 0.5."""
    n, seed = 10, 5
    rest_idx, held_idx = oracle_split(n, 0.2, seed)
    y = np.full(n, 2.0)
    y[held_idx] = 1.0
    strategy = build_interpolation_personalize_fn(
        sgd(0.5), n, 2, 1, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), **MSE
    )
    model = line(0.0)
    out = run(strategy, model, ones(y), ones([1.5]), seed=seed)
    assert float(model.weight.detach()) == 2.0
    for k in (1, 2):
        assert out[f"epoch_{k}"]["alpha"] == 0.5
        assert out[f"epoch_{k}"]["loss"] == pytest.approx(0.25)  # (1 - 1.5)^2
    assert out["num_holdout_examples"] == 2 and out["num_train_examples"] == 16


def test_interpolation_monitor_accuracy_ties_go_to_the_first_alpha():
    out = run(
        build_interpolation_personalize_fn(
            sgd(1e-9), 3, 1, 1, alphas=(0.5, 0.0, 1.0), monitor="accuracy"
        ),
        net(),
    )
    assert out["epoch_1"]["alpha"] == 0.5  # a tiny step changes no prediction: all tie


def test_interpolation_with_one_train_example_fine_tunes_on_it_with_the_largest_alpha():
    train, test = ones([2.0]), ones([1.0])
    out = run(build_interpolation_personalize_fn(sgd(0.25), 1, 2, 1, **MSE), line(), train, test)
    expected = run(build_personalize_fn(sgd(0.25), 1, 2, 1, **MSE), line(), train, test)
    assert out["num_holdout_examples"] == 0
    for k in (1, 2):
        assert out[f"epoch_{k}"].pop("alpha") == 1.0
        assert out[f"epoch_{k}"] == expected[f"epoch_{k}"]
    grid = build_interpolation_personalize_fn(sgd(0.25), 1, 1, 1, alphas=(0.0, 0.3), **MSE)
    assert run(grid, line(), train, test)["epoch_1"]["alpha"] == 0.3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alphas": ()}, "alphas must be a non-empty"),
        ({"alphas": "0.5"}, "alphas must be a non-empty"),
        ({"alphas": (0.5, 1.5)}, r"every alpha must be a number in \[0, 1\]"),
        ({"holdout_fraction": 0.0}, "holdout_fraction must be in"),
        ({"holdout_fraction": 1.0}, "holdout_fraction must be a number"),
        ({"monitor": "f1"}, "monitor must be one of"),
    ],
)
def test_interpolation_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_interpolation_personalize_fn(sgd(0.1), 3, 1, 1, **kwargs)


# -- early stopping -------------------------------------------------------------------------------
def early_case(held_target: float, **kwargs):
    """Rest targets 2, full batch, lr 0.25: w_k = 2 (1 - 2^-k) = 0, 1, 1.5, 1.75, 1.875."""
    n, seed = 10, 8
    _, held_idx = oracle_split(n, 0.2, seed)
    y = np.full(n, 2.0)
    y[held_idx] = held_target
    strategy = build_early_stopping_personalize_fn(sgd(0.25), n, 4, 1, **MSE, **kwargs)
    return run(strategy, line(0.0), ones(y), ones([1.8]), seed=seed)


def test_early_stopping_picks_the_epoch_of_a_hand_built_validation_curve():
    out = early_case(1.5)
    w = [2 * (1 - 0.5**k) for k in range(5)]
    for k in range(5):
        assert out["validation"][f"epoch_{k}"]["loss"] == pytest.approx((w[k] - 1.5) ** 2)
    for k in range(1, 5):
        assert out[f"epoch_{k}"]["loss"] == pytest.approx((w[k] - 1.8) ** 2, rel=1e-5)
    assert out["best_epoch"] == 2
    assert out["selected"]["test"] == out["epoch_2"]
    assert out["selected"]["validation"] == out["validation"]["epoch_2"]
    assert out["num_train_examples"] == 4 * 8 and out["num_holdout_examples"] == 2
    assert list(out) == [
        "epoch_1",
        "epoch_2",
        "epoch_3",
        "epoch_4",
        "validation",
        "best_epoch",
        "selected",
        "num_train_examples",
        "num_holdout_examples",
    ]


def test_early_stopping_can_keep_the_global_model():
    out = early_case(-1.0)  # validation loss grows from the start
    assert out["best_epoch"] == 0
    assert out["selected"]["test"] == evaluate_fn(line(0.0), ones([1.8]), loss_fn=F.mse_loss)
    assert early_case(-1.0, include_epoch_0=False)["best_epoch"] == 1
    assert early_case(5.0)["best_epoch"] == 4  # still improving at the last epoch


def test_early_stopping_candidates_are_the_evaluation_epochs():
    n, seed = 10, 8
    _, held_idx = oracle_split(n, 0.2, seed)
    y = np.full(n, 2.0)
    y[held_idx] = 1.5  # best would be epoch 2; evaluated are 0, 3, 5 -> 1.75 beats 1.9375
    strategy = build_early_stopping_personalize_fn(sgd(0.25), n, 5, 3, **MSE)
    out = run(strategy, line(0.0), ones(y), ones([1.8]), seed=seed)
    assert list(out["validation"]) == ["epoch_0", "epoch_3", "epoch_5"]
    assert out["best_epoch"] == 3


def test_early_stopping_with_one_train_example_trains_all_epochs():
    out = run(
        build_early_stopping_personalize_fn(sgd(0.25), 1, 3, 1, **MSE),
        line(),
        ones([2.0]),
        ones([1.0]),
    )
    expected = run(
        build_personalize_fn(sgd(0.25), 1, 3, 1, **MSE), line(), ones([2.0]), ones([1.0])
    )
    assert out["best_epoch"] == 3 and out["num_holdout_examples"] == 0
    assert out["selected"]["test"] == expected["epoch_3"]
    assert math.isnan(out["validation"]["epoch_1"]["loss"])


def test_early_stopping_monitor_accuracy_needs_classification():
    strategy = build_early_stopping_personalize_fn(sgd(0.1), 1, 1, 1, monitor="accuracy", **MSE)
    with pytest.raises(ValueError, match="use monitor='loss' for a regression model"):
        run(strategy, line(), ones([1.0, 2.0, 3.0]), ones([1.0]))
    out = run(build_early_stopping_personalize_fn(sgd(0.1), 3, 2, 1, monitor="accuracy"), net())
    accs = [out["validation"][f"epoch_{k}"]["accuracy"] for k in range(3)]
    assert out["best_epoch"] == accs.index(max(accs))


# -- the Adam preset ------------------------------------------------------------------------------
def test_recommended_adam_is_the_stock_strategy_with_adam_at_5e_4():
    model, stock_model = net(), net()
    got = run(build_recommended_adam_personalize_fn(batch_size=4), model)
    adam = functools.partial(torch.optim.Adam, lr=5e-4)
    expected = run(build_personalize_fn(adam, 4, 3, 1), stock_model)
    assert got == expected and list(got)[:3] == ["epoch_1", "epoch_2", "epoch_3"]
    assert same_state(model, stock_model)
