"""Strategies as classes: fields are the keys, the instance is the builder, the engine reads
its settings; and the new kind ``bias_only`` (one file plus one registry line) against its
closed form.

Closed form for ``bias_only``: y = w . x + b with the mean squared error and full-batch
SGD at rate eta, only b training. With r_k = mean(w . x - y) + b_k the mean residual,
b_{k+1} = b_k - 2 eta r_k, so r_k = (1 - 2 eta)^k r_0 and b_k = b_0 - r_0 (1 - (1 - 2
eta)^k); the loss is mean(e^2) + r_k^2 with e the residuals minus their mean.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.data import ClientDataset
from fedp13n.engine import strategy_from_builder
from fedp13n.experiments.config import ExperimentConfig
from fedp13n.personalization import build_personalize_fn
from fedp13n.personalization.registry import (
    build_strategy,
    register_strategy,
    strategy_parameters,
    unregister_strategy,
)
from fedp13n.personalization.strategies import (
    AdamRecommended,
    BiasOnly,
    FineTune,
    HeadOnly,
    Proximal,
)

X = np.array([[1.0, 2.0], [0.5, -1.0], [-2.0, 0.0], [3.0, 1.0]], np.float32)
Y = np.array([[1.0], [-0.5], [2.0], [0.25]], np.float32)


def linear() -> nn.Linear:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0]]))
        model.bias.fill_(0.2)
    return model


@pytest.mark.parametrize("eta, epochs", [(0.1, 3), (0.3, 2)])
def test_bias_only_is_sgd_on_the_bias_alone_in_closed_form(eta, epochs):
    model = linear()
    w0 = model.weight.detach().clone()
    data = ClientDataset(X, Y)
    strategy = BiasOnly(
        learning_rate=eta, batch_size=len(X), epochs=epochs, shuffle=False, loss_fn=F.mse_loss
    )
    out = strategy()(model, data, data)

    assert torch.equal(model.weight, w0)  # the weights are bit-for-bit the global ones
    wx = X.astype(np.float64) @ np.array([0.5, -1.0])
    resid = wx - Y[:, 0].astype(np.float64)
    r0 = resid.mean() + 0.2
    spread = np.mean((resid - resid.mean()) ** 2)
    for k in range(1, epochs + 1):
        r_k = (1 - 2 * eta) ** k * r0
        assert out[f"epoch_{k}"]["loss"] == pytest.approx(spread + r_k**2, abs=1e-6)
    expected_b = 0.2 - r0 * (1 - (1 - 2 * eta) ** epochs)
    assert model.bias.item() == pytest.approx(expected_b, abs=1e-6)
    assert out["num_train_examples"] == epochs * len(X)


def test_bias_only_trains_every_bias_and_no_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = np.random.default_rng(0)
    data = ClientDataset(rng.normal(size=(10, 4)).astype(np.float32), rng.integers(0, 3, 10))
    torch.manual_seed(1)
    build_strategy("bias_only", learning_rate=0.5, batch_size=5, epochs=2)()(model, data, data)
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == n.endswith("bias"), n
    # ... and on a model without a bias, a one-line error saying so
    with pytest.raises(ValueError, match="Linear has no bias parameter, so bias_only"):
        BiasOnly()()(nn.Linear(4, 3, bias=False), data, data)


def test_bias_only_from_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'dataset = "synthetic"\n[[strategies]]\nname = "bitfit"\nkind = "bias_only"\n'
        "learning_rate = 0.1\nepochs = 2\n"
    )
    config = ExperimentConfig.from_toml(path)
    config.validate()
    (s,) = config.strategies
    builder = config.strategy_builder(s)
    assert builder == BiasOnly(learning_rate=0.1, epochs=2, batch_size=config.p13n_batch_size)
    path.write_text(path.read_text() + "head = 'fc2'\n")
    with pytest.raises(ValueError, match=r"'bias_only' has no parameter\(s\) \['head'\]"):
        ExperimentConfig.from_toml(path).validate()


# -- the classes ----------------------------------------------------------------------------------
def test_the_fields_are_the_keys_and_code_only_fields_are_not():
    shared = ["optimizer", "learning_rate", "momentum", "batch_size", "epochs"]
    shared += ["epochs_per_eval", "shuffle"]
    assert strategy_parameters("finetune") == shared
    assert strategy_parameters("bias_only") == shared
    assert strategy_parameters("proximal") == ["lam", *shared]
    assert strategy_parameters("early_stopping") == [
        "holdout_fraction", "monitor", "include_epoch_0", *shared
    ]  # fmt: skip
    assert {f.name for f in dataclasses.fields(FineTune)} - set(shared) == {
        "optimizer_fn", "loss_fn", "eval_batch_size"
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['loss_fn'\]"):
        build_strategy("finetune", loss_fn=F.mse_loss)
    assert AdamRecommended().build_optimizer_fn().keywords["lr"] == 5e-4


def test_a_strategy_is_a_frozen_picklable_builder():
    strategy = Proximal(lam=1)
    assert strategy.lam == 1.0 and isinstance(strategy.lam, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        strategy.lam = 2.0  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(strategy))
    assert again == strategy and again() == again.personalize
    assert HeadOnly(head=["0", "2"]).head == ("0", "2")


def test_optimizer_fn_replaces_the_named_optimizer():
    sgd = functools.partial(torch.optim.SGD, lr=0.3)
    assert FineTune(optimizer_fn=sgd).build_optimizer_fn() is sgd
    with pytest.raises(ValueError, match=r"optimizer_fn replaces \['learning_rate'\]"):
        FineTune(optimizer_fn=sgd, learning_rate=0.1)
    # build_personalize_fn (TFF's name) returns a FineTune's strategy with these settings
    built = build_personalize_fn(sgd, 4, 2, 1, shuffle=False)
    assert built.__self__ == FineTune(
        optimizer_fn=sgd, batch_size=4, epochs=2, epochs_per_eval=1, shuffle=False
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoisyFineTune(FineTune):
    """A user's subclass that changes the training: the engine must not batch it."""

    def hooks(self, model):
        return dict(trainable=[n for n, _ in model.named_parameters()])


