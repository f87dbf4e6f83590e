"""The multi-client engine against the one-client-at-a-time paths: FedAvg's ClientWork and
build_personalization_eval with build_personalize_fn (SGD and Adam), same numbers up to
float rounding, with unequal clients, an empty one and dropout."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.algorithms.client_update import ClientTask, ClientWork, accuracy
from fedp13n.data.client_data import ClientData, ClientDataset
from fedp13n.engine import (
    MultiClientEngine,
    OptimizerSpec,
    can_batch,
    engine_or_none,
    note_fallback,
    optimizer_spec,
    strategy_from_builder,
)
from fedp13n.execution.base import LocalRef
from fedp13n.models import emnist_conv_dropout
from fedp13n.models.layers import FastDropout
from fedp13n.personalization import (
    build_evaluate_fn,
    build_personalization_eval,
    build_personalize_fn,
)

TOL = 1e-5
NUM_CLASSES = 5


def small_cnn() -> nn.Module:
    """A conv model with both kinds of dropout placement (images and flat), 8x8 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        FastDropout(0.25),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 16),
        nn.ReLU(),
        FastDropout(0.5),
        nn.Linear(16, NUM_CLASSES),
    )


def make_clients(sizes, seed=0, uint8=True, shape=(1, 8, 8)):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        x = rng.integers(0, 256, size=(n, *shape)).astype(np.uint8)
        if not uint8:
            x = (x / 255.0).astype(np.float32)
        y = rng.integers(0, NUM_CLASSES, size=n).astype(np.int32)
        out.append(ClientDataset(x, y))
    return out


def global_weights(model_fn, seed=1):
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in model_fn().state_dict().items()}


