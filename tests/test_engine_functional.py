"""The torch.func engine batches any model vmap can batch: for an MLP with nn.Dropout, a
model with an embedding (token ids, mean pooling, a linear layer) and a user's model with
layer norm, a residual connection and one dropout module called twice (none of which the
hand-written engine could batch), a FedAvg round and a personalization evaluation with
the stock fine-tuning strategy (SGD and Adam) equal the per-client path within float
rounding. What it cannot batch is refused in one line naming the reason."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_engine import (
    NUM_CLASSES,
    _client_tree,
    flat_diffs,
    global_weights,
    make_clients,
    max_diff,
    strategies,
)
from torch import nn

from fedp13n.algorithms.client_update import ClientTask, ClientWork, accuracy
from fedp13n.data.client_data import ClientDataset
from fedp13n.engine import MultiClientEngine, can_batch, engine_or_none, strategy_from_builder
from fedp13n.execution.base import LocalRef
from fedp13n.models import InputSpec
from fedp13n.models.layers import FastDropout
from fedp13n.personalization import build_evaluate_fn, build_personalization_eval

TOL = 1e-5
VOCAB, TOKENS = 20, 6


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.ReLU(),
        nn.Dropout(0.3),  # bernoulli masks, p not a multiple of 1/256
        nn.Linear(16, NUM_CLASSES),
    )


class BagOfEmbeddings(nn.Module):
    """Token ids -> embeddings, mean over the tokens, a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.drop = FastDropout(0.25)
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(x).mean(1)))