def test_the_engine_batches_plain_fine_tuning_only():
    sgd = functools.partial(torch.optim.SGD, lr=0.2)
    batchable = {
        "finetune": build_strategy("finetune", batch_size=4, epochs=2),
        "adam_recommended": build_strategy("adam_recommended"),
        "tff": functools.partial(build_personalize_fn, sgd, 4, 2, 1),
    }
    for name, builder in batchable.items():
        spec, why = strategy_from_builder(name, builder)
        assert spec is not None, why
    spec, _ = strategy_from_builder("finetune", batchable["finetune"])
    assert (spec.optimizer.kind, spec.optimizer.lr, spec.batch_size, spec.num_epochs) == (
        "sgd", 0.02, 4, 2
    )  # fmt: skip
    register_strategy("noisy", NoisyFineTune)
    try:
        per_client = {
            kind: build_strategy(kind, **({"lam": 0.1} if kind == "proximal" else {}))
            for kind in ("head_only", "bias_only", "proximal", "interpolation", "noisy")
        }
        per_client["early_stopping"] = build_strategy("early_stopping")
        for name, builder in per_client.items():
            spec, why = strategy_from_builder(name, builder)
            assert spec is None and "is not TFF's fine-tuning" in why, name
    finally:
        unregister_strategy("noisy")


def test_tff_style_strategy_builders_pickle_by_their_names():
    """The four ``build_<strategy>_personalize_fn`` made by one factory are found again
    under their own module and name (what pickle, and a worker process, looks up)."""
    import pickle

    from fedp13n.personalization import strategies

    for name in ("interpolation", "early_stopping", "proximal", "head_only"):
        builder = getattr(strategies, f"build_{name}_personalize_fn")
        assert builder.__name__ == f"build_{name}_personalize_fn"
        assert pickle.loads(pickle.dumps(builder)) is builder
