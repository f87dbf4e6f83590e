"""Training stages from configuration: FedAvg, then a stage with server Adam and another
local budget; resuming across the stage boundary; TensorBoard logging."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedp13n.algorithms import ClientSelection, build_weighted_fed_avg, sample_clients
from fedp13n.algorithms.loop import fresh_server_state, run_rounds
from fedp13n.cli.main import app
from fedp13n.data import load_dataset
from fedp13n.data.split import split_clients
from fedp13n.models.registry import model_fn_for
from fedp13n.rundir import layout as rd
from fedp13n.utils.optimizers import make_optimizer_fn

TWO_STAGES = """
dataset = "synthetic"
synthetic_clients = 24
num_train_clients = 16
num_p13n_clients = 8
clients_per_round = 3
local_epochs = 1
num_eval_clients = 3
p13n_epochs = 1
checkpoint_every = 1
executor = "in-process"

[[strategies]]
name = "sgd"
optimizer = "sgd"
learning_rate = 0.02

[[stages]]
name = "fedavg"
rounds = 3
server_optimizer = "sgd"
server_learning_rate = 1.0
server_momentum = 0.9

[[stages]]
name = "adam"
rounds = 3
local_epochs = 2
batch_size = 10
client_learning_rate = 0.01
server_optimizer = "adam"
server_learning_rate = 0.003
"""


def _rows(path):
    with open(path, newline="") as f:
        return [
            (r["round"], r["loss"], r["accuracy"], r["num_examples"]) for r in csv.DictReader(f)
        ]


def _by_hand(total_rounds_per_stage=(3, 3)):
    """The same two stages with the library API and the loop, no experiment code."""
    train, _ = load_dataset("synthetic", num_clients=24, seed=0, progress=False)
    train_ids, _ = split_clients(list(train.client_ids), 16, 8, seed=42)
    model_fn = model_fn_for("conv_dropout", 62)
    stage1 = build_weighted_fed_avg(
        model_fn,
        make_optimizer_fn("sgd", 0.02),
        make_optimizer_fn("sgd", 1.0, momentum=0.9),
        client_epochs=1, batch_size=20, seed=0, client_pipeline="tff",
    )  # fmt: skip
    stage2 = build_weighted_fed_avg(
        model_fn,
        make_optimizer_fn("sgd", 0.01),
        torch_adam(0.003),
        client_epochs=2, batch_size=10, seed=0, client_pipeline="tff",
    )  # fmt: skip

    def select(r):
        return ClientSelection(train, sample_clients(train_ids, 3, seed=0, round_num=r))

    state = run_rounds(stage1, stage1.initialize(), 3, select).state
    state = fresh_server_state(stage2, state.model, 3)
    assert state.optimizer_state["state"] == {}  # Adam starts from nothing
    return run_rounds(stage2, state, 6, select).state


def torch_adam(lr):
    return lambda params: torch.optim.Adam(params, lr=lr)


@pytest.mark.slow
def test_two_stage_run_from_toml_resumes_across_the_boundary(tmp_path):
    config = tmp_path / "two.toml"
    config.write_text(TWO_STAGES)
    args = ["run", "--config", str(config), "--no-report", "--no-progress"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fedp13n.cli.main", *args, "--output-dir", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not rd.checkpoint_path(killed, 3).exists():  # the end of stage 1
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (killed / rd.GLOBAL_WEIGHTS).exists(), "killed too late to test resuming"
    res = CliRunner().invoke(app, [*args, "--output-dir", str(killed), "--resume"])
    assert res.exit_code == 0, res.output
    assert "resumed from" in res.output and "stage 'adam': rounds 4-6" in res.output

    straight = tmp_path / "straight"
    res = CliRunner().invoke(app, [*args, "--output-dir", str(straight)])
    assert res.exit_code == 0, res.output
    assert "stage 'fedavg': rounds 1-3" in res.output

    w_killed = torch.load(killed / rd.GLOBAL_WEIGHTS, weights_only=True)
    w_straight = torch.load(straight / rd.GLOBAL_WEIGHTS, weights_only=True)
    assert all(torch.equal(w_killed[k], w_straight[k]) for k in w_straight)
    assert _rows(killed / rd.FEDAVG_METRICS) == _rows(straight / rd.FEDAVG_METRICS)
    assert [r[0] for r in _rows(straight / rd.FEDAVG_METRICS)] == ["1", "2", "3", "4", "5", "6"]
    # stage 2 really ran with its own local budget: 2 epochs, so twice the examples per client
    n = [int(r[3]) for r in _rows(straight / rd.FEDAVG_METRICS)]
    assert all(x > 0 for x in n)

    # ... and is exactly the two stages written out with the library API.
    expected = _by_hand()
    assert all(torch.equal(w_straight[k], expected.model[k]) for k in w_straight)
    # the Adam stage moved the weights away from what a 6-round FedAvg gives
    assert not np.allclose(w_straight["fc2.weight"].numpy(), 0)


def test_tensorboard_event_file_holds_rounds_and_headline(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    args = [
        "run", "--dataset", "synthetic", "--synthetic-clients", "12", "--num-train-clients", "8",
        "--num-p13n-clients", "4", "--rounds", "2", "--clients-per-round", "2",
        "--local-epochs", "1", "--eval-every", "1", "--num-eval-clients", "2",
        "--p13n-epochs", "1", "--strategy", "sgd:0.02", "--executor", "in-process",
        "--no-report", "--no-progress", "--tensorboard", str(tb),
        "--output-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    acc = EventAccumulator(str(tb / "run"))  # one subfolder per run (issue 17)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "eval/accuracy"} <= tags
    assert {"personalization/baseline_accuracy", "personalization/sgd_epoch_1_accuracy"} <= tags
    with open(tmp_path / "run" / rd.FEDAVG_METRICS, newline="") as f:
        rows = list(csv.DictReader(f))
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in logged] == [1, 2]
    assert [v for _, v in logged] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)
    evals = [e.value for e in acc.Scalars("eval/accuracy")]
    assert evals == pytest.approx([float(r["eval_accuracy"]) for r in rows], rel=1e-6)
