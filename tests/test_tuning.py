"""Honest tuning: settings are chosen on validation clients that are neither FedAvg clients
nor reported on, and the choice is the one an independent evaluation says."""

from __future__ import annotations

import functools
import json

import numpy as np
import torch
from typer.testing import CliRunner

import fedp13n
from fedp13n.cli.main import app
from fedp13n.rundir import layout as rd

CONFIG = """
dataset = "synthetic"
synthetic_clients = 24
num_train_clients = 14
num_p13n_clients = 10
num_val_clients = 4
rounds = 2
clients_per_round = 3
local_epochs = 1
num_eval_clients = 6
p13n_epochs = 2
executor = "in-process"

[[strategies]]
name = "sgd"
optimizer = "sgd"
select_epoch = true
tune = { learning_rate = [0.001, 0.1] }

[[strategies]]
name = "plain"
optimizer = "sgd"
learning_rate = 0.02
"""


def test_tuned_settings_come_from_validation_clients_only(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["run", "--config", str(config), "--output-dir", str(out), "--no-report",
              "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "tuned on 4 validation clients" in res.output

    split = json.loads((out / rd.SPLIT).read_text())
    fedavg, val, test = (set(split[k]) for k in ("fedavg", "validation", "personalization"))
    assert len(val) == 4 and not (val & fedavg) and not (val & test) and not (fedavg & test)
    reported = json.loads((out / rd.PERSONALIZATION).read_text())["client_ids"]
    assert set(reported) <= test and not set(reported) & val

    tuning = json.loads((out / rd.TUNING).read_text())
    assert set(tuning["validation_client_ids"]) == val
    record = tuning["strategies"]["sgd"]
    assert "plain" not in tuning["strategies"]

    # Independently: each candidate on the validation clients, with the library API.
    train, test_data = fedp13n.load_dataset("synthetic", num_clients=24, seed=0, progress=False)
    weights = torch.load(out / rd.GLOBAL_WEIGHTS, weights_only=True)
    model_fn = functools.partial(fedp13n.emnist_conv_dropout, num_classes=62)
    inputs = [
        {"client_id": c, "train_data": train.create_dataset(c),
         "test_data": test_data.create_dataset(c)}
        for c in tuning["validation_client_ids"]
    ]  # fmt: skip
    means = {}
    for i, lr in enumerate((0.001, 0.1)):
        builder = functools.partial(
            fedp13n.build_personalize_fn,
            optimizer_fn=functools.partial(torch.optim.SGD, lr=lr, momentum=0.0),
            batch_size=20, num_epochs=2, num_epochs_per_eval=1,
        )  # fmt: skip
        result = fedp13n.build_personalization_eval(
            model_fn, {f"sgd~{i}": builder}, fedp13n.evaluate_fn, seed=0
        )(weights, inputs)
        for epoch in ("epoch_1", "epoch_2"):
            means[(lr, epoch)] = float(np.mean(result[f"sgd~{i}"][epoch]["accuracy"]))
    best = max(means, key=lambda k: (means[k], -list(means).index(k)))
    assert record["chosen"] == {"learning_rate": best[0]}
    assert record["chosen_epoch"] == best[1]
    assert record["validation_accuracy"] == means[best]
    for cand in record["candidates"]:
        lr = cand["params"]["learning_rate"]
        assert cand["validation_accuracy"] == {e: means[(lr, e)] for e in ("epoch_1", "epoch_2")}

    summary = json.loads((out / rd.SUMMARY).read_text())
    assert summary["tuning"]["strategies"]["sgd"]["chosen"] == {"learning_rate": best[0]}


def test_tuning_without_validation_clients_is_refused(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace("num_val_clients = 4\n", ""))
    res = CliRunner().invoke(app, ["run", "--config", str(config), "--print-config"])
    assert res.exit_code == 2 and "set num_val_clients" in res.output
