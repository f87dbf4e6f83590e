"""The strategy registry, and every strategy run through build_personalization_eval."""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Mapping

import cloudpickle
import numpy as np
import pytest
import torch
from torch import nn

from fedp13n import build_personalization_eval
from fedp13n.data import ClientDataset
from fedp13n.personalization import build_personalize_fn, evaluate_fn
from fedp13n.personalization import registry as reg
from fedp13n.personalization.registry import (
    build_strategy,
    make_optimizer_fn,
    register_strategy,
    resolve_factory,
    strategy_kinds,
    unregister_strategy,
)
from fedp13n.personalization.strategies import FineTune

#: One configuration per built-in kind (small, so a run takes milliseconds).
KINDS = {
    "finetune": {"optimizer": "adam", "batch_size": 4, "epochs": 2},
    "head_only": {"batch_size": 4, "epochs": 2, "learning_rate": 0.1},
    "proximal": {"lam": 1.0, "batch_size": 4, "epochs": 2},
    "interpolation": {"batch_size": 4, "epochs": 2, "alphas": [0.0, 0.5, 1.0]},
    "early_stopping": {"batch_size": 4, "epochs": 2, "monitor": "accuracy"},
    "adam_recommended": {"batch_size": 4, "epochs": 2},
}


def model_fn() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def mlp_fn() -> nn.Module:
    """No batch norm: the client with one train example trains on a batch of one."""
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 3))


def data(n: int, seed: int) -> ClientDataset:
    rng = np.random.default_rng(seed)
    return ClientDataset(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n))


def run(personalize_fn, seed: int = 3):
    torch.manual_seed(0)
    model = model_fn()
    torch.manual_seed(seed)
    return personalize_fn(model, data(14, 1), data(6, 2))


def test_builtin_kinds():
    assert strategy_kinds()[:6] == list(KINDS)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_builds_a_picklable_builder(kind):
    builder = build_strategy(kind, **KINDS[kind])
    assert isinstance(builder, reg.resolve_factory(kind)) and isinstance(builder, FineTune)
    expected = run(builder())
    assert "epoch_1" in expected and "epoch_2" in expected and "num_train_examples" in expected
    again = cloudpickle.loads(cloudpickle.dumps(builder))
    assert run(again()) == expected


def test_finetune_kind_is_the_stock_strategy_with_tff_rates():
    adam = functools.partial(torch.optim.Adam, lr=0.002)
    expected = run(build_personalize_fn(adam, 4, 2, 1))
    assert run(build_strategy("finetune", **KINDS["finetune"])()) == expected
    sgd = functools.partial(torch.optim.SGD, lr=0.02, momentum=0.0)
    assert run(build_strategy("finetune")()) == run(build_personalize_fn(sgd, 20, 3, 1))


def test_make_optimizer_fn():
    p = [nn.Parameter(torch.zeros(1))]
    opt = make_optimizer_fn("sgd", 0.1, momentum=0.9)(p)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert make_optimizer_fn("adam")(p).defaults["lr"] == 0.002
    with pytest.raises(ValueError, match="applies to sgd only"):
        make_optimizer_fn("adam", 0.001, momentum=0.9)
    with pytest.raises(ValueError, match=r"optimizer must be one of \['sgd', 'adam'\]"):
        make_optimizer_fn("rmsprop")


@pytest.mark.parametrize(
    "kind, params, error, match",
    [
        ("nope", {}, ValueError, r"unknown strategy kind 'nope'; known kinds: \['finetune'"),
        ("finetune", {"lr": 0.1}, ValueError, r"has no parameter\(s\) \['lr'\]; valid: \["),
        ("proximal", {}, ValueError, r"'proximal' needs parameter\(s\) \['lam'\]"),
        ("finetune", {"batch_size": 0}, ValueError, "'finetune': batch_size must be a positive"),
        ("finetune", {"optimizer": "sgdd"}, ValueError, "optimizer must be one of"),
        ("head_only", {"head": 3}, TypeError, "'head_only': head must be a name"),
        ("no_such_module_xyz:f", {}, ValueError, "cannot import module 'no_such_module_xyz'"),
        ("a:b:c", {}, ValueError, "not of the form 'package.module:function'"),
        (":f", {}, ValueError, "not of the form"),
        (3, {}, TypeError, "strategy kind must be a string"),
    ],
)
def test_bad_kinds_and_params_are_one_line_errors(kind, params, error, match):
    with pytest.raises(error, match=match) as e:
        build_strategy(kind, **params)
    assert "\n" not in str(e.value)