def max_diff(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


SIZES = [13, 0, 5, 9, 1]  # unequal, an empty client, a single example


@pytest.mark.parametrize("uint8", [True, False])
def test_fedavg_round_matches_client_work(uint8):
    datasets = make_clients(SIZES, uint8=uint8)
    weights = global_weights(small_cnn)
    lr = 0.5  # large enough that the weights move visibly in a few steps
    work = ClientWork(
        model_fn=small_cnn,
        optimizer_fn=functools.partial(torch.optim.SGD, lr=lr),
        loss_fn=F.cross_entropy,
        metric_fn=accuracy,
        epochs=2,
        batch_size=4,
        shuffle=True,
        seed=7,
        pipeline="epochs",  # the oracle: weight = the client's number of examples
    )
    ref = [work(ClientTask(LocalRef(weights), d, i, 3)) for i, d in enumerate(datasets)]
    engine = MultiClientEngine(small_cnn, max_clients=4)  # 5 clients: two groups
    got = engine.fedavg_clients(
        weights,
        datasets,
        list(range(len(datasets))),
        optimizer=functools.partial(torch.optim.SGD, lr=lr),
        epochs=2,
        batch_size=4,
        shuffle=True,
        seed=7,
        round_num=3,
        pipeline="epochs",
    )
    worst = 0.0
    for r, g, n in zip(ref, got, SIZES, strict=True):
        assert g.num_examples == r.num_examples == n
        assert g.num_trained == r.num_trained
        assert g.finite and r.finite
        d = max_diff(r.delta, g.delta)
        worst = max(worst, d, abs(r.loss_sum - g.loss_sum), abs(r.metric_sum - g.metric_sum))
        moved = max(float(t.abs().max()) for t in r.delta.values())
        assert (moved > 1e-2) == (n > 0)  # weights really moved (only the empty client not)
    print(f"fedavg max abs difference {worst:.3g}")
    assert worst < TOL


def test_fedavg_dropout_masks_matter():
    """The comparison can fail: another seed gives other masks and another delta."""
    datasets = make_clients([12])
    weights = global_weights(small_cnn)
    engine = MultiClientEngine(small_cnn)
    kw = dict(optimizer=OptimizerSpec("sgd", 0.5), epochs=1, batch_size=4, shuffle=False)
    a = engine.fedavg_clients(weights, datasets, [0], seed=1, round_num=1, **kw)[0]
    b = engine.fedavg_clients(weights, datasets, [0], seed=2, round_num=1, **kw)[0]
    assert max_diff(a.delta, b.delta) > 1e-3


def strategies(epochs=3, batch_size=4):
    common = dict(batch_size=batch_size, num_epochs=epochs, num_epochs_per_eval=1)
    return {
        "sgd": functools.partial(
            build_personalize_fn, functools.partial(torch.optim.SGD, lr=0.2), **common
        ),
        "adam": functools.partial(
            build_personalize_fn, functools.partial(torch.optim.Adam, lr=0.05), **common
        ),
    }


def flat_diffs(a, b, path=""):
    if isinstance(a, dict):
        assert list(a) == list(b), path
        return [d for k in a for d in flat_diffs(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
        return [0.0]
    return [abs(a - b)]


def tiny_emnist():
    return emnist_conv_dropout(num_classes=10)


@pytest.mark.parametrize(
    "model_fn,sizes,shape",
    [(small_cnn, SIZES, (1, 8, 8)), (tiny_emnist, [5, 0, 2], (28, 28))],
    ids=["small_cnn", "emnist_conv_dropout"],
)
def test_personalization_matches_build_personalization_eval(model_fn, sizes, shape):
    train = make_clients(sizes, seed=3, shape=shape)
    test = make_clients([4, 3, 0, 6, 2][: len(sizes)], seed=4, shape=shape)
    weights = global_weights(model_fn)
    inputs = [
        {"client_id": f"c{i}", "train_data": tr, "test_data": te}
        for i, (tr, te) in enumerate(zip(train, test, strict=True))
    ]
    strats = strategies()
    ref = build_personalization_eval(model_fn, strats, build_evaluate_fn(), seed=11)(
        weights, inputs
    )
    specs = []
    for name, builder in strats.items():
        spec, why = strategy_from_builder(name, builder)
        assert spec is not None, why
        specs.append(spec)
    engine = MultiClientEngine(model_fn, max_clients=3)
    got = engine.personalize(
        weights,
        [(f"c{i}", tr, te) for i, (tr, te) in enumerate(zip(train, test, strict=True))],
        specs,
        seed=11,
    )
    worst = 0.0
    for j, g in enumerate(got):
        for key in ("baseline_metrics", "sgd", "adam"):
            r = _client_tree(ref[key], j)
            worst = max(worst, *flat_diffs(r, g[key], f"client {j} {key}"))
    # The strategies changed the model: the loss after fine-tuning differs from the baseline.
    base = ref["baseline_metrics"]["loss"][0]
    assert abs(ref["sgd"]["epoch_3"]["loss"][0] - base) > 1e-2
    assert abs(ref["adam"]["epoch_3"]["loss"][0] - base) > 1e-2
    print(f"personalization max abs difference {worst:.3g}")
    assert worst < TOL
    # ... and the comparison can fail: another seed (other masks and order) differs.
    other = engine.personalize(weights, [("c0", train[0], test[0])], specs[:1], seed=12)[0]
    assert abs(other["sgd"]["epoch_3"]["loss"] - got[0]["sgd"]["epoch_3"]["loss"]) > 1e-4


def _client_tree(tree, j):
    if isinstance(tree, dict):
        return {k: _client_tree(v, j) for k, v in tree.items()}
    return tree[j]


def test_emnist_fedavg_round_matches_client_work():
    datasets = make_clients([3, 0, 5], shape=(28, 28))
    weights = global_weights(tiny_emnist)
    opt = functools.partial(torch.optim.SGD, lr=0.1)
    work = ClientWork(tiny_emnist, opt, F.cross_entropy, accuracy, 1, 2, True, seed=5)
    ref = [work(ClientTask(LocalRef(weights), d, f"k{i}", 1)) for i, d in enumerate(datasets)]
    got = MultiClientEngine(tiny_emnist).fedavg_clients(
        weights,
        datasets,
        ["k0", "k1", "k2"],
        optimizer=opt,
        epochs=1,
        batch_size=2,
        shuffle=True,
        seed=5,
        round_num=1,
    )
    worst = max(max_diff(r.delta, g.delta) for r, g in zip(ref, got, strict=True))
    worst = max(worst, *(abs(r.loss_sum - g.loss_sum) for r, g in zip(ref, got, strict=True)))
    assert max(float(t.abs().max()) for t in ref[2].delta.values()) > 1e-3
    print(f"emnist fedavg max abs difference {worst:.3g}")
    assert worst < TOL


def test_can_batch_and_its_reasons():
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    assert can_batch(small_cnn, sgd) == (True, "")
    assert can_batch(emnist_conv_dropout, functools.partial(torch.optim.Adam, lr=0.002))[0]
    ok, why = can_batch(small_cnn, functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    assert not ok and "momentum" in why
    ok, why = can_batch(small_cnn, functools.partial(torch.optim.Adam, lr=0.1, amsgrad=True))
    assert not ok and "amsgrad" in why
    ok, why = can_batch(small_cnn, functools.partial(torch.optim.RMSprop, lr=0.1))
    assert not ok and "RMSprop" in why

    # nn.Dropout: batched on a CPU (its bernoulli masks drawn from each client's
    # generator), not on a GPU, where the per-client path draws them from the GPU's
    def with_dropout():
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 2))

    assert can_batch(with_dropout, sgd) == (True, "")
    ok, why = can_batch(with_dropout, sgd, device="cuda")
    assert not ok and "Dropout" in why and "cuda generator" in why
    ok, why = can_batch(lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), sgd)
    assert not ok and "BatchNorm2d" in why and "buffers" in why
    assert can_batch(lambda: nn.Sequential(nn.Linear(4, 2), nn.Tanh()), sgd) == (True, "")
    assert optimizer_spec(sgd)[0] == OptimizerSpec("sgd", 0.1)
    with pytest.raises(ValueError, match="cannot batch this model: recurrent module LSTM"):
        MultiClientEngine(lambda: nn.LSTM(4, 2))


def test_fallback_is_said_once():
    momentum = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.5)
    lines = []
    assert engine_or_none(small_cnn, [momentum], log=lines.append) is None
    assert engine_or_none(small_cnn, [momentum], log=lines.append) is None
    assert len(lines) == 1 and "momentum" in lines[0]
    with pytest.warns(RuntimeWarning, match="one at a time"):
        note_fallback("a reason only this test gives")
    assert isinstance(engine_or_none(small_cnn, [OptimizerSpec("adam", 0.1)]), MultiClientEngine)


