"""A centralized stage trains with the run's task loss and accuracy (issue 19): on the
Shakespeare task its round metrics leave padding out of the accuracy, as FedAvg's do
(before, the stage used the default image accuracy and failed on sequence labels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedp13n.algorithms import ClientSelection
from fedp13n.data import ClientData
from fedp13n.experiments.config import ExperimentConfig
from fedp13n.experiments.p13n_experiment import build_stage_process, model_fn_for
from fedp13n.utils.device import Compute

SEQ = 80


def _sequences(rng: np.random.Generator, n: int, pad_from: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` made Shakespeare examples: ids 1..89, positions from ``pad_from`` on padding (0)."""
    x = rng.integers(1, 90, (n, SEQ)).astype(np.int32)  # the task stores int32 ids
    y = rng.integers(1, 90, (n, SEQ)).astype(np.int64)
    x[:, pad_from:] = 0
    y[:, pad_from - 1 :] = 0
    return x, y


def test_centralized_stage_uses_the_task_loss_and_masked_accuracy():
    rng = np.random.default_rng(0)
    clients = {"a": _sequences(rng, 2, 30), "b": _sequences(rng, 4, 61)}
    train = ClientData.from_clients((c, x, y) for c, (x, y) in clients.items())
    config = ExperimentConfig(
        task="shakespeare",
        model="shakespeare_rnn",
        seed=3,
        stages=[{"name": "centralized", "rounds": 1, "local_steps": 1, "batch_size": 6}],
    )
    stage = config.resolved_stages()[0]
    assert stage.resolved_kind == "centralized"
    process = build_stage_process(config, stage, None, Compute())
    state = process.initialize()
    _, metrics = process.next(state, ClientSelection(train, ["a", "b"]))

    # one step on one batch of all 6 examples: the metrics are the initial model's on them
    model = model_fn_for(config)()
    model.load_state_dict(state.model)
    x = torch.as_tensor(np.concatenate([clients["a"][0], clients["b"][0]]))
    y = torch.as_tensor(np.concatenate([clients["a"][1], clients["b"][1]]))
    with torch.no_grad():
        logits = model(x)  # (6, classes, 80)
    predicted = logits.argmax(dim=1)
    correct = counted = 0
    for i in range(6):  # a plain loop over positions, padding (target 0) not counted
        for t in range(SEQ):
            if int(y[i, t]) != 0:
                counted += 1
                correct += int(predicted[i, t] == y[i, t])
    assert counted == 2 * 29 + 4 * 60
    assert metrics.accuracy == pytest.approx(correct / counted, abs=1e-12)
    loss = torch.nn.functional.cross_entropy(logits, y)  # the task's loss: the batch mean
    assert metrics.loss == pytest.approx(float(loss), rel=1e-5)
    assert metrics.num_examples == 6
