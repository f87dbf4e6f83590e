"""The multi-client engine on sequence labels (Shakespeare's layout: ids ``(n, S)``, a
next-id target per position, padding id 0 left out of the accuracy): a FedAvg round and a
personalization evaluation equal the per-client path within float rounding."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedp13n.algorithms.client_update import ClientTask, ClientWork
from fedp13n.data.client_data import ClientDataset
from fedp13n.engine import MultiClientEngine, can_batch, strategy_from_builder
from fedp13n.execution.base import LocalRef
from fedp13n.models.objectives import engine_ignore_ids
from fedp13n.models.shakespeare import KerasLSTM, create_recurrent_model
from fedp13n.models.spec import InputSpec
from fedp13n.personalization import (
    build_evaluate_fn,
    build_personalization_eval,
    build_personalize_fn,
)
from fedp13n.tasks import get_task, task_loss

V, S = 7, 6  # vocabulary (id 0 padding) and sequence length
TOL = 1e-5
LOSS = task_loss(get_task("shakespeare"))  # F.cross_entropy, accuracy without pad targets


class TinyCharRNN(nn.Module):
    """TFF's Shakespeare model in miniature: embedding, one Keras LSTM (padding masked),
    dense over the vocabulary; ids (B, S) -> logits (B, V, S)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(V, 3)
        self.lstm = KerasLSTM(3, 5)
        self.dense = nn.Linear(5, V)
        self.input_spec = InputSpec(x_shape=(S,), y_shape=(S,), x_dtype=torch.int32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.lstm(self.embedding(x), x != 0)).transpose(1, 2)


def clients(sizes, seed=0):
    """Shakespeare-shaped clients: int32 ids, every other row padded after some characters
    (its targets padded from there), as TFF's last sequence of a snippet."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        x = rng.integers(1, V, size=(n, S)).astype(np.int32)
        y = np.concatenate([x[:, 1:], rng.integers(1, V, size=(n, 1))], 1).astype(np.int32)
        for i in range(0, n, 2):
            keep = int(rng.integers(1, S))
            x[i, keep:] = 0
            y[i, keep - 1 :] = 0
        out.append(ClientDataset(x, y))
    return out


def weights_of(model_fn, seed=1):
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in model_fn().state_dict().items()}


def test_the_task_loss_and_the_models_batch():
    assert engine_ignore_ids(LOSS) == (0,)
    opt = functools.partial(torch.optim.SGD, lr=0.1)
    assert can_batch(TinyCharRNN, opt) == (True, "")
    full = functools.partial(create_recurrent_model, 90)  # TFF's model: refused before
    assert can_batch(full, opt) == (True, "")


SIZES = [5, 0, 3, 8]  # unequal, one empty


def test_fedavg_round_equals_client_work():
    datasets = clients(SIZES)
    weights = weights_of(TinyCharRNN)
    opt = functools.partial(torch.optim.SGD, lr=1.0)
    work = ClientWork(TinyCharRNN, opt, LOSS, LOSS.accuracy, 2, 2, True, seed=3,
                      pipeline="epochs")  # fmt: skip
    ref = [work(ClientTask(LocalRef(weights), d, i, 4)) for i, d in enumerate(datasets)]
    got = MultiClientEngine(TinyCharRNN, max_clients=3).fedavg_clients(
        weights, datasets, list(range(len(datasets))), optimizer=opt, epochs=2,
        batch_size=2, shuffle=True, seed=3, round_num=4, pipeline="epochs",
        ignore_ids=(0,),
    )  # fmt: skip
    worst = 0.0
    for r, g, n in zip(ref, got, SIZES, strict=True):
        assert (g.num_trained, g.num_examples) == (r.num_trained, r.num_examples)
        if not n:
            continue
        moved = max(float(t.abs().max()) for t in r.delta.values())
        assert moved > 1e-2
        for k in r.delta:
            worst = max(worst, float((r.delta[k] - g.delta[k]).abs().max()))
        worst = max(worst, abs(r.loss_sum - g.loss_sum), abs(r.metric_sum - g.metric_sum))
    print(f"fedavg max abs difference {worst:.3g}")
    assert worst < TOL


def _tree(tree, j):
    return {k: _tree(v, j) for k, v in tree.items()} if isinstance(tree, dict) else tree[j]


def _diffs(a, b):
    if isinstance(a, dict):
        assert list(a) == list(b)
        return [d for k in a for d in _diffs(a[k], b[k])]
    if isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
        return [0.0]
    return [abs(a - b)]


def test_personalization_equals_the_per_client_path():
    train, test = clients([6, 0, 3], seed=5), clients([4, 2, 5], seed=6)
    weights = weights_of(TinyCharRNN)
    strategy = functools.partial(
        build_personalize_fn, functools.partial(torch.optim.SGD, lr=1.0), 2, 2, 1, loss_fn=LOSS
    )
    evaluate = build_evaluate_fn(LOSS)
    inputs = [{"client_id": f"c{i}", "train_data": tr, "test_data": te}
              for i, (tr, te) in enumerate(zip(train, test, strict=True))]  # fmt: skip
    ref = build_personalization_eval(TinyCharRNN, {"sgd": strategy}, evaluate, seed=2)(
        weights, inputs
    )
    spec, why = strategy_from_builder("sgd", strategy)
    assert spec is not None and spec.ignore_ids == (0,), why
    got = MultiClientEngine(TinyCharRNN, max_clients=2).personalize(
        weights, [(f"c{i}", tr, te) for i, (tr, te) in enumerate(zip(train, test, strict=True))],
        [spec], seed=2, ignore_ids=(0,),
    )  # fmt: skip
    worst = 0.0
    for j, g in enumerate(got):
        for key in ("baseline_metrics", "sgd"):
            worst = max(worst, *_diffs(_tree(ref[key], j), g[key]))
    base = ref["baseline_metrics"]["loss"][0]
    assert abs(ref["sgd"]["epoch_2"]["loss"][0] - base) > 1e-2  # the strategy trained
    print(f"personalization max abs difference {worst:.3g}")
    assert worst < TOL
    # the accuracy left padding out: counting it as well gives another number
    plain = MultiClientEngine(TinyCharRNN).personalize(
        weights, [("c0", train[0], test[0])], [], seed=2, ignore_ids=()
    )[0]["baseline_metrics"]["accuracy"]
    assert plain != pytest.approx(got[0]["baseline_metrics"]["accuracy"], abs=1e-6)
