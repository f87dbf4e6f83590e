"""FedPer (Arivazhagan et al. 2019): a two-client round worked by hand, rounds against a
plain torch loop (body averaged, heads kept per client), a worker killed mid-task, the
engine's fallback, bad settings, CLI and TOML. kill -9 + --resume of a run: for every
method, tests/test_method_faults.py."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_runs import KilledOnce, federated_rounds
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_fedper, build_weighted_fed_avg, fedper_state_spec
from fedp13n.cli.main import app
from fedp13n.data.client_data import ClientData, ClientDataset
from fedp13n.execution import InProcessExecutor, LocalProcessExecutor
from fedp13n.rundir import layout as rd
from fedp13n.state import ClientStateStore

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get the models by value

PLAIN_SERVER = functools.partial(torch.optim.SGD, lr=1.0)  # global = weighted mean of clients


def _no_metric(outputs, targets):
    return torch.tensor(0.0)


def _two_scalars() -> nn.Module:
    """y = h * (b * x): body b = 1, head h = 0.5 (the layer FedPer keeps by default)."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(0.5)
    return model


def _data(y: float, n: int) -> ClientDataset:
    return ClientDataset.from_arrays(np.ones((n, 1), np.float32), np.full((n, 1), y, np.float32))


def test_fedper_state_spec_is_the_last_layer_by_default():
    assert fedper_state_spec(_two_scalars, None) == {"1.weight": ((1, 1), "float32")}
    assert fedper_state_spec(_mlp, "0,2") == {
        "0.weight": ((5, 4), "float32"), "0.bias": ((5,), "float32"),
        "2.weight": ((3, 5), "float32"), "2.bias": ((3,), "float32"),
    }  # fmt: skip


def test_two_clients_two_rounds_by_hand(tmp_path):
    """One full-batch SGD step (lr 0.5) of (h b x - y)^2 per client and round, x = 1:
    db = 2 r h, dh = 2 r b with r = h b - y; server SGD lr 1 on the body only.

    Round 1 (b = 1, both heads the initial 0.5):
      A (y = 1, 1 example):  r = -0.5, b = 1.25, h = 1.0, delta_b = -0.25
      B (y = 0, 3 examples): r =  0.5, b = 0.75, h = 0.0, delta_b =  0.25
      b = 1 - (1 * -0.25 + 3 * 0.25) / 4 = 0.875; the global head stays 0.5.
    Round 2 (b = 0.875, A's head 1.0, B's head 0.0):
      A: r = -0.125, db = -0.25, dh = -0.21875: b = 1.0, h = 1.109375, delta_b = -0.125
      B: r = 0: nothing moves, delta_b = 0
      b = 0.875 - (1 * -0.125 + 3 * 0) / 4 = 0.90625."""
    store = ClientStateStore.create(tmp_path / "s", [0, 1], fedper_state_spec(_two_scalars, None))
    process = build_fedper(
        _two_scalars, store, client_optimizer_fn=functools.partial(torch.optim.SGD, lr=0.5),
        server_optimizer_fn=PLAIN_SERVER, loss_fn=F.mse_loss, metrics_fn=_no_metric,
        batch_size=10, shuffle=False, client_pipeline="epochs",
    )  # fmt: skip
    clients = [_data(1.0, 1), _data(0.0, 3)]
    state = process.initialize()
    state, _ = process.next(state, clients)
    store.commit(1)
    assert state.model["0.weight"].item() == 0.875
    assert state.model["1.weight"].item() == 0.5  # never averaged: the initial head
    assert store.get(0)["1.weight"].item() == 1.0 and store.get(1)["1.weight"].item() == 0.0
    state, _ = process.next(state, clients)
    store.commit(2)
    assert state.model["0.weight"].item() == 0.90625
    assert store.get(0)["1.weight"].item() == 1.109375 and store.get(1)["1.weight"].item() == 0.0
    assert state.model["1.weight"].item() == 0.5


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def _client_data() -> ClientData:
    rng = np.random.default_rng(1)
    ids = ["a", "b", "c"]
    x = {c: rng.normal(size=(n, 4)).astype(np.float32) for c, n in zip(ids, (6, 3, 5), strict=True)}
    y = {c: rng.integers(0, 3, len(x[c])).astype(np.int64) for c in ids}
    return ClientData.from_mapping({c: (x[c], y[c]) for c in ids})


