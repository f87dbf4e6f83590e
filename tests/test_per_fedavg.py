"""Per-FedAvg (Fallah et al. 2020): both variants against hand-worked steps on a linear
model with squared loss (closed-form gradient and Hessian, numpy float64), a two-client
round, its one-step personalization in both protocols, TOML and the command line."""

from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_per_fedavg, build_weighted_fed_avg
from fedp13n.algorithms.fed_avg import ClientSelection
from fedp13n.algorithms.own_state import evaluate_new_clients
from fedp13n.cli.main import app
from fedp13n.data.client_data import ClientData
from fedp13n.execution.in_process import InProcessExecutor
from fedp13n.rundir import layout as rd

ALPHA, BETA = 0.1, 0.3
W0 = np.array([0.5, -0.3, 0.2])  # weight (2), bias


def _linear() -> nn.Module:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W0[None, :2]))
        model.bias.fill_(W0[2])
    return model


def _client_data() -> ClientData:
    rng = np.random.default_rng(0)
    sizes = {"a": 6, "b": 4}
    return ClientData.from_mapping(
        {c: (rng.normal(size=(n, 2)), rng.normal(size=(n, 1))) for c, n in sizes.items()}
    )


def _xy(cd: ClientData, c: str, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """Rows of client c as float64, features with a column of ones (the bias)."""
    d = cd.create_dataset(c)
    x = np.asarray(d.x, np.float64)[rows]
    return np.hstack([x, np.ones((len(x), 1))]), np.asarray(d.y, np.float64)[rows, 0]


def _grad(w, xy):  # of mean((x w - y)^2)
    x, y = xy
    return 2 * x.T @ (x @ w - y) / len(y)


def _hessian(xy):
    x, _ = xy
    return 2 * x.T @ x / len(x)


def _hand_client(cd, c, variant):
    """Per-FedAvg's local steps written out: batches of 2 in order, grouped in pairs (FO)
    or triples (HF), a short last group reusing its last batch."""
    n = cd.size(c)
    batches = [_xy(cd, c, slice(s, s + 2)) for s in range(0, n, 2)]
    size = 2 if variant == "fo" else 3
    w = W0.copy()
    for s in range(0, len(batches), size):
        group = batches[s : s + size]
        d, d1, d2 = (group[min(j, len(group) - 1)] for j in range(3))
        g1 = _grad(w - ALPHA * _grad(w, d), d1)
        if variant == "hf":
            g1 = g1 - ALPHA * _hessian(d2) @ g1
        w = w - BETA * g1
    return w


def _settings(**kw) -> dict:
    return dict(
        loss_fn=F.mse_loss, metrics_fn=F.l1_loss, client_epochs=1, batch_size=2,
        shuffle=False, client_pipeline="epochs",
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=BETA),
        server_optimizer_fn=functools.partial(torch.optim.SGD, lr=1.0),
        per_fedavg_alpha=ALPHA, **kw,
    )  # fmt: skip


def _flat(weights) -> np.ndarray:
    return np.concatenate([weights["weight"].numpy().ravel(), weights["bias"].numpy()])


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_a_two_client_round_against_hand_worked_steps(variant):
    cd = _client_data()
    process = build_per_fedavg(_linear, per_fedavg_variant=variant, **_settings())
    state, metrics = process.next(process.initialize(), ClientSelection(cd, ["a", "b"]))
    wa, wb = _hand_client(cd, "a", variant), _hand_client(cd, "b", variant)
    want = (6 * wa + 4 * wb) / 10  # FedAvg's example-weighted mean (server SGD lr 1)
    np.testing.assert_allclose(_flat(state.model), want, rtol=0, atol=1e-6)
    # a meta step is not a plain SGD step, and HF is not FO
    other = _hand_client(cd, "a", "hf" if variant == "fo" else "fo")
    assert np.abs(other - wa).max() > 1e-3
    # the round's loss: w on each meta step's first batch D (FO: a's D are batches 1, 3)
    firsts = {"fo": [("a", 0), ("a", 4), ("b", 0)], "hf": [("a", 0), ("b", 0)]}[variant]
    losses = []
    for c, s in firsts:
        x, y = _xy(cd, c, slice(s, s + 2))
        w = W0 if s == 0 else _hand_client_prefix(cd, c, s)
        losses.append(np.mean((x @ w - y) ** 2))
    assert metrics.loss == pytest.approx(np.mean(losses), abs=1e-6)


