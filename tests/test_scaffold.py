"""SCAFFOLD (Karimireddy et al. 2020, Option II): two rounds of three clients against the
paper's formulas written out in torch (the second round with non-zero c and c_i), the
server's c through a checkpoint and resume bit for bit, settings and errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.algorithms import build_scaffold, build_weighted_fed_avg, fedper_state_spec
from fedp13n.algorithms.checkpoint import load_checkpoint, save_checkpoint
from fedp13n.algorithms.fed_avg import ClientSelection
from fedp13n.algorithms.fedper import client_model_weights
from fedp13n.data.client_data import ClientData
from fedp13n.state import ClientStateStore

PLAIN_SERVER = functools.partial(torch.optim.SGD, lr=1.0)  # x <- weighted mean of the y_i
SCHEDULE = [["a", "b"], ["b", "c"]]  # N = 3 clients
LR = 0.1


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _client_data() -> ClientData:
    rng = np.random.default_rng(2)
    ids = ["a", "b", "c"]
    x = {c: rng.normal(size=(n, 3)).astype(np.float32) for c, n in zip(ids, (4, 2, 4), strict=True)}
    y = {c: rng.integers(0, 2, len(x[c])).astype(np.int64) for c in ids}
    return ClientData.from_mapping({c: (x[c], y[c]) for c in ids})


def _plain_scaffold() -> tuple[dict, dict, dict]:
    """Algorithm 1 written out: K steps y <- y - lr (g - c_i + c) on batches of 2 in order,
    c_i+ = c_i - c + (x - y) / (K lr), x <- example-weighted mean of the y_i (FedAvg),
    c <- c + sum(c_i+ - c_i) / N."""
    cd, model = _client_data(), _linear()
    x_w = {n: t.detach().clone() for n, t in model.state_dict().items()}
    c = {n: torch.zeros_like(t) for n, t in x_w.items()}
    c_i: dict[str, dict] = {k: {n: torch.zeros_like(t) for n, t in x_w.items()} for k in "abc"}
    params = dict(model.named_parameters())
    for clients in SCHEDULE:
        ys, new_c = [], {}
        for k in clients:
            d = cd.create_dataset(k)
            xs, ys_ = torch.from_numpy(d.x), torch.from_numpy(d.y)
            model.load_state_dict(x_w)
            steps = 0
            for s in range(0, len(ys_), 2):
                loss = F.cross_entropy(model(xs[s : s + 2]), ys_[s : s + 2])
                grads = torch.autograd.grad(loss, list(params.values()))
                with torch.no_grad():
                    for (n, p), g in zip(params.items(), grads, strict=True):
                        p -= LR * (g - c_i[k][n] + c[n])
                steps += 1
            y = {n: p.detach().clone() for n, p in params.items()}
            new_c[k] = {n: c_i[k][n] - c[n] + (x_w[n] - y[n]) / (steps * LR) for n in y}
            ys.append((len(ys_), y))
        total = sum(m for m, _ in ys)
        x_w = {n: sum(m * y[n] for m, y in ys) / total for n in x_w}
        c = {n: c[n] + sum(new_c[k][n] - c_i[k][n] for k in clients) / 3 for n in c}
        c_i.update(new_c)
    return x_w, c, c_i


def _process(store):
    return build_scaffold(
        _linear, store, client_epochs=1, batch_size=2, shuffle=False, client_pipeline="epochs",
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=LR),
        server_optimizer_fn=PLAIN_SERVER,
    )  # fmt: skip


def test_two_rounds_against_the_papers_formulas(tmp_path):
    cd = _client_data()
    store = ClientStateStore.create(
        tmp_path, cd.client_ids, fedper_state_spec(_linear, None, "scaffold")
    )
    process = _process(store)
    state = process.initialize()
    assert all(torch.equal(t, torch.zeros_like(t)) for t in state.method_state.values())
    for r, clients in enumerate(SCHEDULE, start=1):
        state, _ = process.next(state, ClientSelection(cd, clients))
        store.commit(r)
    want_x, want_c, want_ci = _plain_scaffold()
    for n in want_x:
        torch.testing.assert_close(state.model[n], want_x[n], rtol=0, atol=1e-6)
        torch.testing.assert_close(state.method_state[n], want_c[n], rtol=0, atol=1e-6)
        for k in "abc":
            torch.testing.assert_close(store.get(k)[n], want_ci[k][n], rtol=0, atol=1e-6)
    assert not torch.allclose(want_c["weight"], torch.zeros(2, 3), atol=1e-3)  # c moved
    # not FedAvg: the corrections change round 2
    fedavg = build_weighted_fed_avg(_linear, client_epochs=1, batch_size=2, shuffle=False,
        client_pipeline="epochs", client_optimizer_fn=functools.partial(torch.optim.SGD, lr=LR),
        server_optimizer_fn=PLAIN_SERVER)  # fmt: skip
    plain = fedavg.initialize()
    for clients in SCHEDULE:
        plain, _ = fedavg.next(plain, ClientSelection(cd, clients))
    assert not torch.allclose(plain.model["weight"], state.model["weight"], atol=1e-4)
    # the own-state protocol evaluates the global model (the state is control variates)
    own = client_model_weights("scaffold", state.model, store.get("a"))
    assert all(torch.equal(own[n], state.model[n]) for n in state.model)


def test_checkpoint_and_resume_are_bit_identical(tmp_path):
    cd = _client_data()
    spec = fedper_state_spec(_linear, None, "scaffold")
    a = ClientStateStore.create(tmp_path / "a", cd.client_ids, spec)
    process = _process(a)
    state = process.initialize()
    for r, clients in enumerate(SCHEDULE, start=1):
        state, _ = process.next(state, ClientSelection(cd, clients))
        a.commit(r)
    b = ClientStateStore.create(tmp_path / "b", cd.client_ids, spec)
    first = _process(b)
    mid, _ = first.next(first.initialize(), ClientSelection(cd, SCHEDULE[0]))
    b.commit(1)
    save_checkpoint(tmp_path / "round_1.pt", mid)
    b.close()
    reopened = ClientStateStore.open(tmp_path / "b")
    reopened.restore(1)
    resumed = load_checkpoint(tmp_path / "round_1.pt")
    assert all(torch.equal(resumed.method_state[n], mid.method_state[n]) for n in spec)
    end, _ = _process(reopened).next(resumed, ClientSelection(cd, SCHEDULE[1]))
    for n in state.model:
        assert torch.equal(end.model[n], state.model[n])
        assert torch.equal(end.method_state[n], state.method_state[n])
        for k in "abc":
            assert torch.equal(reopened.get(k)[n], a.get(k)[n])


def test_bad_settings(tmp_path):
    store = ClientStateStore.create(tmp_path, ["x"], fedper_state_spec(_linear, None, "scaffold"))
    with pytest.raises(ValueError, match="proximal_mu does not combine"):
        build_scaffold(_linear, store, proximal_mu=0.1)
    with pytest.raises(ValueError, match="keeps control variates"):
        build_scaffold(_linear, store, personal_layers="weight")
    with pytest.raises(TypeError, match="ClientStateStore"):
        build_weighted_fed_avg(_linear, method="scaffold")


def test_from_the_command_line(tmp_path):
    import csv

    from typer.testing import CliRunner

    from fedp13n.cli.main import app
    from fedp13n.rundir import layout as rd

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--synthetic-clients", "20", "--rounds", "2",
        "--clients-per-round", "3", "--local-steps", "2", "--batch-size", "10",
        "--num-eval-clients", "2", "--executor", "in-process", "--no-progress", "--no-report",
        "--strategy", "sgd:0.02", "--p13n-epochs", "1", "--method", "scaffold",
        "--checkpoint-every", "1", "--output-dir", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert 'method = "scaffold"' in (out / rd.CONFIG).read_text()
    c = load_checkpoint(rd.checkpoint_path(out, 2)).method_state
    assert set(c) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                      "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}  # fmt: skip
    assert any(bool(t.abs().sum() > 0) for t in c.values())
    with open(out / rd.OWN_STATE_PER_CLIENT, newline="") as f:
        protocols = [r["protocol"] for r in csv.DictReader(f)]
    assert protocols == ["own_state"] * 2 + ["new_clients"] * 2