#: each round's clients
SCHEDULE = [["a", "b"], ["b", "c"], ["a", "b", "c"]]


def _plain_fedper(lr: float) -> tuple[dict, dict]:
    """FedPer written out: global body averaged (example-weighted), each client's head
    ("2.*") kept in a dict, a fresh head = the initial one; plain SGD steps of 2 examples
    in order."""
    cd = _client_data()
    model = _mlp()
    global_w = {n: t.detach().clone() for n, t in model.state_dict().items()}
    heads: dict[str, dict] = {}
    for clients in SCHEDULE:
        trained = []
        for c in clients:
            d = cd.create_dataset(c)
            model.load_state_dict({**global_w, **heads.get(c, {})})
            params = dict(model.named_parameters())
            x, y = torch.from_numpy(d.x), torch.from_numpy(d.y)
            for s in range(0, len(y), 2):
                loss = F.cross_entropy(model(x[s : s + 2]), y[s : s + 2])
                grads = torch.autograd.grad(loss, list(params.values()))
                with torch.no_grad():
                    for p, g in zip(params.values(), grads, strict=True):
                        p -= lr * g
            heads[c] = {n: params[n].detach().clone() for n in ("2.weight", "2.bias")}
            trained.append((len(y), {n: p.detach().clone() for n, p in params.items()}))
        total = sum(n for n, _ in trained)
        for name in ("0.weight", "0.bias"):
            global_w[name] = sum(n * w[name] for n, w in trained) / total
    return global_w, heads


def _fedper_rounds(tmp_path: Path, lr: float, executor=None, work=None) -> tuple[dict, dict]:
    return federated_rounds(
        tmp_path, _mlp, _client_data(), SCHEDULE, "fedper", work,
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=lr),
        server_optimizer_fn=PLAIN_SERVER, batch_size=2, shuffle=False,
        client_pipeline="epochs", executor=executor,
    )  # fmt: skip


def test_three_rounds_against_a_plain_torch_loop(tmp_path):
    model, heads = _fedper_rounds(tmp_path, 0.1)
    expected_w, expected_heads = _plain_fedper(0.1)
    for n in ("0.weight", "0.bias"):
        torch.testing.assert_close(model[n], expected_w[n], rtol=0, atol=1e-6)
    init = _mlp().state_dict()
    assert all(torch.equal(model[n], init[n]) for n in ("2.weight", "2.bias"))
    for c in "abc":
        for n in ("2.weight", "2.bias"):
            torch.testing.assert_close(heads[c][n], expected_heads[c][n], rtol=0, atol=1e-6)
    assert not torch.equal(heads["a"]["2.weight"], heads["b"]["2.weight"])


def test_a_killed_workers_retried_task_keeps_the_state(tmp_path):
    here = _fedper_rounds(tmp_path / "here", 0.1, InProcessExecutor())
    marker = str(tmp_path / "killed-once")
    with LocalProcessExecutor(num_workers=1, max_retries=1) as ex:
        there = _fedper_rounds(
            tmp_path / "there", 0.1, ex, functools.partial(KilledOnce, marker=marker)
        )
    assert os.path.exists(marker)  # a worker was killed, its task retried
    assert all(torch.equal(here[0][n], there[0][n]) for n in here[0])
    for c in "abc":
        assert all(torch.equal(here[1][c][n], there[1][c][n]) for n in here[1][c])