def test_mlp_on_flat_rows_and_sgd_without_shuffle():
    def mlp():
        return nn.Sequential(
            nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), FastDropout(0.5), nn.Linear(8, NUM_CLASSES)
        )

    datasets = make_clients([7, 2], uint8=False)
    weights = global_weights(mlp)
    opt = functools.partial(torch.optim.SGD, lr=0.3)
    work = ClientWork(mlp, opt, F.cross_entropy, accuracy, 2, 3, False, seed=0)
    ref = [work(ClientTask(LocalRef(weights), d, i, 1)) for i, d in enumerate(datasets)]
    got = MultiClientEngine(mlp).fedavg_clients(
        weights,
        datasets,
        [0, 1],
        optimizer=opt,
        epochs=2,
        batch_size=3,
        shuffle=False,
        seed=0,
        round_num=1,
    )
    assert max(max_diff(r.delta, g.delta) for r, g in zip(ref, got, strict=True)) < TOL
    assert max(float(t.abs().max()) for t in ref[0].delta.values()) > 1e-2


def _fedavg(engine, datasets, weights):
    return engine.fedavg_clients(
        weights,
        datasets,
        list(range(len(datasets))),
        optimizer=OptimizerSpec("sgd", 0.5),
        epochs=1,
        batch_size=4,
        shuffle=True,
        seed=3,
        round_num=1,
    )


