"""bf16 autocast in client work: a whole local training (many optimizer steps) under one
precision context must train the current weights, not the cast of the first step's."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from fedp13n.algorithms.client_update import ClientTask, ClientWork, accuracy
from fedp13n.data import ClientDataset
from fedp13n.execution.base import LocalRef
from fedp13n.models import emnist_conv_dropout
from fedp13n.personalization import build_personalization_eval, build_personalize_fn, evaluate_fn
from fedp13n.utils.device import Compute

MODEL = functools.partial(emnist_conv_dropout, num_classes=10)


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    x = rng.random((n, 28, 28)).astype(np.float32) * 0.2
    x[np.arange(n), y * 2, :] = 1.0  # a learnable stripe per class
    return ClientDataset(x, y.astype(np.int64))


def _weights():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in MODEL().state_dict().items()}


def test_local_training_in_bf16_follows_fp32():
    ds, w = _data(), _weights()
    outs = {}
    for precision in ("fp32", "bf16"):
        work = ClientWork(
            MODEL, functools.partial(torch.optim.SGD, lr=0.1), F.cross_entropy, accuracy,
            epochs=6, batch_size=10, shuffle=True, seed=0,
            compute=Compute.resolve(precision=precision),
            pipeline="epochs",  # the thresholds below were set on per-epoch passes
        )  # fmt: skip
        outs[precision] = work(ClientTask(LocalRef(w), ds, "a", 1))
    fp32, bf16 = outs["fp32"], outs["bf16"]
    with torch.no_grad():
        first_loss = float(
            F.cross_entropy(_model_with(w)(torch.from_numpy(ds.x)), torch.from_numpy(ds.y))
        )
    # both learned (the mean training loss is well below the initial loss) ...
    assert fp32.loss_sum / fp32.num_trained < 0.8 * first_loss
    assert bf16.loss_sum / bf16.num_trained < 0.8 * first_loss
    # ... and the bf16 update points where the fp32 one does
    for name in ("fc2.weight", "conv1.weight"):
        a, b = fp32.delta[name].flatten(), bf16.delta[name].flatten()
        assert float(F.cosine_similarity(a, b, dim=0)) > 0.95, name
        assert 0.8 < float(b.norm() / a.norm()) < 1.25, name


def _model_with(weights):
    model = MODEL()
    model.load_state_dict(weights)
    return model.eval()


def test_personalization_in_bf16_follows_fp32():
    train, test, w = _data(40, 1), _data(20, 2), _weights()
    fn_dict = {
        "sgd": functools.partial(
            build_personalize_fn, functools.partial(torch.optim.SGD, lr=0.1),
            batch_size=10, num_epochs=4, num_epochs_per_eval=4,
        )
    }  # fmt: skip
    inputs = [{"client_id": "a", "train_data": train, "test_data": test}]
    res = {
        p: build_personalization_eval(MODEL, fn_dict, evaluate_fn, seed=0, precision=p)(w, inputs)
        for p in ("fp32", "bf16")
    }
    base = res["fp32"]["baseline_metrics"]["loss"][0]
    tuned = {p: r["sgd"]["epoch_4"]["loss"][0] for p, r in res.items()}
    assert tuned["fp32"] < 0.8 * base and tuned["bf16"] < 0.8 * base  # bf16 fine-tuned too
    assert abs(tuned["bf16"] - tuned["fp32"]) < 0.1 * base
