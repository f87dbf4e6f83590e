"""FedProx (Li et al. 2020) as ``proximal_mu``: hand-worked steps, a plain torch loop,
mu = 0 is FedAvg bit for bit, executors agree, the engine falls back, CLI and TOML."""

from __future__ import annotations

import functools
import sys
import warnings

import cloudpickle
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_weighted_fed_avg, proximal_penalty
from fedp13n.cli.main import app
from fedp13n.client.program import LocalTraining
from fedp13n.data.client_data import ClientDataset
from fedp13n.execution import InProcessExecutor, LocalProcessExecutor
from fedp13n.experiments.config import ConfigError, ExperimentConfig
from fedp13n.experiments.p13n_experiment import build_stage_process
from fedp13n.models.registry import model_fn_for
from fedp13n.utils.device import Compute

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get _mlp by value

SGD = functools.partial(torch.optim.SGD, lr=0.25)
PLAIN_SERVER = functools.partial(torch.optim.SGD, lr=1.0)  # global = weighted mean of clients


def _no_metric(outputs, targets):
    return torch.tensor(0.0)


def _scalar_model() -> nn.Module:
    return nn.Linear(1, 1, bias=False)


def _scalar_data(n: int) -> ClientDataset:
    """n copies of (x=1, y=0): the loss (w x - y)^2 has gradient 2w."""
    return ClientDataset.from_arrays(np.ones((n, 1), np.float32), np.zeros((n, 1), np.float32))


def test_one_step_of_the_penalty_by_hand():
    """w = 1, w_global = 2, lr 0.25, mu 0.5: w' = 1 - 0.25 * (2*1 + 0.5*(1 - 2)) = 0.625."""
    model = _scalar_model()
    with torch.no_grad():
        model.weight.fill_(1.0)
    anchor = {"weight": torch.tensor([[2.0]])}
    LocalTraining(
        SGD, F.mse_loss, batch_size=1, penalty=proximal_penalty(model, anchor, 0.5, ["weight"])
    ).run(model, _scalar_data(1))
    assert model.weight.item() == 0.625
    assert anchor["weight"].item() == 2.0  # the anchor is not trained


@pytest.mark.parametrize(("mu", "expected"), [(0.0, 0.5), (0.5, 0.625)])
def test_a_fedprox_round_by_hand(mu, expected):
    """One client, two local steps from w_global = 2 (lr 0.25, mu 0.5):
    step 1 at w = w_global: w = 2 - 0.25 * 4 = 1 (no pull yet);
    step 2: w = 1 - 0.25 * (2 + 0.5 * (1 - 2)) = 0.625 (FedAvg: 1 - 0.25 * 2 = 0.5).
    Server SGD lr 1 without momentum: the new global is the client's weight."""
    process = build_weighted_fed_avg(
        _scalar_model, SGD, PLAIN_SERVER, loss_fn=F.mse_loss, metrics_fn=_no_metric,
        batch_size=1, client_pipeline="epochs", proximal_mu=mu,
    )  # fmt: skip
    state = process.initialize()
    state.model["weight"] = torch.tensor([[2.0]])
    state, metrics = process.next(state, [_scalar_data(2)])
    assert state.model["weight"].item() == expected
    assert metrics.num_clients == 1 and metrics.num_examples == 2


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def _clients() -> list[ClientDataset]:
    rng = np.random.default_rng(1)
    return [
        ClientDataset.from_arrays(
            rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n).astype(np.int64)
        )
        for n in (6, 3)
    ]


def _plain_loop(w0: dict, data: ClientDataset, lr: float, mu: float, batch: int) -> dict:
    """FedProx's local steps written out: w -= lr * (dF/dw + mu * (w - w0)), in order."""
    model = _mlp()
    model.load_state_dict(w0)
    params = dict(model.named_parameters())
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    for s in range(0, len(y), batch):
        loss = F.cross_entropy(model(x[s : s + batch]), y[s : s + batch])
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            for (n, p), g in zip(params.items(), grads, strict=True):
                p -= lr * (g + mu * (p - w0[n]))
    return {n: p.detach() for n, p in params.items()}


