"""pFedMe (Dinh et al. 2020): two rounds of two clients on a quadratic loss (a linear model
with squared loss; numpy float64 closed-form gradients) against the paper's steps written
out, the stored theta, the own-state protocol on it, TOML and the command line."""

from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_pfedme, build_weighted_fed_avg, fedper_state_spec
from fedp13n.algorithms.fed_avg import ClientSelection
from fedp13n.algorithms.own_state import evaluate_own_state
from fedp13n.cli.main import app
from fedp13n.data.client_data import ClientData
from fedp13n.rundir import layout as rd
from fedp13n.state import ClientStateStore

LAM, K, PLR, ETA, BETA = 2.0, 2, 0.05, 0.1, 1.5
W0 = np.array([0.5, -0.3, 0.2])  # weight (2), bias
SCHEDULE = [["a", "b"], ["a", "b"]]


def _linear() -> nn.Module:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W0[None, :2]))
        model.bias.fill_(W0[2])
    return model


def _client_data() -> ClientData:
    rng = np.random.default_rng(3)
    sizes = {"a": 4, "b": 2}
    return ClientData.from_mapping(
        {c: (rng.normal(size=(n, 2)), rng.normal(size=(n, 1))) for c, n in sizes.items()}
    )


def _xy(cd: ClientData, c: str, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    d = cd.create_dataset(c)
    x = np.asarray(d.x, np.float64)[rows]
    return np.hstack([x, np.ones((len(x), 1))]), np.asarray(d.y, np.float64)[rows, 0]


def _grad(w, xy):  # of mean((x w - y)^2)
    x, y = xy
    return 2 * x.T @ (x @ w - y) / len(y)


def _hand_rounds(cd):
    """pFedMe written out: theta and w_local start at w each round; per batch (2, in
    order) K inner steps on theta, then w_local's step; w <- (1-beta) w + beta mean."""
    w, thetas = W0.copy(), {}
    for clients in SCHEDULE:
        locals_ = []
        for c in clients:
            theta, wl = w.copy(), w.copy()
            for s in range(0, cd.size(c), 2):
                batch = _xy(cd, c, slice(s, s + 2))
                for _ in range(K):
                    theta = theta - PLR * (_grad(theta, batch) + LAM * (theta - wl))
                wl = wl - ETA * LAM * (wl - theta)
            thetas[c] = theta
            locals_.append((cd.size(c), wl))
        mean = sum(n * wl for n, wl in locals_) / sum(n for n, _ in locals_)
        w = (1 - BETA) * w + BETA * mean
    return w, thetas


def _settings() -> dict:
    return dict(
        loss_fn=F.mse_loss, metrics_fn=F.l1_loss, client_epochs=1, batch_size=2,
        shuffle=False, client_pipeline="epochs",
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=ETA),
        server_optimizer_fn=functools.partial(torch.optim.SGD, lr=1.0),
    )  # fmt: skip


def _flat(weights) -> np.ndarray:
    return np.concatenate([weights["weight"].numpy().ravel(), weights["bias"].numpy()])


def test_two_rounds_against_the_papers_steps(tmp_path):
    cd = _client_data()
    spec = fedper_state_spec(_linear, None, "pfedme")
    assert list(spec) == ["weight", "bias"]  # theta: the whole model
    store = ClientStateStore.create(tmp_path, cd.client_ids, spec)
    process = build_pfedme(
        _linear, store, pfedme_lambda=LAM, pfedme_k=K, pfedme_personal_lr=PLR,
        pfedme_beta=BETA, **_settings(),
    )  # fmt: skip
    state = process.initialize()
    for r, clients in enumerate(SCHEDULE, start=1):
        state, _ = process.next(state, ClientSelection(cd, clients))
        store.commit(r)
    want_w, want_theta = _hand_rounds(cd)
    np.testing.assert_allclose(_flat(state.model), want_w, rtol=0, atol=1e-6)
    for c in "ab":
        np.testing.assert_allclose(_flat(store.get(c)), want_theta[c], rtol=0, atol=1e-6)
    assert np.abs(want_theta["a"] - want_w).max() > 1e-2  # theta is not the global model

    # own-state protocol: each client's theta on its data
    got = evaluate_own_state(
        _linear, state.model, store, cd, ["a", "b"], F.mse_loss, "cpu", "pfedme"
    )
    for c, m in zip("ab", got, strict=True):
        x, y = _xy(cd, c, slice(None))
        assert m["loss"] == pytest.approx(np.mean((x @ want_theta[c] - y) ** 2), abs=1e-6)


