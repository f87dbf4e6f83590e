"""Tasks: the loss and accuracy a task hands every layer, a researcher's own data and model
(``"module:function"``), the EMNIST checks kept to EMNIST, and the README's example run."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fedp13n.cli.main import app
from fedp13n.client.program import evaluate
from fedp13n.data.client_data import ClientData, ClientDataset
from fedp13n.data.validate import DataError
from fedp13n.experiments.config import ExperimentConfig
from fedp13n.models.objectives import (
    Accuracy,
    TaskLoss,
    accuracy,
    is_cross_entropy,
    is_plain_accuracy,
)
from fedp13n.personalization.p13n_utils import (
    baseline_ignore_ids,
    build_evaluate_fn,
    is_default_evaluate_fn,
)
from fedp13n.tasks.build import (
    check_model_fits,
    client_data_pair,
    infer_num_classes,
    load_user_data,
    model_builder,
)

ROOT = Path(__file__).resolve().parents[1]


# -- the accuracy and the loss ---------------------------------------------------------------
def _sequence_batch():
    """Logits (2, 4 classes, 3 positions) and targets (2, 3); id 0 is padding."""
    logits = torch.zeros(2, 4, 3)
    predicted = [[1, 2, 3], [2, 2, 0]]  # the arg-max at each position
    for b in range(2):
        for t in range(3):
            logits[b, predicted[b][t], t] = 1.0
    targets = torch.tensor([[1, 3, 0], [2, 0, 0]])
    return logits, targets


def test_masked_accuracy_on_a_hand_built_batch():
    logits, targets = _sequence_batch()
    # by hand: positions right (1==1, 2!=3, 3!=0 | 2==2, 2!=0, 0==0) = 3 of 6;
    # without the padding id 0: (1==1, 2!=3 | 2==2) = 2 of 3
    assert [int(v) for v in Accuracy().counts(logits, targets)] == [3, 6]
    assert [int(v) for v in Accuracy((0,)).counts(logits, targets)] == [2, 3]
    assert float(Accuracy((0,))(logits, targets)) == pytest.approx(2 / 3)
    assert float(Accuracy((0, 1, 2, 3))(logits, targets)) == 0.0  # nothing counted: 0
    with pytest.raises(TypeError, match="ignore_ids must be integer"):
        Accuracy(("pad",))


def test_evaluate_counts_the_accuracy_the_loss_carries():
    logits, targets = _sequence_batch()
    model = torch.nn.Identity()
    data = ClientDataset(logits.numpy(), targets.numpy())
    plain = evaluate(model, data, F.cross_entropy)
    masked = evaluate(model, data, TaskLoss(F.cross_entropy, Accuracy((0,))))
    assert plain["accuracy"] == 0.5 and masked["accuracy"] == pytest.approx(2 / 3)
    assert masked["loss"] == plain["loss"] == pytest.approx(float(F.cross_entropy(logits, targets)))


def test_the_default_task_loss_gives_todays_numbers_and_keeps_the_engine():
    torch.manual_seed(0)
    out, y = torch.randn(50, 62), torch.randint(0, 62, (50,))
    default = TaskLoss()
    assert torch.equal(default(out, y), F.cross_entropy(out, y))
    assert torch.equal(default.accuracy(out, y), accuracy(out, y))  # same dtype, same bits
    data = ClientDataset(out.numpy(), y.numpy())
    net = torch.nn.Identity()
    assert evaluate(net, data, default) == evaluate(net, data, F.cross_entropy)
    assert is_cross_entropy(default) and is_plain_accuracy(default.accuracy)
    assert not is_cross_entropy(TaskLoss(F.cross_entropy, Accuracy((0,))))
    assert not is_cross_entropy(TaskLoss(F.nll_loss))
    assert is_default_evaluate_fn(build_evaluate_fn(default))
    # the engine counts an accuracy that leaves ids out too (issue 19: sequence labels)
    masked = build_evaluate_fn(TaskLoss(F.cross_entropy, Accuracy((0,))))
    assert is_default_evaluate_fn(masked) and baseline_ignore_ids(masked) == (0,)
    assert not is_default_evaluate_fn(build_evaluate_fn(TaskLoss(F.nll_loss)))


def test_the_tasks_loss_reaches_the_strategies():
    config = ExperimentConfig(loss="torch.nn.functional:nll_loss")
    config.validate()
    builder = config.strategy_builder(config.strategies[0])
    assert builder.loss_fn == TaskLoss(F.nll_loss)


# -- a researcher's own data ---------------------------------------------------------------------
def _normalised_mnist_like(n=6, seed=0):
    """torchvision-normalised MNIST's range ((x - 0.1307) / 0.3081: -0.42..2.82), (n, 28, 28),
    with labels above 61."""
    rng = np.random.default_rng(seed)
    x = ((rng.random((n, 28, 28)) - 0.1307) / 0.3081).astype(np.float32)
    return x, np.array([0, 69, 3, 70, 5, 6][:n])


def test_emnist_checks_do_not_apply_to_ones_own_data():
    x, y = _normalised_mnist_like()
    with pytest.raises(ValueError, match="not EMNIST\\? build with check=False"):
        ClientData.from_clients([("a", x, y)])  # EMNIST's constructor keeps its checks
    cd = ClientData.from_mapping({"a": (x[:4], y[:4]), 7: (torch.from_numpy(x[4:]), y[4:])})
    assert cd.client_ids == ("a", "7") and cd.size("7") == 2
    assert np.array_equal(cd.create_dataset("7").x, x[4:])  # taken as they are
    assert infer_num_classes(cd, cd) == 71
    sub = cd.subset(["7"])  # no re-check either
    assert np.array_equal(sub.y, y[4:])


def test_from_arrays_groups_pooled_examples_in_order_of_first_appearance():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    cd = ClientData.from_arrays(x, [0, 1, 0, 1, 1], ["b", "a", "b", "c", "c"])
    assert cd.client_ids == ("b", "a", "c")
    assert cd.create_dataset("b").x.tolist() == [[0, 1], [4, 5]]
    assert cd.create_dataset("c").y.tolist() == [1, 1]
    with pytest.raises(ValueError, match="one client id per example"):
        ClientData.from_arrays(x, [0] * 5, ["a"] * 4)


@pytest.mark.parametrize(
    "result, message",
    [
        ({"a": 1}, "returned a dict; it must return \\(train, test\\)"),
        ((1, 2, 3), "returned a tuple of 3"),
        (({"a": ([1.0], [0])}, [1]), "its test data is a list"),
        (({"a": ([1.0, 2.0], [0])}, {}), "client 'a' has x of shape \\(2,\\) and y of shape"),
        (
            ({"a": ([[1.0]], [0]), "b": ([[1.0]], [0])}, {"a": ([[1.0]], [0])}),
            "train and test client ids differ: 1 train client\\(s\\) have no test data",
        ),
        (({"a": ([[1.0]], [0])}, {"a": ([[1.0, 2.0]], [0])}), "features have shape"),
    ],
)
def test_wrong_returns_are_one_line_data_errors(result, message):
    with pytest.raises(DataError, match=message) as e:
        client_data_pair(result, "dataset 'm:f'")
    assert "\n" not in str(e.value)


def _module(tmp_path, monkeypatch, source: str, name: str = "own_task_mod") -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return name


def test_load_user_data_errors(tmp_path, monkeypatch):
    mod = _module(tmp_path, monkeypatch, "def load():\n    raise RuntimeError('no file x')\n")
    with pytest.raises(DataError, match=f"dataset '{mod}:load' raised RuntimeError: no file x"):
        load_user_data(f"{mod}:load")
    with pytest.raises(DataError, match="has no attribute 'lod'"):
        load_user_data(f"{mod}:lod")
    with pytest.raises(DataError, match="cannot import module 'no_such_mod'"):
        load_user_data("no_such_mod:load")


# -- a researcher's own model ---------------------------------------------------------------------
def test_models_are_called_with_num_classes_when_they_take_it(tmp_path, monkeypatch):
    mod = _module(
        tmp_path,
        monkeypatch,
        """
        from torch import nn
        def with_classes(num_classes):
            return nn.Linear(4, num_classes)
        def fixed():
            return nn.Linear(4, 3)
        def needs(width):
            return nn.Linear(4, width)
        """,
    )
    assert model_builder(f"{mod}:with_classes", 7)().out_features == 7
    assert model_builder(f"{mod}:fixed", 7)().out_features == 3
    assert model_builder("fedavg_cnn", 10)().fc2.out_features == 10  # the registry's too
    with pytest.raises(ValueError, match="needs argument\\(s\\) \\['width'\\]"):
        model_builder(f"{mod}:needs", 7)
    with pytest.raises(ValueError, match="labels do not give it"):
        model_builder(f"{mod}:with_classes", None)


def test_a_model_that_does_not_fit_the_labels_is_refused_before_training():
    data = ClientData.from_mapping({"c": (np.zeros((3, 4), np.float32), np.array([0, 4, 1]))})
    loss = TaskLoss()
    with pytest.raises(ValueError) as e:
        check_model_fits(lambda: torch.nn.Linear(4, 3), loss, data, data, "m:small")
    assert str(e.value) == (
        "model 'm:small' outputs shape (2, 3) for labels of shape (2,) (largest label 4); "
        "it must output logits (batch, at least 5 classes)."
    )
    with pytest.raises(ValueError, match="fails on 2 examples of client 'c' \\(x of shape "
                       "\\(2, 4\\) float32\\): RuntimeError: mat1 and mat2"):  # fmt: skip
        check_model_fits(lambda: torch.nn.Linear(5, 5), loss, data, data, "m:wide")
    with pytest.raises(ValueError, match="returned a list, not a torch.nn.Module"):
        check_model_fits(lambda: [], loss, data, data, "m:list")
    check_model_fits(lambda: torch.nn.Linear(4, 5), loss, data, data, "m:ok")


# -- the configuration and the command line -----------------------------------------------
def test_dataset_and_model_default_to_the_tasks():
    c = ExperimentConfig()
    c.validate()
    assert (c.task, c.dataset, c.model, c.loss, c.num_classes) == (
        "emnist", "emnist", "conv_dropout", None, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "cifar"], "unknown task 'cifar'; choose one of ['emnist', 'shakespeare']"),
        (
            ["--dataset", "mnist"],
            "dataset 'mnist' is not a data source of task 'emnist' (emnist, emnist-sqlite, leaf,",
        ),
        (
            ["--model", "resnet"],
            "model 'resnet' is not a model of task 'emnist' "
            "(conv_dropout, fedavg_cnn, conv_bn, dnn, dnn_bn)",
        ),
        (["--dataset", "no_such_mod:load"], "cannot import module 'no_such_mod'"),
        (["--dataset", "fedp13n.examples.my_task:lod"], "has no attribute 'lod'"),
        (["--model", "fedp13n.examples.my_task:NUM_CLASSES"], "is an int, not a function;"),
        (["--dataset", ":load"], "is not of the form 'package.module:function'"),
        (["--num-classes", "5"], "num_classes is for a dataset of your own"),
        (
            ["--dataset", "fedp13n.examples.my_task:load", "--only-digits"],
            "only_digits selects EMNIST's digits",
        ),
    ],
)
def test_bad_task_settings_are_one_line_errors(args, message):
    res = CliRunner().invoke(app, ["run", *args, "--print-config"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], res.output


def test_a_model_that_does_not_fit_exits_2_from_the_cli(tmp_path):
    res = CliRunner().invoke(app, [
        "run", "--dataset", "fedp13n.examples.my_task:load", "--model", "fedp13n.examples."
        "my_task:build", "--num-classes", "3", "--output-dir", str(tmp_path / "r"),
        "--executor", "in-process",
    ])  # fmt: skip
    assert res.exit_code == 2
    assert "error: model 'fedp13n.examples.my_task:build' outputs shape (2, 3) for labels" in (
        res.output
    )


# -- the README's example, as written -----------------------------------------------
def _between(text: str, marker: str) -> str:
    m = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```\n<!-- /{marker} -->", text, re.S)
    assert m, marker
    return m[1]


def test_the_readme_example_is_the_shipped_one():
    readme = (ROOT / "README.md").read_text()
    shipped = (ROOT / "src" / "fedp13n" / "examples" / "my_task.py").read_text()
    assert _between(readme, "my_task.py") == shipped


def test_the_readme_example_runs_as_written(tmp_path):
    """README's my_task.py and command, in a fresh folder, through the CLI (the only
    addition: the in-process executor, for CI's 2 cores)."""
    readme = (ROOT / "README.md").read_text()
    (tmp_path / "my_task.py").write_text(_between(readme, "my_task.py"))
    command = _between(readme, "my_task command").split()
    assert command[:1] == ["fedp13n"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    fedp13n = [sys.executable, "-c", "from fedp13n.cli.main import app; app()"]
    res = subprocess.run(
        [*fedp13n, *command[1:], "--executor", "in-process"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    run_dir = tmp_path / "runs" / "my_task"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_clients"] == 8  # 30 clients: 22 FedAvg / 8 personalization
    for strategy in ("sgd", "adam"):
        for epoch in ("epoch_1", "epoch_2", "epoch_3"):
            mean = summary["strategies"][strategy][epoch]["mean"]
            assert math.isfinite(mean) and 0 < mean <= 1, (strategy, epoch, mean)
    assert math.isfinite(summary["baseline"]["mean"])
    assert (run_dir / "report.html").is_file()
    assert "num_classes: 5 (the largest label + 1)" in res.stdout + res.stderr