def _hand_client_prefix(cd, c, s):
    """FO's w after the meta steps before row ``s`` (client a: one pair of batches)."""
    batches = [_xy(cd, c, slice(r, r + 2)) for r in range(0, s, 2)]
    w = W0.copy()
    for d, d1 in zip(batches[::2], batches[1::2], strict=True):
        w = w - BETA * _grad(w - ALPHA * _grad(w, d), d1)
    return w


def test_new_clients_and_own_state_adapt_by_one_step_of_alpha():
    cd = _client_data()
    process = build_per_fedavg(_linear, **_settings())
    weights = {k: v.clone() for k, v in process.initialize().model.items()}
    got = evaluate_new_clients(
        process.client_work, weights, cd, cd, ["a", "b"], F.mse_loss, InProcessExecutor(), 9
    )
    for c, m in zip("ab", got, strict=True):
        w = W0 - ALPHA * _grad(W0, _xy(cd, c, slice(0, 2)))  # one step on the first batch
        x, y = _xy(cd, c, slice(None))
        assert m["loss"] == pytest.approx(np.mean((x @ w - y) ** 2), abs=1e-6)
        assert m["loss"] != pytest.approx(np.mean((x @ W0 - y) ** 2), abs=1e-3)


def test_defaults_and_bad_settings():
    work = build_per_fedavg(_linear, loss_fn=F.mse_loss, metrics_fn=F.l1_loss).client_work
    assert (work.per_fedavg, work.per_fedavg_alpha) == ("fo", 0.01)  # FL-bench's
    with pytest.raises(ValueError, match="per_fedavg_variant must be one of"):
        build_per_fedavg(_linear, per_fedavg_variant="so")
    with pytest.raises(ValueError, match="per_fedavg_alpha must be"):
        build_per_fedavg(_linear, per_fedavg_alpha=0)
    with pytest.raises(ValueError, match="are Per-FedAvg's"):
        build_weighted_fed_avg(_linear, per_fedavg_alpha=0.1)
    with pytest.raises(ValueError, match="proximal_mu does not combine"):
        build_per_fedavg(_linear, proximal_mu=0.1)


def test_from_toml_and_the_command_line(tmp_path):
    from fedp13n.experiments.config import ExperimentConfig
    from fedp13n.experiments.p13n_experiment import build_stage_process
    from fedp13n.utils.device import Compute

    toml = tmp_path / "c.toml"
    toml.write_text(
        'dataset = "synthetic"\nmethod = "per_fedavg"\nper_fedavg_variant = "hf"\n'
        "per_fedavg_alpha = 0.05\n"
    )
    config = ExperimentConfig.from_toml(toml)
    config.validate()
    (stage,) = config.resolved_stages()
    work = build_stage_process(config, stage, None, Compute()).client_work
    assert (work.per_fedavg, work.per_fedavg_alpha) == ("hf", 0.05)

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--synthetic-clients", "20", "--rounds", "2",
        "--clients-per-round", "3", "--local-steps", "3", "--batch-size", "10",
        "--num-eval-clients", "2", "--executor", "in-process", "--no-progress", "--no-report",
        "--strategy", "sgd:0.02", "--p13n-epochs", "1", "--method", "per_fedavg",
        "--per-fedavg-variant", "hf", "--per-fedavg-alpha", "0.05", "--output-dir", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert 'per_fedavg_variant = "hf"' in (out / rd.CONFIG).read_text()
    assert not (out / rd.CLIENT_STATE).exists()  # stateless
    with open(out / rd.OWN_STATE_PER_CLIENT, newline="") as f:
        protocols = [r["protocol"] for r in csv.DictReader(f)]
    assert protocols == ["own_state"] * 2 + ["new_clients"] * 2

    bad = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--method", "per_fedavg", "--per-fedavg-variant",
        "so", "--output-dir", str(tmp_path / "bad"),
    ])  # fmt: skip
    assert bad.exit_code == 2 and "per_fedavg_variant 'so' is not one of" in bad.output
