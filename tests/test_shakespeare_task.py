"""The ``shakespeare`` task: its registry entry, config checks, data sources, and the
accuracy counted token by token (pad targets left out) wherever a run reports one."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fedp13n.cli.main import app
from fedp13n.data import shakespeare as data_sh
from fedp13n.data.client_data import ClientData
from fedp13n.experiments.config import ConfigError, ExperimentConfig
from fedp13n.models import shakespeare as model_sh
from fedp13n.personalization import (
    build_evaluate_fn,
    build_personalization_eval,
    build_personalize_fn,
)
from fedp13n.tasks import get_task, task_loss
from fedp13n.tasks import shakespeare as task_sh

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare_sample"
needs_sample = pytest.mark.skipif(
    not (SAMPLE / "shakespeare_train.h5").is_file(), reason="shakespeare_sample absent"
)


# -- the registry entry ------------------------------------------------------------------------
def test_data_and_model_modules_agree_on_pad_and_length():
    # declared twice (the data and models layers do not import each other)
    assert data_sh.PAD_ID == model_sh.PAD_ID == 0
    assert data_sh.SEQUENCE_LENGTH == model_sh.DEFAULT_SEQUENCE_LENGTH == 80
    spec = get_task("shakespeare")
    assert task_sh.ACCURACY_IGNORED_IDS == (data_sh.PAD_ID,)  # TFF: masked_tokens=[pad]
    assert task_sh.num_classes() == data_sh.VOCAB_SIZE == 90
    assert spec.models == ("shakespeare_rnn", "shakespeare_rnn_bn")  # the second: FedBN's
    assert spec.datasets == ("shakespeare", "shakespeare-leaf")
    loss = task_loss(spec)
    assert loss.accuracy.ignore_ids == (0,)
    assert loss.loss_fn is model_sh.shakespeare_loss  # TFF's: padding in the loss
    net = model_sh.shakespeare_rnn(task_sh.num_classes())
    assert net.input_spec.x_shape == (data_sh.SEQUENCE_LENGTH,)


def test_config_defaults_and_refusals():
    c = ExperimentConfig(task="shakespeare")
    c.validate()
    assert (c.dataset, c.model) == ("shakespeare", "shakespeare_rnn")
    refused = {
        "an EMNIST model": (dict(task="shakespeare", model="conv_dropout"), "model 'conv_dropout'"),
        "the RNN for EMNIST": (dict(task="emnist", model="shakespeare_rnn"), "of task 'emnist'"),
        "only_digits": (dict(task="shakespeare", only_digits=True), "only_digits"),
        "EMNIST data": (dict(task="shakespeare", dataset="emnist"), "dataset 'emnist'"),
        "LEAF without data_dir": (dict(task="shakespeare", dataset="shakespeare-leaf"),
                                  "needs data_dir"),
    }  # fmt: skip
    for what, (kw, text) in refused.items():
        with pytest.raises(ConfigError) as e:
            ExperimentConfig(**kw).validate()
        assert text in str(e.value) and "\n" not in str(e.value), what


@needs_sample
def test_the_task_loads_the_sample(tmp_path):
    train, test = task_sh.load("shakespeare", data_dir=str(SAMPLE), cache_dir=str(tmp_path))
    assert len(train) == len(test) == 200
    # TFF 0.87's counts on the sample (tests/test_shakespeare_data.py records them)
    assert (train.num_examples, test.num_examples) == (15651, 2126)
    assert train.x.dtype == np.int32 and train.y.shape[1:] == (80,)
    assert task_sh.notice("shakespeare", data_dir=str(SAMPLE), cache_dir=str(tmp_path)) is None


@needs_sample
def test_data_info_lists_shakespeare(tmp_path):
    args = ["data", "info", "--dataset", "shakespeare", "--data-dir", str(SAMPLE),
            "--cache-dir", str(tmp_path)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "15,651" in res.output and "2,126" in res.output and "<pad>" in res.output
    res = CliRunner().invoke(app, [*args, "--only-digits"])
    assert res.exit_code == 2 and "only_digits" in res.output


# -- accuracy, token by token ----------------------------------------------------------------------
V, S = 6, 5  # a small vocabulary and sequence length; id 0 is padding


class TinyCharModel(nn.Module):
    """Embedding + linear: ids (B, S) -> logits (B, V, S), the Shakespeare model's layout."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(V, 4)
        self.dense = nn.Linear(4, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.embedding(x)).transpose(1, 2)