class ResidualNorm(nn.Module):
    """A user's model: layer norm, a residual block, one dropout module used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.norm = nn.LayerNorm(16)
        self.block = nn.Linear(16, 16)
        self.drop = FastDropout(0.5)
        self.out = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.gelu(self.inp(x.flatten(1))))
        h = h + torch.tanh(self.block(self.norm(h)))
        return self.out(self.drop(h))


def token_clients(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [
        ClientDataset(
            rng.integers(0, VOCAB, size=(n, TOKENS)).astype(np.int64),
            rng.integers(0, NUM_CLASSES, size=n).astype(np.int64),
        )
        for n in sizes
    ]


def clients_for(model_fn, sizes, seed):
    if model_fn is BagOfEmbeddings:
        return token_clients(sizes, seed)
    return make_clients(sizes, seed=seed, uint8=False)


MODELS = [mlp, BagOfEmbeddings, ResidualNorm]
IDS = ["mlp", "embedding", "residual_layernorm"]


def _engine_fedavg(model_fn, datasets, weights, opt, seed):
    return MultiClientEngine(model_fn, max_clients=3).fedavg_clients(
        weights, datasets, list(range(len(datasets))), optimizer=opt, epochs=2,
        batch_size=4, shuffle=True, seed=seed, round_num=2, pipeline="epochs",
    )  # fmt: skip


@pytest.mark.parametrize("model_fn", MODELS, ids=IDS)
def test_fedavg_round_equals_the_per_client_path(model_fn):
    sizes = [11, 0, 6, 9, 1]
    datasets = clients_for(model_fn, sizes, seed=1)
    weights = global_weights(model_fn)
    # large enough that the weights move visibly in a few steps; not so large that the
    # residual model diverges (where float rounding would be amplified step after step)
    opt = functools.partial(torch.optim.SGD, lr=0.1 if model_fn is ResidualNorm else 0.5)
    work = ClientWork(
        model_fn, opt, F.cross_entropy, accuracy, 2, 4, True, seed=3, pipeline="epochs"
    )
    ref = [work(ClientTask(LocalRef(weights), d, i, 2)) for i, d in enumerate(datasets)]
    got = _engine_fedavg(model_fn, datasets, weights, opt, seed=3)
    worst = 0.0
    for r, g, n in zip(ref, got, sizes, strict=True):
        assert (g.num_examples, g.num_trained) == (r.num_examples, r.num_trained)
        worst = max(worst, max_diff(r.delta, g.delta), abs(r.loss_sum - g.loss_sum))
        worst = max(worst, abs(r.metric_sum - g.metric_sum))
        moved = max(float(t.abs().max()) for t in r.delta.values())
        assert (moved > 1e-3) == (n > 0)
    print(f"{model_fn.__name__} fedavg max abs difference {worst:.3g}")
    assert worst < TOL
    # the comparison can fail: another seed draws other dropout masks and orders
    other = _engine_fedavg(model_fn, datasets, weights, opt, seed=4)
    assert max_diff(other[0].delta, got[0].delta) > 1e-4


@pytest.mark.parametrize("model_fn", MODELS, ids=IDS)
def test_personalization_equals_the_per_client_path(model_fn):
    train = clients_for(model_fn, [7, 0, 4, 10], seed=2)
    test = clients_for(model_fn, [3, 4, 0, 5], seed=5)
    weights = global_weights(model_fn)
    strats = strategies(epochs=2)  # the stock fine-tuning, with SGD and with Adam
    inputs = [
        {"client_id": f"c{i}", "train_data": tr, "test_data": te}
        for i, (tr, te) in enumerate(zip(train, test, strict=True))
    ]
    ref = build_personalization_eval(model_fn, strats, build_evaluate_fn(), seed=9)(weights, inputs)
    specs = [strategy_from_builder(n, b)[0] for n, b in strats.items()]
    got = MultiClientEngine(model_fn, max_clients=3).personalize(
        weights, [(f"c{i}", tr, te) for i, (tr, te) in enumerate(zip(train, test, strict=True))],
        specs, seed=9,
    )  # fmt: skip
    worst = 0.0
    for j, g in enumerate(got):
        for key in ("baseline_metrics", "sgd", "adam"):
            worst = max(worst, *flat_diffs(_client_tree(ref[key], j), g[key], f"{j} {key}"))
    base = ref["baseline_metrics"]["loss"][0]
    assert abs(ref["sgd"]["epoch_2"]["loss"][0] - base) > 1e-3  # fine-tuning changed it
    assert abs(ref["adam"]["epoch_2"]["loss"][0] - base) > 1e-3
    print(f"{model_fn.__name__} personalization max abs difference {worst:.3g}")
    assert worst < TOL


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


class NoisyInput(nn.Module):
    """Draws random numbers in forward (vmap refuses them): caught by the dry run on one
    example of the declared input_spec."""

    input_spec = InputSpec(x_shape=(4,))

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x + 0.1 * torch.randn_like(x))


def batchnorm_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5)
    )


@pytest.mark.parametrize(
    "model_fn,reason",
    [
        (batchnorm_cnn, "BatchNorm2d at '1' in training mode"),
        (Recurrent, "recurrent module LSTM at 'lstm'"),
        (NoisyInput, "torch.func.vmap rejects the model"),
    ],
    ids=["batchnorm", "lstm", "random_in_forward"],
)
def test_what_cannot_be_batched_falls_back_with_one_line(model_fn, reason):
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    ok, why = can_batch(model_fn, sgd)
    assert not ok and why.startswith(reason) and "\n" not in why
    lines = []
    assert engine_or_none(model_fn, [sgd], log=lines.append) is None
    assert len(lines) == 1 and "\n" not in lines[0] and reason in lines[0]
    with pytest.raises(ValueError, match="cannot batch this model"):
        if model_fn is NoisyInput:  # structure fine: refused at the dry run on data
            MultiClientEngine(model_fn).fedavg_clients(
                global_weights(model_fn),
                [ClientDataset(np.zeros((3, 4), np.float32), np.zeros(3, np.int64))],
                [0], optimizer=sgd, epochs=1, batch_size=2, shuffle=False, seed=0,
                round_num=1,
            )  # fmt: skip
        else:
            MultiClientEngine(model_fn)


def test_batchnorm_in_eval_mode_is_not_refused_as_training():
    """The refusal is about training mode: a model whose BatchNorm is frozen in eval mode
    is refused for its buffers only."""

    def frozen():
        model = batchnorm_cnn()
        model[1].eval()
        return model

    ok, why = can_batch(frozen, functools.partial(torch.optim.SGD, lr=0.1))
    assert not ok and "training mode" not in why and "buffers" in why
