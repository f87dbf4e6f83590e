"""The evaluation protocols beside TFF's (fedp13n.algorithms.own_state): a FedPer run's
training clients with their own heads against a plain evaluation, a new client's local
step worked by hand, and runs without a stateful method left as they were."""

from __future__ import annotations

import csv
import functools
import json

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_fedper, build_fedrep, fedper_state_spec
from fedp13n.algorithms.own_state import evaluate_new_clients
from fedp13n.cli.main import app
from fedp13n.data.client_data import ClientData, features_to_tensor
from fedp13n.execution import InProcessExecutor
from fedp13n.experiments.config import ExperimentConfig
from fedp13n.experiments.p13n_experiment import Run, model_fn_for
from fedp13n.reporting.report import write_report
from fedp13n.rundir import layout as rd
from fedp13n.state import ClientStateStore

TINY = dict(
    dataset="synthetic", synthetic_clients=20, rounds=2, clients_per_round=3, local_steps=2,
    num_eval_clients=3, executor="in-process", p13n_epochs=1, batch_size=10,
)  # fmt: skip
SGD = {"name": "sgd", "optimizer": "sgd", "learning_rate": 0.02}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_fedper_clients_own_state_accuracy_is_its_head_on_its_test_data(tmp_path):
    config = ExperimentConfig.from_dict({**TINY, "method": "fedper", "strategies": [SGD]})
    config.validate()
    run = Run(config, tmp_path, resume=False, progress=False, log=lambda s: None)
    run.execute()
    rows = _rows(tmp_path / rd.OWN_STATE_PER_CLIENT)
    own = [r for r in rows if r["protocol"] == "own_state"]
    new = [r for r in rows if r["protocol"] == "new_clients"]
    assert len(own) == 3 and len(new) == 3  # num_eval_clients of each
    p13n = json.loads((tmp_path / rd.PERSONALIZATION).read_text())["client_ids"]
    assert [r["client_id"] for r in new] == p13n  # TFF's clients, as new clients
    store = ClientStateStore.open(tmp_path / rd.CLIENT_STATE)
    assert all(store.initialised(r["client_id"]) for r in own)

    # plain evaluation: the global body + the client's stored head on its test examples
    weights = torch.load(tmp_path / rd.GLOBAL_WEIGHTS, weights_only=True)
    model = model_fn_for(config)()
    for r in own:
        c = r["client_id"]
        head = {n: torch.from_numpy(np.array(store.array(n)[store.client_ids.index(c)]))
                for n in store.spec}  # fmt: skip
        assert not torch.equal(head["fc2.weight"], weights["fc2.weight"])  # its own
        model.load_state_dict({**weights, **head})
        model.eval()
        test = run.data.test.create_dataset(c)
        with torch.no_grad():
            pred = model(features_to_tensor(np.asarray(test.x))).argmax(1).numpy()
        assert float(r["accuracy"]) == float(np.mean(pred == np.asarray(test.y)))
        assert int(r["num_test_examples"]) == len(test)

    summary = json.loads((tmp_path / rd.SUMMARY).read_text())["other_protocols"]
    acc = [float(r["accuracy"]) for r in own]
    assert summary["own_state"]["n"] == 3 and summary["tuned"] is False
    assert abs(summary["own_state"]["mean"] - np.mean(acc)) < 1e-12
    assert summary["own_state"]["ci_low"] <= summary["own_state"]["mean"]
    assert summary["own_state"]["mean"] <= summary["own_state"]["ci_high"]
    assert "FL-bench" in summary["own_state"]["protocol"]
    report = write_report(tmp_path).read_text()
    assert 'id="protocols"' in report and "TFF&#x27;s protocol" in report


def _two_scalars() -> nn.Module:
    """y = h * (b * x): body b = 1, head h = 0.5."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(0.5)
    return model


def test_a_new_client_takes_one_local_step_then_is_evaluated(tmp_path):
    """One full-batch SGD step (lr 0.5) of (h b x - y)^2 from b = 1, h = 0.5 (the global
    head) on one example x = 1, y = 1: r = -0.5, b = 1 + 0.5 * 2 * 0.5 * 0.5 = 1.25,
    h = 0.5 + 0.5 * 2 * 0.5 * 1 = 1.0; on the test example x = 2, y = 2: (2.5 - 2)^2."""
    one = np.ones((1, 1), np.float32)
    train = ClientData.from_mapping({"n": (one, one)})
    test = ClientData.from_mapping({"n": (2 * one, 2 * one)})
    store = ClientStateStore.create(tmp_path, ["t"], fedper_state_spec(_two_scalars, None))
    process = build_fedper(
        _two_scalars, store, client_optimizer_fn=functools.partial(torch.optim.SGD, lr=0.5),
        loss_fn=F.mse_loss, batch_size=10, shuffle=False, client_pipeline="epochs",
        metrics_fn=lambda o, t: torch.tensor(0.0),
    )  # fmt: skip
    weights = process.get_model_weights(process.initialize())
    (m,) = evaluate_new_clients(
        process.client_work, weights, train, test, ["n"], F.mse_loss, InProcessExecutor(), 1
    )
    assert m["loss"] == 0.25 and m["num_test_examples"] == 1
    assert not store.initialised("t")  # a new client's step keeps no state


def test_a_new_fedrep_client_learns_its_head_only(tmp_path):
    """FedRep's new client (Collins et al. 2021, Section 5): the head alone, body fixed.
    One full-batch SGD step (lr 0.25) of (h b x - y)^2 on x = 1, y = 1 from b = 1, h = 0.5:
    dh = 2 (0.5 - 1) * 1 = -1, h = 0.75, b stays 1; on x = 2, y = 2: (0.75 * 2 - 2)^2 = 0.25
    (the body epochs of a round would then move b: db = 2 (0.75 - 1) 0.75 = -0.375)."""
    one = np.ones((1, 1), np.float32)
    train = ClientData.from_mapping({"n": (one, one)})
    test = ClientData.from_mapping({"n": (2 * one, 2 * one)})
    store = ClientStateStore.create(tmp_path, ["t"], fedper_state_spec(_two_scalars, None))
    process = build_fedrep(
        _two_scalars, store, head_epochs=1, client_epochs=3,
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=0.25), loss_fn=F.mse_loss,
        batch_size=10, shuffle=False, client_pipeline="epochs",
        metrics_fn=lambda o, t: torch.tensor(0.0),
    )  # fmt: skip
    weights = process.get_model_weights(process.initialize())
    (m,) = evaluate_new_clients(
        process.client_work, weights, train, test, ["n"], F.mse_loss, InProcessExecutor(), 1
    )
    assert m["loss"] == 0.25 and m["num_test_examples"] == 1
    assert not store.initialised("t")


def test_a_run_without_a_stateful_method_writes_what_it_did(tmp_path):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    res = CliRunner().invoke(
        app,
        ["run", *args, "--strategy", "sgd:0.02", "--no-progress", "--output-dir", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    assert not (tmp_path / rd.OWN_STATE_PER_CLIENT).exists()
    assert not (tmp_path / rd.CLIENT_STATE).exists()
    summary = json.loads((tmp_path / rd.SUMMARY).read_text())
    assert list(summary) == [
        "num_clients", "headline", "baseline", "strategies", "selected", "tuning", "best",
        "confidence_interval", "unchanged_tolerance",
    ]  # fmt: skip
    report = (tmp_path / rd.REPORT).read_text()
    assert 'id="protocols"' not in report and "own_state" not in res.output