def two_clients() -> tuple[ClientData, ClientData]:
    """Two clients of Shakespeare-shaped examples: ids (n, S), next ids as targets, padding
    at the ends of some rows (so batches hold unequal numbers of counted targets)."""
    rng = np.random.default_rng(3)
    parts = {}
    for cid, n in (("a", 7), ("b", 4)):
        x = rng.integers(1, V, size=(n, S)).astype(np.int32)
        y = rng.integers(1, V, size=(n, S)).astype(np.int32)
        for i in range(0, n, 2):  # every other row padded after a few characters
            keep = int(rng.integers(0, S))
            x[i, keep + 1 :] = 0
            y[i, keep:] = 0
        parts[cid] = (x, y)
    tr = ClientData.from_mapping(parts)
    te = ClientData.from_mapping(
        {c: (x[::-1].copy(), y[::-1].copy()) for c, (x, y) in parts.items()}
    )
    return tr, te


def _xy(data: ClientData, cid: str) -> tuple[np.ndarray, np.ndarray]:
    d = data.create_dataset(cid)
    return np.asarray(d.x), np.asarray(d.y)


def plain_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Correct over counted targets (target != pad), one example and position at a time."""
    right = counted = 0
    with torch.no_grad():
        for i in range(len(x)):
            logits = model(torch.from_numpy(x[i : i + 1]).long())[0]  # (V, S)
            for t in range(S):
                if int(y[i, t]) == 0:
                    continue
                counted += 1
                right += int(int(logits[:, t].argmax()) == int(y[i, t]))
    return right / counted


def test_evaluation_baseline_and_strategy_count_tokens_not_batches():
    torch.manual_seed(0)
    model = TinyCharModel()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train, test = two_clients()
    loss = task_loss(get_task("shakespeare"))
    evaluate = build_evaluate_fn(loss, batch_size=3)  # several batches of unequal counts
    expect = {c: plain_accuracy(model, *_xy(test, c)) for c in ("a", "b")}
    for c in ("a", "b"):
        m = evaluate(model, test.create_dataset(c))
        assert m["accuracy"] == pytest.approx(expect[c], abs=1e-12)
        # the mean of batch fractions would differ: the test data can tell them apart
        x, y = _xy(test, c)
        fractions = [plain_accuracy(model, x[i : i + 3], y[i : i + 3]) for i in range(0, len(x), 3)]
        assert abs(np.mean(fractions) - expect[c]) > 1e-3
    # the personalization evaluation: baseline, and a strategy that leaves the model as it
    # is (learning rate 0), so its accuracy is the same count on the same model
    strategy = functools.partial(
        build_personalize_fn, functools.partial(torch.optim.SGD, lr=0.0), 2, 1, 1,
        loss_fn=loss, eval_batch_size=3,
    )  # fmt: skip
    p13n = build_personalization_eval(TinyCharModel, {"sgd": strategy}, evaluate, seed=0)
    inputs = [{"client_id": c, "train_data": train.create_dataset(c),
               "test_data": test.create_dataset(c)} for c in ("a", "b")]  # fmt: skip
    result = p13n(weights, inputs)
    rows = dict(zip(result.client_ids, range(2), strict=True))
    for c in ("a", "b"):
        base = result["baseline_metrics"]["accuracy"][rows[c]]
        tuned = result["sgd"]["epoch_1"]["accuracy"][rows[c]]
        assert float(base) == pytest.approx(expect[c], abs=1e-12)
        assert float(tuned) == pytest.approx(expect[c], abs=1e-12)