def test_defaults_and_bad_settings(tmp_path):
    store = ClientStateStore.create(tmp_path, ["x"], fedper_state_spec(_linear, None, "pfedme"))
    process = build_pfedme(_linear, store, loss_fn=F.mse_loss, metrics_fn=F.l1_loss)
    assert (process.client_work.pfedme, process.delta_scale) == ((15.0, 5, 0.01), 1.0)
    with pytest.raises(ValueError, match="are pFedMe's"):
        build_weighted_fed_avg(_linear, pfedme_k=3)
    with pytest.raises(ValueError, match="pfedme_k must be"):
        build_pfedme(_linear, store, pfedme_k=0)
    with pytest.raises(ValueError, match="pfedme_lambda must be"):
        build_pfedme(_linear, store, pfedme_lambda=-1.0)
    with pytest.raises(ValueError, match="proximal_mu does not combine"):
        build_pfedme(_linear, store, proximal_mu=0.1)


def test_from_toml_and_the_command_line(tmp_path):
    from fedp13n.experiments.config import ExperimentConfig
    from fedp13n.experiments.p13n_experiment import build_stage_process
    from fedp13n.models import emnist_conv_dropout
    from fedp13n.utils.device import Compute

    toml = tmp_path / "c.toml"
    toml.write_text(
        'dataset = "synthetic"\nmethod = "pfedme"\npfedme_lambda = 10.0\npfedme_k = 3\n'
        "pfedme_personal_lr = 0.05\npfedme_beta = 2.0\n"
    )
    config = ExperimentConfig.from_toml(toml)
    config.validate()
    (stage,) = config.resolved_stages()
    model_fn = functools.partial(emnist_conv_dropout, num_classes=62)
    store = ClientStateStore.create(
        tmp_path / "s", ["x"], fedper_state_spec(model_fn, None, "pfedme")
    )
    process = build_stage_process(config, stage, None, Compute(), store)
    assert (process.client_work.pfedme, process.delta_scale) == ((10.0, 3, 0.05), 2.0)

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--synthetic-clients", "20", "--rounds", "2",
        "--clients-per-round", "3", "--local-steps", "2", "--batch-size", "10",
        "--num-eval-clients", "2", "--executor", "in-process", "--no-progress", "--no-report",
        "--strategy", "sgd:0.02", "--p13n-epochs", "1", "--method", "pfedme",
        "--pfedme-k", "2", "--output-dir", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "pfedme_k = 2" in (out / rd.CONFIG).read_text()
    with open(out / rd.OWN_STATE_PER_CLIENT, newline="") as f:
        protocols = [r["protocol"] for r in csv.DictReader(f)]
    assert protocols == ["own_state"] * 2 + ["new_clients"] * 2

    bad = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--method", "pfedme", "--pfedme-k", "0",
        "--output-dir", str(tmp_path / "bad"),
    ])  # fmt: skip
    assert bad.exit_code == 2 and "pfedme_k must be" in bad.output


def test_unstable_rates_are_warned_at_config_load():
    """pFedMe's step 2 with plain SGD multiplies w_local - theta by 1 - eta * lambda: at
    TFF's Shakespeare rate 1 and the default lambda 15 that is -14 per step (the local
    models blew up in bench/methods on Shakespeare); at 0.1 it is -0.5 (EMNIST's, stable).
    The inner step's personal_lr * lambda likewise. Adam as the client optimizer: no
    such product, only the personal rate is checked."""
    from fedp13n.algorithms.pfedme import unstable_note
    from fedp13n.experiments.config import ExperimentConfig

    w, theta = 1.0, 0.0  # the closed form the note states: |1 - 15 eta| > 1 grows
    for _ in range(3):
        w = w - 1.0 * 15.0 * (w - theta)
    assert w == (1 - 15.0) ** 3
    notes = ExperimentConfig(method="pfedme", client_learning_rate=1.0).unused_settings()
    assert notes == [
        "warning: pFedMe: client_learning_rate x pfedme_lambda = 1 x 15 = 15 is 2 or more, "
        "so its local models overshoot and diverge; lower client_learning_rate below "
        "2 / pfedme_lambda = 0.133 (e.g. 0.0667) or pfedme_lambda"
    ]
    assert ExperimentConfig(method="pfedme", client_learning_rate=0.1).unused_settings() == []
    assert ExperimentConfig(method="fedavg", client_learning_rate=1.0).unused_settings() == []
    assert unstable_note(0.5, 4.0, 0.01, "sgd") is not None  # 2.0: the edge counts
    assert unstable_note(0.49, 4.0, 0.01, "sgd") is None
    assert unstable_note(1.0, 15.0, 0.01, "adam") is None
    assert "pfedme_personal_lr x pfedme_lambda = 0.2 x 10" in unstable_note(0.1, 10.0, 0.2, "sgd")