USER_MODULE = """
import functools
import torch
from fedp13n.personalization import build_personalize_fn

NOT_CALLABLE = 3

def build(lr=0.1, epochs=1):
    return build_personalize_fn(functools.partial(torch.optim.SGD, lr=lr), 4, epochs, 1)

def returns_a_number(**kwargs):
    return 42

class Namespace:
    @staticmethod
    def build(epochs=1):
        return build(epochs=epochs)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_p13n_strategies.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_p13n_strategies"


def test_module_function_kinds(user_module):
    builder = build_strategy(f"{user_module}:build", lr=0.05, epochs=2)
    sgd = functools.partial(torch.optim.SGD, lr=0.05)
    assert run(builder()) == run(build_personalize_fn(sgd, 4, 2, 1))
    assert run(cloudpickle.loads(cloudpickle.dumps(builder))()) == run(builder())
    assert "epoch_3" in run(build_strategy(f"{user_module}:Namespace.build", epochs=3)())
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['batch'\]; valid: \['lr'"):
        build_strategy(f"{user_module}:build", batch=3)


@pytest.mark.parametrize(
    "attr, error, match",
    [
        ("missing", ValueError, "has no attribute 'missing'; it has"),
        ("NOT_CALLABLE", TypeError, "'NOT_CALLABLE' is a int, not callable"),
        ("returns_a_number", TypeError, "the factory returned a int"),
    ],
)
def test_module_function_errors(user_module, attr, error, match):
    with pytest.raises(error, match=match) as e:
        build_strategy(f"{user_module}:{attr}")
    assert "\n" not in str(e.value)


def test_register_strategy():
    def mine(epochs=1):
        return build_personalize_fn(functools.partial(torch.optim.SGD, lr=0.1), 4, epochs, 1)

    assert register_strategy("mine", mine) is mine
    try:
        assert resolve_factory("mine") is mine
        assert "mine" in strategy_kinds()
        assert "epoch_2" in run(build_strategy("mine", epochs=2)())
        with pytest.raises(ValueError, match="already registered; pass replace=True"):
            register_strategy("mine", mine)
        register_strategy("mine", mine, replace=True)
    finally:
        unregister_strategy("mine")
    assert "mine" not in strategy_kinds()
    with pytest.raises(ValueError, match="without ':'"):
        register_strategy("a:b", mine)
    with pytest.raises(TypeError, match="must be callable"):
        register_strategy("x", 3)
    assert reg.resolve_factory("finetune") is FineTune


# -- through build_personalization_eval -----------------------------------------------------------
def test_every_strategy_runs_through_build_personalization_eval():
    """Clients of 15, 6 and 1 train examples (the last one too small to hold out): the
    per-client trees line up, every leaf is a list with one value per client."""
    torch.manual_seed(0)
    weights = mlp_fn().state_dict()
    sizes = {"a": 15, "b": 6, "c": 1}
    inputs = [
        {"client_id": cid, "train_data": data(n, i), "test_data": data(5, 10 + i)}
        for i, (cid, n) in enumerate(sizes.items())
    ]
    p13n_eval = build_personalization_eval(
        mlp_fn,
        {kind: build_strategy(kind, **params) for kind, params in KINDS.items()},
        evaluate_fn,
        seed=1,
    )
    result = p13n_eval(weights, inputs)
    assert list(result.client_ids) == ["a", "b", "c"]
    assert list(result) == ["baseline_metrics", *KINDS]

    def leaves(tree):
        for v in tree.values():
            yield from leaves(v) if isinstance(v, Mapping) else [v]

    for kind in KINDS:
        assert all(isinstance(v, list) and len(v) == 3 for v in leaves(result[kind])), kind
        assert result[kind]["epoch_2"]["num_test_examples"] == [5, 5, 5]
        # only epoch_<k> keys hold a top-level metrics mapping (what per-client tables read)
        rows = [k for k, v in result[kind].items() if isinstance(v, Mapping) and "accuracy" in v]
        assert rows == ["epoch_1", "epoch_2"], kind
    for kind in ("interpolation", "early_stopping"):
        assert result[kind]["num_holdout_examples"] == [3, 1, 0]
        assert result[kind]["num_train_examples"] == [24, 10, 2]
    assert result["early_stopping"]["best_epoch"][2] == 2  # fallback: all epochs
    assert result["interpolation"]["epoch_2"]["alpha"][2] == 1.0  # fallback: largest alpha
    assert result["head_only"]["num_train_examples"] == [30, 12, 2]
    # the same seed gives the same numbers
    assert p13n_eval(weights, inputs) == result
