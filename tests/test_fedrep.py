"""FedRep (Collins et al. 2021): rounds against a plain torch loop of its schedule (the head
alone, then the body alone; heads kept per client, body averaged), settings from the
command line and TOML, a short run, bad settings."""

from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_fedrep, build_weighted_fed_avg, fedper_state_spec
from fedp13n.algorithms.fed_avg import ClientSelection
from fedp13n.cli.main import app
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


def _sgd_epochs(model, x, y, names, epochs, lr):
    """``epochs`` passes of plain SGD steps on batches of 2 in order, only ``names`` moving."""
    params = dict(model.named_parameters())
    for _ in range(epochs):
        for s in range(0, len(y), 2):
            loss = F.cross_entropy(model(x[s : s + 2]), y[s : s + 2])
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            with torch.no_grad():
                for n, g in zip(names, grads, strict=True):
                    params[n] -= lr * g


def _plain_fedrep(lr: float, head_epochs: int, body_epochs: int) -> tuple[dict, dict]:
    """FedRep written out: per client, the head alone for head_epochs, then the body alone
    for body_epochs; heads kept in a dict (a fresh one: the initial head), the body the
    example-weighted mean of the clients' bodies."""
    cd, model = _client_data(), _linear()
    global_w = {n: t.detach().clone() for n, t in model.state_dict().items()}
    heads: dict[str, dict] = {}
    for clients in SCHEDULE:
        trained = []
        for c in clients:
            d = cd.create_dataset(c)
            x, y = torch.from_numpy(d.x), torch.from_numpy(d.y)
            model.load_state_dict({**global_w, **heads.get(c, {})})
            _sgd_epochs(model, x, y, HEAD, head_epochs, lr)
            _sgd_epochs(model, x, y, BODY, body_epochs, lr)
            w = {n: p.detach().clone() for n, p in model.named_parameters()}
            heads[c] = {n: w[n] for n in HEAD}
            trained.append((len(y), w))
        total = sum(n for n, _ in trained)
        for name in BODY:
            global_w[name] = sum(n * w[name] for n, w in trained) / total
    return global_w, heads


def test_three_rounds_against_a_plain_torch_loop(tmp_path):
    cd = _client_data()
    store = ClientStateStore.create(tmp_path, cd.client_ids, fedper_state_spec(_linear, None))
    process = build_fedrep(
        _linear, store, head_epochs=3, client_epochs=2, batch_size=2, shuffle=False,
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=0.1),
        server_optimizer_fn=PLAIN_SERVER, client_pipeline="epochs",
    )  # fmt: skip
    assert process.client_work.head_epochs == 3 and process.client_work.personal == HEAD
    state = process.initialize()
    for r, clients in enumerate(SCHEDULE, start=1):
        state, _ = process.next(state, ClientSelection(cd, clients))
        store.commit(r)
    expected_w, expected_heads = _plain_fedrep(0.1, 3, 2)
    for n in BODY:
        torch.testing.assert_close(state.model[n], expected_w[n], rtol=0, atol=1e-6)
    init = _linear().state_dict()
    assert all(torch.equal(state.model[n], init[n]) for n in HEAD)  # never averaged
    for c in "abc":
        for n in HEAD:
            torch.testing.assert_close(store.get(c)[n], expected_heads[c][n], rtol=0, atol=1e-6)
    # not FedPer: training both together for the same epochs ends elsewhere
    fedper_w, _ = _plain_fedrep(0.1, 0, 2)
    assert not torch.allclose(expected_w["0.weight"], fedper_w["0.weight"], atol=1e-4)


def test_head_epochs_default_and_bad_settings(tmp_path):
    store = ClientStateStore.create(tmp_path, ["x"], fedper_state_spec(_linear, None))
    assert build_fedrep(_linear, store).client_work.head_epochs == 10  # the paper's
    with pytest.raises(ValueError, match="head_epochs is FedRep's"):
        build_weighted_fed_avg(_linear, head_epochs=3)
    with pytest.raises(ValueError, match="head_epochs must be a positive integer"):
        build_fedrep(_linear, store, head_epochs=0)


def test_from_toml_and_the_command_line(tmp_path):
    from fedp13n.experiments.config import ExperimentConfig
    from fedp13n.experiments.p13n_experiment import build_stage_process
    from fedp13n.models import emnist_conv_dropout
    from fedp13n.utils.device import Compute

    toml = tmp_path / "c.toml"
    toml.write_text('dataset = "synthetic"\nmethod = "fedrep"\nhead_epochs = 4\n')
    config = ExperimentConfig.from_toml(toml)
    config.validate()
    (stage,) = config.resolved_stages()
    model_fn = functools.partial(emnist_conv_dropout, num_classes=62)
    store = ClientStateStore.create(tmp_path / "s", ["x"], fedper_state_spec(model_fn, None))
    work = build_stage_process(config, stage, None, Compute(), store).client_work
    assert (work.head_epochs, work.personal) == (4, ("fc2.weight", "fc2.bias"))

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--synthetic-clients", "20", "--rounds", "2",
        "--clients-per-round", "3", "--local-steps", "2", "--batch-size", "10",
        "--num-eval-clients", "2", "--executor", "in-process", "--no-progress", "--no-report",
        "--strategy", "sgd:0.02", "--p13n-epochs", "1", "--method", "fedrep",
        "--head-epochs", "1", "--output-dir", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert 'method = "fedrep"' in (out / rd.CONFIG).read_text()
    with open(out / rd.OWN_STATE_PER_CLIENT, newline="") as f:
        protocols = [r["protocol"] for r in csv.DictReader(f)]
    assert protocols == ["own_state"] * 2 + ["new_clients"] * 2
