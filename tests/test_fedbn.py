"""FedBN (Li et al. 2021): three rounds against a hand-written loop (batch norm written out:
batch statistics in training, running statistics with torch's momentum 0.1 and unbiased
variance), each client's BN parameters and statistics in the store, the rest averaged, the
own-state protocol with a client's statistics, TOML and the command line."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_fedbn, build_weighted_fed_avg, fedper_state_spec
from fedp13n.algorithms.fed_avg import ClientSelection
from fedp13n.algorithms.own_state import evaluate_own_state
from fedp13n.cli.main import app
from fedp13n.data.client_data import ClientData
from fedp13n.rundir import layout as rd
from fedp13n.state import ClientStateStore

SCHEDULE = [["a", "b"], ["b", "c"], ["a", "b", "c"]]
LR, EPS, MOMENTUM = 0.1, 1e-5, 0.1
BN = ("1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked")


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def _client_data() -> ClientData:
    rng = np.random.default_rng(2)
    ids = ["a", "b", "c"]
    x = {c: rng.normal(size=(n, 4)).astype(np.float32) for c, n in zip(ids, (6, 4, 4), strict=True)}
    y = {c: rng.integers(0, 3, len(x[c])).astype(np.int64) for c in ids}
    return ClientData.from_mapping({c: (x[c], y[c]) for c in ids})


def _forward(p: dict, x: torch.Tensor, train: bool) -> torch.Tensor:
    """The model by hand; in training, the batch's statistics (biased variance) normalize
    and the running ones move by MOMENTUM (unbiased variance), as torch documents."""
    h = x @ p["0.weight"].T + p["0.bias"]
    if train:
        mean, var = h.mean(0), h.var(0, unbiased=False)
        with torch.no_grad():
            n = len(h)
            p["1.running_mean"] = (1 - MOMENTUM) * p["1.running_mean"] + MOMENTUM * mean
            p["1.running_var"] = (1 - MOMENTUM) * p["1.running_var"] + MOMENTUM * var * n / (n - 1)
            p["1.num_batches_tracked"] = p["1.num_batches_tracked"] + 1
    else:
        mean, var = p["1.running_mean"], p["1.running_var"]
    h = (h - mean) / torch.sqrt(var + EPS) * p["1.weight"] + p["1.bias"]
    return torch.relu(h) @ p["3.weight"].T + p["3.bias"]


def _plain_fedbn(epochs: int) -> tuple[dict, dict]:
    """FedBN written out: each client trains everything from the global non-BN weights and
    its own BN entries (first: the initial ones); the server averages the non-BN weights
    (example-weighted) and keeps its BN; each client keeps its trained BN entries."""
    init = {n: t.detach().clone() for n, t in _bn_model().state_dict().items()}
    global_w = dict(init)
    local: dict[str, dict] = {}
    cd = _client_data()
    trainable = [n for n in init if "running" not in n and "num_batches" not in n]
    for clients in SCHEDULE:
        trained = []
        for c in clients:
            d = cd.create_dataset(c)
            x, y = torch.from_numpy(d.x), torch.from_numpy(d.y)
            p = {**global_w, **local.get(c, {n: init[n] for n in BN})}
            p = {n: t.clone().requires_grad_(n in trainable) for n, t in p.items()}
            for _ in range(epochs):
                for s in range(0, len(y), 2):
                    loss = F.cross_entropy(_forward(p, x[s : s + 2], True), y[s : s + 2])
                    grads = torch.autograd.grad(loss, [p[n] for n in trainable])
                    with torch.no_grad():
                        for n, g in zip(trainable, grads, strict=True):
                            p[n] = (p[n] - LR * g).requires_grad_()
            trained.append((len(y), {n: t.detach() for n, t in p.items()}))
            local[c] = {n: p[n].detach() for n in BN}
        total = sum(k for k, _ in trained)
        for n in trainable:
            if n not in BN:
                global_w[n] = sum(k * w[n] for k, w in trained) / total
    return global_w, local


def _settings(**more) -> dict:
    return dict(
        client_epochs=2, batch_size=2, shuffle=False, client_pipeline="epochs",
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=LR),
        server_optimizer_fn=functools.partial(torch.optim.SGD, lr=1.0), **more,
    )  # fmt: skip


@pytest.mark.parametrize("buffer_aggregation", ["keep", "average"])
def test_three_rounds_against_a_hand_written_loop(tmp_path, buffer_aggregation):
    cd = _client_data()
    spec = fedper_state_spec(_bn_model, None, "fedbn")
    assert tuple(spec) == BN and spec["1.num_batches_tracked"] == ((), "int64")
    store = ClientStateStore.create(tmp_path, cd.client_ids, spec)
    process = build_fedbn(_bn_model, store, **_settings(buffer_aggregation=buffer_aggregation))
    state = process.initialize()
    initial = {n: t.clone() for n, t in state.model.items()}
    for r, clients in enumerate(SCHEDULE, start=1):
        state, _ = process.next(state, ClientSelection(cd, clients))
        store.commit(r)
    expected_w, expected_bn = _plain_fedbn(2)
    for n in state.model:
        want = initial[n] if n in BN else expected_w[n]  # the server's BN never changes
        torch.testing.assert_close(state.model[n], want, rtol=0, atol=1e-6)
    for c in "abc":
        got = store.get(c)
        for n in BN:
            torch.testing.assert_close(got[n], expected_bn[c][n], rtol=1e-6, atol=1e-6)
    assert int(store.get("b")["1.num_batches_tracked"]) == 3 * 2 * 2  # 3 rounds, 2 epochs x 2
    assert not torch.allclose(store.get("a")["1.running_mean"], store.get("c")["1.running_mean"])

    # own state: the global non-BN weights with the client's BN parameters and statistics
    got = evaluate_own_state(_bn_model, state.model, store, cd, ["a", "c"], F.cross_entropy,
                             method="fedbn")  # fmt: skip
    for c, metrics in zip("ac", got, strict=True):
        d = cd.create_dataset(c)
        p = {**expected_w, **expected_bn[c]}
        want = F.cross_entropy(_forward(p, torch.from_numpy(d.x), False), torch.from_numpy(d.y))
        assert metrics["loss"] == pytest.approx(float(want), abs=1e-6)


def test_bad_settings(tmp_path):
    def plain():
        return nn.Sequential(nn.Linear(4, 3))

    with pytest.raises(ValueError, match="has none; use a model with batch norms"):
        fedper_state_spec(plain, None, "fedbn")
    store = ClientStateStore.create(tmp_path, ["x"], fedper_state_spec(_bn_model, None, "fedbn"))
    with pytest.raises(ValueError, match="leave personal_layers out"):
        build_fedbn(_bn_model, store, personal_layers="3")
    assert build_weighted_fed_avg(_bn_model, method="fedbn", client_state=store).personal == BN


def test_from_toml_and_the_command_line(tmp_path):
    from fedp13n.experiments.config import ExperimentConfig

    toml = tmp_path / "c.toml"
    toml.write_text('dataset = "synthetic"\nmodel = "conv_bn"\nmethod = "fedbn"\n')
    config = ExperimentConfig.from_toml(toml)
    config.validate()
    assert config.resolved_stages()[0].method == "fedbn"

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--synthetic-clients", "20", "--rounds", "2",
        "--clients-per-round", "3", "--local-steps", "2", "--batch-size", "10",
        "--num-eval-clients", "2", "--executor", "in-process", "--no-progress", "--no-report",
        "--strategy", "sgd:0.02", "--p13n-epochs", "1", "--method", "fedbn",
        "--model", "conv_bn", "--output-dir", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    store = ClientStateStore.open(out / rd.CLIENT_STATE)
    assert "bn2.running_var" in store.spec and store.num_initialised == 6
    with open(out / rd.OWN_STATE_PER_CLIENT, newline="") as f:
        protocols = [r["protocol"] for r in csv.DictReader(f)]
    assert protocols == ["own_state"] * 2 + ["new_clients"] * 2

    bad = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--synthetic-clients", "20", "--rounds", "1",
        "--method", "fedbn", "--executor", "in-process", "--no-progress", "--no-report",
        "--output-dir", str(tmp_path / "bad"),
    ])  # fmt: skip
    assert bad.exit_code == 2 and "use a model with batch norms" in bad.output


def test_the_registered_models_with_batch_norms_are_the_ones_named_so():
    from fedp13n.models.registry import BATCH_NORM_MODELS, MODEL_NAMES, model_fn_for

    def has_batch_norm(name: str) -> bool:
        model = model_fn_for(name, 90 if name.startswith("shakespeare") else 62)()
        return any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())

    named = {m for m in MODEL_NAMES if has_batch_norm(m)}
    assert set(BATCH_NORM_MODELS) == named == {"conv_bn", "dnn_bn", "shakespeare_rnn_bn"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (  # Shakespeare's default model has none, its shakespeare_rnn_bn has
            ["--task", "shakespeare", "--method", "fedbn"],
            "error: method 'fedbn' keeps the batch-norm layers local, but model "
            "'shakespeare_rnn' has none; use a model with batch norms: --model "
            "shakespeare_rnn_bn (model = 'shakespeare_rnn_bn').",
        ),
        (
            ["--task", "shakespeare", "--stage", "warmup:rounds=1", "--stage", "bn:method=fedbn"],
            "error: stage 'bn' method 'fedbn' keeps the batch-norm layers local, but model "
            "'shakespeare_rnn' has none; use a model with batch norms: --model shakespeare_rnn_bn",
        ),
        (  # EMNIST's default model has none, its conv_bn has
            ["--method", "fedbn"],
            "error: method 'fedbn' keeps the batch-norm layers local, but model "
            "'conv_dropout' has none; use a model with batch norms: --model conv_bn "
            "(model = 'conv_bn').",
        ),
    ],
)
def test_a_model_without_batch_norms_stops_fedbn_before_any_data_loads(tmp_path, args, message):
    # no data_dir: the check comes before Shakespeare's data (or EMNIST's download) is needed
    res = CliRunner().invoke(app, ["run", *args, "--output-dir", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
    assert not (tmp_path / "run").exists()


# -- FedBN on Shakespeare: the LSTM with a batch norm ---------------------------------------------
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare_sample"


def test_the_shakespeare_batch_norm_model_normalises_each_lstm_feature():
    from fedp13n.models import default_head, shakespeare_rnn_bn

    torch.manual_seed(0)
    model = shakespeare_rnn_bn(90)
    assert default_head(model) == "dense"  # FedPer's head is still the classifier
    x = torch.randint(0, 90, (3, 7))
    h = model._features(x).detach()  # (B, S, 256): the two LSTMs' outputs
    bn = model.bn
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    flat = h.reshape(-1, 256)  # training: statistics over every batch row and position
    mean, var = flat.mean(0), flat.var(0, unbiased=False)
    by_hand = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    want = model.dense(by_hand).transpose(1, 2)
    torch.testing.assert_close(model.train()(x), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.1 * mean, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not SHAKESPEARE.is_dir(), reason=f"Shakespeare sample not at {SHAKESPEARE}")
def test_fedbn_runs_on_shakespeare_from_the_command_line(tmp_path):
    from method_runs import client_state

    out = tmp_path / "run"
    args = ["run", "--task", "shakespeare", "--data-dir", str(SHAKESPEARE),
            "--model", "shakespeare_rnn_bn", "--method", "fedbn", "--rounds", "1",
            "--clients-per-round", "2", "--local-epochs", "1", "--local-steps", "2",
            "--batch-size", "4", "--num-eval-clients", "2", "--num-global-eval-clients", "2",
            "--strategy", "sgd:0.1", "--p13n-epochs", "1", "--executor", "in-process",
            "--no-progress", "--no-report", "--cache-dir", str(tmp_path / "cache"),
            "--output-dir", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    ids, rows = client_state(out)
    assert len(ids) == 2  # the round's two clients keep their batch norm
    kept = ("bias", "num_batches_tracked", "running_mean", "running_var", "weight")
    assert sorted(rows) == [f"bn.{k}" for k in kept]
    assert rows["bn.num_batches_tracked"].tolist() == [2, 2]  # two local steps each
    assert not np.array_equal(rows["bn.running_mean"][0], rows["bn.running_mean"][1])
    with open(out / rd.OWN_STATE_PER_CLIENT, newline="") as f:
        assert [r["protocol"] for r in csv.DictReader(f)].count("own_state") == 2
