"""LG-FedAvg (Liang et al. 2020): rounds against a plain torch loop (personal bodies kept per
client, the head averaged), its default personal layers, the own-state protocol with the
stored body, and a short run from the command line."""

from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_lg_fedavg, build_weighted_fed_avg, fedper_state_spec
from fedp13n.algorithms.fed_avg import ClientSelection
from fedp13n.algorithms.own_state import evaluate_own_state
from fedp13n.cli.main import app
from fedp13n.client.program import evaluate
from fedp13n.data.client_data import ClientData
from fedp13n.rundir import layout as rd
from fedp13n.state import ClientStateStore

PLAIN_SERVER = functools.partial(torch.optim.SGD, lr=1.0)  # global = weighted mean of clients
HEAD, BODY = ("1.weight", "1.bias"), ("0.weight", "0.bias")
SCHEDULE = [["a", "b"], ["b", "c"], ["a", "b", "c"]]  # each round's clients


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))


def _client_data() -> ClientData:
    rng = np.random.default_rng(1)
    ids = ["a", "b", "c"]
    x = {c: rng.normal(size=(n, 4)).astype(np.float32) for c, n in zip(ids, (6, 3, 5), strict=True)}
    y = {c: rng.integers(0, 3, len(x[c])).astype(np.int64) for c in ids}
    return ClientData.from_mapping({c: (x[c], y[c]) for c in ids})


def _plain_lg_fedavg(lr: float, epochs: int) -> tuple[dict, dict]:
    """LG-FedAvg written out: per client, body and head train together (plain SGD, batches
    of 2 in order) from the global head and its own body (a fresh client: the initial
    body); bodies kept in a dict, the head the example-weighted mean of the clients'."""
    cd, model = _client_data(), _linear()
    global_w = {n: t.detach().clone() for n, t in model.state_dict().items()}
    bodies: dict[str, dict] = {}
    params = dict(model.named_parameters())
    for clients in SCHEDULE:
        trained = []
        for c in clients:
            d = cd.create_dataset(c)
            x, y = torch.from_numpy(d.x), torch.from_numpy(d.y)
            model.load_state_dict({**global_w, **bodies.get(c, {})})
            for _ in range(epochs):
                for s in range(0, len(y), 2):
                    loss = F.cross_entropy(model(x[s : s + 2]), y[s : s + 2])
                    grads = torch.autograd.grad(loss, list(params.values()))
                    with torch.no_grad():
                        for p, g in zip(params.values(), grads, strict=True):
                            p -= lr * g
            w = {n: p.detach().clone() for n, p in params.items()}
            bodies[c] = {n: w[n] for n in BODY}
            trained.append((len(y), w))
        total = sum(n for n, _ in trained)
        for name in HEAD:
            global_w[name] = sum(n * w[name] for n, w in trained) / total
    return global_w, bodies


def test_three_rounds_against_a_plain_torch_loop(tmp_path):
    cd = _client_data()
    spec = fedper_state_spec(_linear, None, "lg_fedavg")
    assert list(spec) == list(BODY)  # everything but the head
    store = ClientStateStore.create(tmp_path, cd.client_ids, spec)
    process = build_lg_fedavg(
        _linear, store, client_epochs=2, batch_size=2, shuffle=False,
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=0.1),
        server_optimizer_fn=PLAIN_SERVER, client_pipeline="epochs",
    )  # fmt: skip
    assert process.client_work.personal == BODY
    state = process.initialize()
    for r, clients in enumerate(SCHEDULE, start=1):
        state, _ = process.next(state, ClientSelection(cd, clients))
        store.commit(r)
    expected_w, expected_bodies = _plain_lg_fedavg(0.1, 2)
    for n in HEAD:
        torch.testing.assert_close(state.model[n], expected_w[n], rtol=0, atol=1e-6)
    init = _linear().state_dict()
    assert all(torch.equal(state.model[n], init[n]) for n in BODY)  # never averaged
    for c in "abc":
        for n in BODY:
            torch.testing.assert_close(store.get(c)[n], expected_bodies[c][n], rtol=0, atol=1e-6)

    # own-state protocol: each client's own body under the global head, on its data
    got = evaluate_own_state(_linear, state.model, store, cd, ["a", "c"], F.cross_entropy)
    model = _linear()
    for c, metrics in zip("ac", got, strict=True):
        model.load_state_dict({**expected_w, **expected_bodies[c]})
        want = evaluate(model, cd.create_dataset(c), F.cross_entropy)
        assert metrics["loss"] == pytest.approx(want["loss"], abs=1e-6)
        assert metrics["accuracy"] == want["accuracy"]


def test_personal_layers_and_bad_settings(tmp_path):
    named = fedper_state_spec(_linear, "1", "lg_fedavg")  # named: exactly those
    assert list(named) == list(HEAD)
    with pytest.raises(ValueError, match="has only a head"):
        fedper_state_spec(lambda: nn.Linear(3, 2), None, "lg_fedavg")
    head_store = ClientStateStore.create(tmp_path, ["x"], fedper_state_spec(_linear, None))
    with pytest.raises(ValueError, match="'lg_fedavg'"):  # a FedPer store: the head only
        build_lg_fedavg(_linear, head_store)
    with pytest.raises(ValueError, match="method must be one of"):
        build_weighted_fed_avg(_linear, method="lg-fedavg")


def test_from_toml_and_the_command_line(tmp_path):
    from fedp13n.experiments.config import ExperimentConfig
    from fedp13n.experiments.p13n_experiment import build_stage_process
    from fedp13n.models import emnist_conv_dropout
    from fedp13n.utils.device import Compute

    toml = tmp_path / "c.toml"
    toml.write_text('dataset = "synthetic"\nmethod = "lg_fedavg"\n')
    config = ExperimentConfig.from_toml(toml)
    config.validate()
    (stage,) = config.resolved_stages()
    model_fn = functools.partial(emnist_conv_dropout, num_classes=62)
    spec = fedper_state_spec(model_fn, None, "lg_fedavg")
    store = ClientStateStore.create(tmp_path / "s", ["x"], spec)
    work = build_stage_process(config, stage, None, Compute(), store).client_work
    assert work.personal == ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                             "fc1.weight", "fc1.bias")  # fmt: skip

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--synthetic-clients", "20", "--rounds", "2",
        "--clients-per-round", "3", "--local-steps", "2", "--batch-size", "10",
        "--num-eval-clients", "2", "--executor", "in-process", "--no-progress", "--no-report",
        "--strategy", "sgd:0.02", "--p13n-epochs", "1", "--method", "lg_fedavg",
        "--output-dir", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert 'method = "lg_fedavg"' in (out / rd.CONFIG).read_text()
    with open(out / rd.OWN_STATE_PER_CLIENT, newline="") as f:
        protocols = [r["protocol"] for r in csv.DictReader(f)]
    assert protocols == ["own_state"] * 2 + ["new_clients"] * 2