def test_a_two_client_round_against_a_plain_torch_loop():
    lr, mu = 0.1, 0.3
    process = build_weighted_fed_avg(
        _mlp, functools.partial(torch.optim.SGD, lr=lr), PLAIN_SERVER, batch_size=2,
        shuffle=False, client_pipeline="epochs", proximal_mu=mu,
    )  # fmt: skip
    state = process.initialize()
    w0 = {n: t.clone() for n, t in state.model.items()}
    clients = _clients()
    state, _ = process.next(state, clients)
    trained = [_plain_loop(w0, d, lr, mu, 2) for d in clients]  # 3 and 2 local steps
    for n in w0:  # the server's example-weighted mean (6 and 3 examples)
        expected = (6 * trained[0][n] + 3 * trained[1][n]) / 9
        torch.testing.assert_close(state.model[n], expected, rtol=0, atol=1e-6)
    fedavg = build_weighted_fed_avg(
        _mlp, functools.partial(torch.optim.SGD, lr=lr), PLAIN_SERVER, batch_size=2,
        shuffle=False, client_pipeline="epochs",
    )  # fmt: skip
    plain, _ = fedavg.next(fedavg.initialize(), clients)
    assert not torch.equal(plain.model["0.weight"], state.model["0.weight"])  # mu matters


def _rounds(mu, executor=None, rounds=2):
    """FedAvg / FedProx rounds of the small MLP on the two clients (server momentum 0.9,
    shuffled local batches)."""
    process = build_weighted_fed_avg(
        _mlp, functools.partial(torch.optim.SGD, lr=0.1), batch_size=2, seed=1,
        executor=executor, **({} if mu is None else {"proximal_mu": mu}),
    )  # fmt: skip
    state = process.initialize()
    for _ in range(rounds):
        state, _ = process.next(state, _clients())
    return state.model


def test_mu_zero_is_fedavg_bit_for_bit():
    fedavg, mu0, prox = _rounds(None), _rounds(0.0), _rounds(0.5)
    assert all(torch.equal(fedavg[n], mu0[n]) for n in fedavg)
    assert not torch.equal(fedavg["2.weight"], prox["2.weight"])


def test_executors_give_the_same_bits():
    here = _rounds(0.5, InProcessExecutor())
    with LocalProcessExecutor(num_workers=1) as ex:
        there = _rounds(0.5, ex)
    assert all(torch.equal(here[n], there[n]) for n in here)


def test_the_engine_falls_back_with_a_one_line_reason():
    from fedp13n.engine import MultiClientEngine

    model_fn = model_fn_for("conv_dropout", 62)
    engine = MultiClientEngine(model_fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_weighted_fed_avg(model_fn, engine=engine).engine is engine
    with pytest.warns(RuntimeWarning, match=r"not batched\): the engine does not batch FedProx"):
        process = build_weighted_fed_avg(model_fn, engine=engine, proximal_mu=0.01)
    assert process.engine is None and process.client_work.proximal_mu == 0.01


def test_bad_mu_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"proximal_mu must be a finite number >= 0 \(FedProx"):
        build_weighted_fed_avg(_mlp, proximal_mu=-0.1)
    with pytest.raises(ValueError, match="proximal_mu must be a finite number >= 0"):
        build_weighted_fed_avg(_mlp, proximal_mu=float("nan"))
    res = CliRunner().invoke(app, ["run", "--stage", "fedavg:proximal_mu=-1", "--print-config"])
    assert res.exit_code == 2
    assert "stage 'fedavg' proximal_mu must be a finite number >= 0 (FedProx" in res.output


def test_from_the_command_line_and_toml_to_the_clients(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        'dataset = "synthetic"\nmodel = "conv_dropout"\nproximal_mu = 0.01\n'
        '[[stages]]\nname = "fedavg"\n[[stages]]\nname = "prox"\nproximal_mu = 0.1\n'
        '[[stages]]\nname = "plain"\nproximal_mu = 0.0\n'
    )
    config = ExperimentConfig.from_toml(toml)
    stages = config.resolved_stages()
    assert [s.proximal_mu for s in stages] == [0.01, 0.1, 0.0]
    works = [build_stage_process(config, s, None, Compute()).client_work for s in stages]
    assert [w.proximal_mu for w in works] == [0.01, 0.1, 0.0]
    res = CliRunner().invoke(
        app, ["run", "--stage", "fedavg:proximal_mu=0.01,rounds=2", "--print-config"]
    )
    assert res.exit_code == 0, res.output
    assert "proximal_mu = 0.01" in res.output
    with pytest.raises(ConfigError, match="proximal_mu must be a finite number >= 0"):
        ExperimentConfig.from_dict({"proximal_mu": -2.0}).validate()
