"""Weighted FedAvg gives bit-identical weights whatever executor runs the clients."""

from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pytest
import torch
from torch import nn

from fedp13n.algorithms import ClientSelection, build_weighted_fed_avg, sample_clients
from fedp13n.data import ClientData
from fedp13n.execution import InProcessExecutor, LocalProcessExecutor

# Ray workers cannot import this test module: send its model class by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class SmallConvDropout(nn.Module):
    """TFF's conv-dropout EMNIST layers (conv, conv, pool, dropout, dense, dropout, dense),
    narrow enough for a unit test."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Unflatten(1, (1, 28)),
            nn.Conv2d(1, 4, 3),
            nn.ReLU(),
            nn.Conv2d(4, 8, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(8 * 12 * 12, 16),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(16, 62),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _client_data() -> ClientData:
    rng = np.random.default_rng(3)
    return ClientData.from_clients(
        (
            f"w{i}",
            rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
            rng.integers(0, 62, size=n).astype(np.int32),
        )
        for i, n in enumerate((9, 4, 13, 6, 7))
    )


def _two_rounds(executor) -> tuple[dict[str, torch.Tensor], list[float]]:
    cd = _client_data()
    process = build_weighted_fed_avg(
        SmallConvDropout, batch_size=4, seed=11, client_epochs=2, executor=executor
    )
    state, losses = process.initialize(), []
    for r in (1, 2):
        ids = sample_clients(cd.client_ids, 3, seed=11, round_num=r)
        state, metrics = process.next(state, ClientSelection(cd, ids))
        losses.append(metrics.loss)
    return process.get_model_weights(state), losses


@pytest.fixture(scope="module")
def reference():
    return _two_rounds(InProcessExecutor(threads_per_worker=1))


def _assert_same(a, b) -> None:
    (wa, la), (wb, lb) = a, b
    assert la == lb
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_reference_actually_trains(reference):
    weights, losses = reference
    start = build_weighted_fed_avg(SmallConvDropout, seed=11).initialize().model
    assert not torch.equal(weights["body.8.weight"], start["body.8.weight"])
    assert all(np.isfinite(losses)) and losses[0] != losses[1]


@pytest.mark.parametrize("num_workers", [1, 2])
def test_worker_processes_match_in_process(reference, num_workers):
    with LocalProcessExecutor(num_workers=num_workers) as ex:
        _assert_same(reference, _two_rounds(ex))


@pytest.mark.ray
def test_ray_matches_in_process(reference):
    ray = pytest.importorskip("ray")
    from fedp13n.execution.ray_executor import RayExecutor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, address="local", log_to_driver=False)
    try:
        with RayExecutor() as ex:
            _assert_same(reference, _two_rounds(ex))
    finally:
        ray.shutdown()