def test_the_engine_falls_back_with_a_one_line_reason(tmp_path):
    from fedp13n.engine import MultiClientEngine
    from fedp13n.models.registry import model_fn_for

    model_fn = model_fn_for("conv_dropout", 62)
    store = ClientStateStore.create(tmp_path, ["x"], fedper_state_spec(model_fn, None))
    with pytest.warns(RuntimeWarning, match=r"the engine does not batch fedper's per-client"):
        process = build_fedper(model_fn, store, engine=MultiClientEngine(model_fn))
    assert process.engine is None and process.client_work.personal == ("fc2.weight", "fc2.bias")


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(TypeError, match=r"keeps each client's \['2.bias', '2.weight'\] in a Cl"):
        build_weighted_fed_avg(_mlp, method="fedper")
    other = ClientStateStore.create(tmp_path / "o", ["x"], fedper_state_spec(_mlp, "0"))
    with pytest.raises(ValueError, match="create the store with fedper_state_spec"):
        build_fedper(_mlp, other)
    with pytest.raises(ValueError, match="method must be one of \\['fedavg', 'fedper', "):
        build_weighted_fed_avg(_mlp, method="fedxyz")
    bad = r"personal_layers: 'fc9' names no layer of Sequential; valid module names: \['0', '2'\]"
    with pytest.raises(ValueError, match=bad):
        build_fedper(_mlp, other, personal_layers="fc9")
    with pytest.raises(ValueError, match="keeps none: leave them out"):
        build_weighted_fed_avg(_mlp, client_state=other)


RUN = [
    "run", "--dataset", "synthetic", "--synthetic-clients", "20", "--rounds", "6",
    "--clients-per-round", "3", "--local-epochs", "1", "--num-eval-clients", "3",
    "--checkpoint-every", "1", "--keep-checkpoints", "2", "--executor", "in-process",
    "--no-progress", "--no-report", "--strategy", "sgd:0.02", "--p13n-epochs", "1",
    "--method", "fedper",
]  # fmt: skip


def test_from_the_command_line_and_toml_to_the_clients(tmp_path):
    from fedp13n.experiments.config import ExperimentConfig
    from fedp13n.experiments.p13n_experiment import build_stage_process
    from fedp13n.models import emnist_conv_dropout
    from fedp13n.utils.device import Compute

    toml = tmp_path / "c.toml"
    toml.write_text(
        'dataset = "synthetic"\n[[stages]]\nname = "warmup"\n'
        '[[stages]]\nname = "per"\nmethod = "fedper"\npersonal_layers = "fc1,fc2"\n'
    )
    config = ExperimentConfig.from_toml(toml)
    config.validate()
    warmup, per = config.resolved_stages()
    assert (warmup.method, per.method) == ("fedavg", "fedper")
    model_fn = functools.partial(emnist_conv_dropout, num_classes=62)
    store = ClientStateStore.create(tmp_path / "s", ["x"], fedper_state_spec(model_fn, "fc1,fc2"))
    work = build_stage_process(config, per, None, Compute(), store).client_work
    assert work.personal == ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    assert build_stage_process(config, warmup, None, Compute()).client_work.personal == ()
    res = CliRunner().invoke(app, ["run", "--method", "fedper", "--print-config"])
    assert res.exit_code == 0, res.output
    assert 'method = "fedper"' in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "fedxyz"], "method 'fedxyz' is not one of ('fedavg', 'fedper', "),
        (["--stage", "centralized:method=fedper"], "stage 'centralized' is centralized (SGD on"),
        (["--method", "fedper", "--personal-layers", "fc1,,fc2"], "personal_layers must name"),
        (
            ["--stage", "a:method=fedper", "--stage", "b:method=fedper,personal_layers=fc1"],
            "the stages keep different personal_layers",
        ),
    ],
)
def test_bad_configurations_are_one_line_errors(args, message):
    res = CliRunner().invoke(app, ["run", *args, "--print-config"])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())


def test_personal_layers_the_model_lacks_stop_the_run_before_training(tmp_path):
    res = CliRunner().invoke(app, [*RUN, "--personal-layers", "fc9", "--output-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "personal_layers: 'fc9' names no layer of EmnistConvDropout" in res.output
    assert not (tmp_path / rd.FEDAVG_METRICS).exists()


def test_every_method_builder_pickles_by_its_name():
    """The nine ``build_<method>`` shortcuts are made by one factory; each is found again
    under its own module and name (what pickle, and so a worker process, looks up)."""
    import pickle

    import fedp13n.algorithms as algorithms

    for method in ("fedper", "fedrep", "lg_fedavg", "ditto", "apfl", "pfedme", "per_fedavg",
                   "fedbn", "scaffold"):  # fmt: skip
        builder = getattr(algorithms, f"build_{method}")
        assert builder.__name__ == f"build_{method}"
        assert pickle.loads(pickle.dumps(builder)) is builder
