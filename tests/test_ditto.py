"""Ditto (Li et al. 2021): rounds against a plain torch loop (FedAvg's global model, a
personal model per client pulled to the round's global model), the global model equal to
FedAvg's bit for bit, the own-state protocol on the personal models, TOML and the command
line."""

from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_ditto, build_weighted_fed_avg, fedper_state_spec
from fedp13n.algorithms.fed_avg import ClientSelection
from fedp13n.algorithms.own_state import evaluate_own_state
from fedp13n.cli.main import app
from fedp13n.client.program import evaluate
from fedp13n.data.client_data import ClientData
from fedp13n.rundir import layout as rd
from fedp13n.state import ClientStateStore

PLAIN_SERVER = functools.partial(torch.optim.SGD, lr=1.0)  # global = weighted mean of clients
SCHEDULE = [["a", "b"], ["b", "c"], ["a", "b", "c"]]  # each round's clients
LR, LAM = 0.1, 0.5


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))


def _client_data() -> ClientData:
    rng = np.random.default_rng(1)
    ids = ["a", "b", "c"]
    x = {c: rng.normal(size=(n, 4)).astype(np.float32) for c, n in zip(ids, (6, 3, 5), strict=True)}
    y = {c: rng.integers(0, 3, len(x[c])).astype(np.int64) for c in ids}
    return ClientData.from_mapping({c: (x[c], y[c]) for c in ids})


def _sgd(model, x, y, epochs, anchor=None):
    """Plain SGD on batches of 2 in order; with ``anchor``: + LAM * (p - anchor) (Ditto)."""
    params = dict(model.named_parameters())
    for _ in range(epochs):
        for s in range(0, len(y), 2):
            loss = F.cross_entropy(model(x[s : s + 2]), y[s : s + 2])
            grads = torch.autograd.grad(loss, list(params.values()))
            with torch.no_grad():
                for (n, p), g in zip(params.items(), grads, strict=True):
                    p -= LR * (g if anchor is None else g + LAM * (p - anchor[n]))


def _plain_ditto(epochs: int) -> tuple[dict, dict]:
    """Ditto written out: w by FedAvg (example-weighted mean of the clients' trained w);
    each client's v (first: w^t) trained with the pull to w^t for the same epochs."""
    cd, model = _client_data(), _linear()
    global_w = {n: t.detach().clone() for n, t in model.state_dict().items()}
    personal: dict[str, dict] = {}
    for clients in SCHEDULE:
        trained = []
        for c in clients:
            d = cd.create_dataset(c)
            x, y = torch.from_numpy(d.x), torch.from_numpy(d.y)
            model.load_state_dict(global_w)
            _sgd(model, x, y, epochs)
            trained.append((len(y), {n: p.detach().clone() for n, p in model.named_parameters()}))
            model.load_state_dict({**global_w, **personal.get(c, {})})
            _sgd(model, x, y, epochs, anchor=global_w)
            personal[c] = {n: p.detach().clone() for n, p in model.named_parameters()}
        total = sum(n for n, _ in trained)
        global_w = {n: sum(k * w[n] for k, w in trained) / total for n in global_w}
    return global_w, personal


def _settings() -> dict:
    return dict(
        client_epochs=2, batch_size=2, shuffle=False, client_pipeline="epochs",
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=LR),
        server_optimizer_fn=PLAIN_SERVER,
    )  # fmt: skip


def test_three_rounds_against_a_plain_torch_loop(tmp_path):
    cd = _client_data()
    spec = fedper_state_spec(_linear, None, "ditto")
    assert list(spec) == ["0.weight", "0.bias", "1.weight", "1.bias"]  # the whole model
    store = ClientStateStore.create(tmp_path, cd.client_ids, spec)
    process = build_ditto(_linear, store, ditto_lambda=LAM, **_settings())
    fedavg = build_weighted_fed_avg(_linear, **_settings())
    state, plain = process.initialize(), fedavg.initialize()
    for r, clients in enumerate(SCHEDULE, start=1):
        state, metrics = process.next(state, ClientSelection(cd, clients))
        plain, plain_metrics = fedavg.next(plain, ClientSelection(cd, clients))
        store.commit(r)
        assert metrics.loss == plain_metrics.loss  # the round's metrics: the global phase's
    for n in state.model:  # the global model is FedAvg's, bit for bit
        assert torch.equal(state.model[n], plain.model[n])
    expected_w, expected_v = _plain_ditto(2)
    for n in state.model:
        torch.testing.assert_close(state.model[n], expected_w[n], rtol=0, atol=1e-6)
    for c in "abc":
        for n in spec:
            torch.testing.assert_close(store.get(c)[n], expected_v[c][n], rtol=0, atol=1e-6)
    # the pull matters: lambda = 0 ends elsewhere
    assert not torch.allclose(expected_v["a"]["0.weight"], expected_w["0.weight"], atol=1e-3)

    # own-state protocol: each client's whole personal model on its data
    got = evaluate_own_state(
        _linear, state.model, store, cd, ["a", "c"], F.cross_entropy, method="ditto"
    )
    model = _linear()
    for c, metrics in zip("ac", got, strict=True):
        model.load_state_dict(expected_v[c])
        want = evaluate(model, cd.create_dataset(c), F.cross_entropy)
        assert metrics["loss"] == pytest.approx(want["loss"], abs=1e-6)


def test_defaults_and_bad_settings(tmp_path):
    store = ClientStateStore.create(tmp_path, ["x"], fedper_state_spec(_linear, None, "ditto"))
    assert build_ditto(_linear, store).client_work.ditto_lambda == 1.0  # FL-bench's
    with pytest.raises(ValueError, match="ditto_lambda is Ditto's"):
        build_weighted_fed_avg(_linear, ditto_lambda=0.1)
    with pytest.raises(ValueError, match="ditto_lambda must be a finite number >= 0"):
        build_ditto(_linear, store, ditto_lambda=-1)
    with pytest.raises(ValueError, match="keeps a whole personal model"):
        build_ditto(_linear, store, personal_layers="1")


def test_from_toml_and_the_command_line(tmp_path):
    from fedp13n.experiments.config import ExperimentConfig
    from fedp13n.experiments.p13n_experiment import build_stage_process
    from fedp13n.models import emnist_conv_dropout
    from fedp13n.utils.device import Compute

    toml = tmp_path / "c.toml"
    toml.write_text('dataset = "synthetic"\nmethod = "ditto"\nditto_lambda = 0.25\n')
    config = ExperimentConfig.from_toml(toml)
    config.validate()
    (stage,) = config.resolved_stages()
    model_fn = functools.partial(emnist_conv_dropout, num_classes=62)
    store = ClientStateStore.create(
        tmp_path / "s", ["x"], fedper_state_spec(model_fn, None, "ditto")
    )
    work = build_stage_process(config, stage, None, Compute(), store).client_work
    assert (work.ditto_lambda, work.personal) == (0.25, ())

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--synthetic-clients", "20", "--rounds", "2",
        "--clients-per-round", "3", "--local-steps", "2", "--batch-size", "10",
        "--num-eval-clients", "2", "--executor", "in-process", "--no-progress", "--no-report",
        "--strategy", "sgd:0.02", "--p13n-epochs", "1", "--method", "ditto",
        "--ditto-lambda", "0.1", "--output-dir", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "ditto_lambda = 0.1" in (out / rd.CONFIG).read_text()
    with open(out / rd.OWN_STATE_PER_CLIENT, newline="") as f:
        protocols = [r["protocol"] for r in csv.DictReader(f)]
    assert protocols == ["own_state"] * 2 + ["new_clients"] * 2