def test_engine_in_bf16_runs_and_stays_close():
    datasets = make_clients([6, 3])
    weights = global_weights(small_cnn)
    fp32 = _fedavg(MultiClientEngine(small_cnn), datasets, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # emulated bf16 on most CPUs
        bf16 = _fedavg(MultiClientEngine(small_cnn, precision="bf16"), datasets, weights)
    for a, b in zip(fp32, bf16, strict=True):
        assert b.finite and all(t.dtype == torch.float32 for t in b.delta.values())
        assert max_diff(a.delta, b.delta) < 5e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_engine_on_cuda_matches_cpu():
    datasets = make_clients([6, 0, 3])
    weights = global_weights(small_cnn)
    cpu = _fedavg(MultiClientEngine(small_cnn), datasets, weights)
    gpu = _fedavg(MultiClientEngine(small_cnn, device="cuda", precision="fp32"), datasets, weights)
    for a, b in zip(cpu, gpu, strict=True):
        assert max_diff(a.delta, b.delta) < 1e-4
        assert abs(a.loss_sum - b.loss_sum) < 1e-4


# -- dropout masks drawn ahead by threads ------------------------------------------------------
def _fedavg_with(model_fn, datasets, threads):
    engine = MultiClientEngine(model_fn, max_clients=4, mask_threads=threads)
    return engine.fedavg_clients(
        global_weights(model_fn),
        datasets,
        [f"k{i}" for i in range(len(datasets))],
        optimizer=OptimizerSpec("sgd", 0.3),
        epochs=2,
        batch_size=4,
        shuffle=True,
        seed=9,
        round_num=2,
        pipeline="tff",
    )


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize(
    "model_fn,shape", [(small_cnn, (1, 8, 8)), (tiny_emnist, (28, 28))], ids=["small", "emnist"]
)
def test_masks_drawn_ahead_are_bit_for_bit_the_inline_masks(threads, model_fn, shape):
    """Clients split among threads, each drawing a few steps ahead: the same bytes from
    each client's generator as the inline draw, so the same deltas to the last bit (both
    dropout layouts: after a pooling layer and after a dense one)."""
    datasets = make_clients([13, 0, 5, 9, 1, 7], seed=5, shape=shape)
    inline = _fedavg_with(model_fn, datasets, 0)
    ahead = _fedavg_with(model_fn, datasets, threads)
    for a, b in zip(inline, ahead, strict=True):
        assert a.loss_sum == b.loss_sum and a.metric_sum == b.metric_sum
        assert all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta)
    # the comparison can fail: masks matter (the empty client aside)
    other = MultiClientEngine(model_fn, max_clients=4, mask_threads=threads).fedavg_clients(
        global_weights(model_fn), datasets, [f"k{i}" for i in range(6)],
        optimizer=OptimizerSpec("sgd", 0.3), epochs=2, batch_size=4, shuffle=True, seed=10,
        round_num=2, pipeline="tff",
    )  # fmt: skip
    assert max_diff(other[0].delta, ahead[0].delta) > 1e-4


def test_personalization_with_masks_drawn_ahead_equals_inline():
    train = make_clients([9, 0, 4, 11], seed=6)
    test = make_clients([3, 2, 0, 5], seed=7)
    clients = [(f"c{i}", tr, te) for i, (tr, te) in enumerate(zip(train, test, strict=True))]
    specs = [strategy_from_builder(n, b)[0] for n, b in strategies(epochs=2).items()]
    weights = global_weights(small_cnn)
    runs = [
        MultiClientEngine(small_cnn, max_clients=3, mask_threads=t).personalize(
            weights, clients, specs, seed=4
        )
        for t in (0, 2)
    ]
    for a, b in zip(*runs, strict=True):  # bit for bit (NaN where a client has no test data)
        assert set(flat_diffs(dict(a), dict(b))) == {0.0}
    assert runs[0][0]["sgd"]["epoch_2"]["loss"] != runs[0][0]["baseline_metrics"]["loss"]


def test_mask_threads_setting():
    assert MultiClientEngine(small_cnn).mask_threads == 0  # a CPU computes: no threads
    from fedp13n.engine.batched import default_mask_threads

    assert 1 <= default_mask_threads(torch.device("cuda")) <= 8
    with pytest.raises(ValueError, match="mask_threads must be a non-negative integer"):
        MultiClientEngine(small_cnn, mask_threads=-1)


def test_the_engine_reads_data_resident_on_its_device_without_a_copy_from_the_host(
    monkeypatch,
):
    """Datasets kept on the engine's device (a ClientData copied there once) are joined
    there; the numbers are those of host data, bit for bit."""
    from fedp13n.engine import batched

    joined = []
    real = batched._DeviceData._from_resident

    def spy(self, datasets, device):
        joined.append(len(datasets))
        return real(self, datasets, device)

    monkeypatch.setattr(batched._DeviceData, "_from_resident", spy)
    datasets = make_clients([13, 0, 5, 9], seed=8)
    cd = ClientData.from_clients((f"k{i}", d.x, d.y) for i, d in enumerate(datasets))
    resident = [cd.create_dataset(f"k{i}", device="cpu") for i in range(4)]
    assert all(d.resident is not None for d in resident)
    host = _fedavg_with(small_cnn, datasets, 0)
    assert joined == []
    kept = _fedavg_with(small_cnn, resident, 0)
    assert sum(joined) == 4  # every client's data joined on the device
    for a, b in zip(host, kept, strict=True):
        assert a.loss_sum == b.loss_sum and all(
            torch.equal(a.delta[k], b.delta[k]) for k in a.delta
        )
    assert host[0].loss_sum > 0
