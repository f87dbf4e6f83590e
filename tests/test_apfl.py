"""APFL (Deng et al. 2020): three rounds against a plain torch loop (the global copy, the
personal model and the mixing weight stepped on each batch from their values before the
step; alpha projected onto [0, 1]), adaptive and fixed alpha, the own-state protocol on
the mixture, TOML and the command line."""

from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_apfl, build_weighted_fed_avg, fedper_state_spec
from fedp13n.algorithms.apfl import APFL_ALPHA
from fedp13n.algorithms.fed_avg import ClientSelection
from fedp13n.algorithms.own_state import evaluate_own_state
from fedp13n.cli.main import app
from fedp13n.data.client_data import ClientData
from fedp13n.rundir import layout as rd
from fedp13n.state import ClientStateStore

SCHEDULE = [["a", "b"], ["b", "c"], ["a", "b", "c"]]
LR, ALPHA = 0.2, 0.25
NAMES = ["0.weight", "0.bias", "1.weight", "1.bias"]


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))


def _client_data() -> ClientData:
    rng = np.random.default_rng(3)
    ids = ["a", "b", "c"]
    x = {c: rng.normal(size=(n, 4)).astype(np.float32) for c, n in zip(ids, (6, 3, 5), strict=True)}
    y = {c: rng.integers(0, 3, len(x[c])).astype(np.int64) for c in ids}
    return ClientData.from_mapping({c: (x[c], y[c]) for c in ids})


def _loss(p: dict, x, y):
    return F.cross_entropy((x @ p["0.weight"].T + p["0.bias"]) @ p["1.weight"].T + p["1.bias"], y)


def _plain_apfl(epochs: int, adaptive: bool) -> tuple[dict, dict]:
    """APFL written out (Algorithm 1): per batch, with the values before the step,
    w -= lr grad f(w); v -= lr alpha grad f(vbar); alpha -= lr <v - w, grad f(vbar)>
    (adaptive), clipped to [0, 1]; the server averages w (example-weighted)."""
    cd = _client_data()
    global_w = {n: t.detach().clone() for n, t in _linear().state_dict().items()}
    own: dict[str, tuple[dict, float]] = {}
    for clients in SCHEDULE:
        trained = []
        for c in clients:
            d = cd.create_dataset(c)
            x, y = torch.from_numpy(d.x), torch.from_numpy(d.y)
            w = dict(global_w)
            v, a = own.get(c, (dict(global_w), ALPHA))
            for _ in range(epochs):
                for s in range(0, len(y), 2):
                    xb, yb = x[s : s + 2], y[s : s + 2]
                    wg = {n: t.clone().requires_grad_() for n, t in w.items()}
                    gw = torch.autograd.grad(_loss(wg, xb, yb), [wg[n] for n in NAMES])
                    mix = {n: (a * v[n] + (1 - a) * w[n]).requires_grad_() for n in NAMES}
                    gm = torch.autograd.grad(_loss(mix, xb, yb), [mix[n] for n in NAMES])
                    ga = sum(
                        float(((v[n] - w[n]) * g).sum()) for n, g in zip(NAMES, gm, strict=True)
                    )
                    w = {n: w[n] - LR * g for n, g in zip(NAMES, gw, strict=True)}
                    v = {n: v[n] - LR * a * g for n, g in zip(NAMES, gm, strict=True)}
                    a = min(max(a - LR * ga, 0.0), 1.0) if adaptive else a
            trained.append((len(y), w))
            own[c] = (v, a)
        total = sum(k for k, _ in trained)
        global_w = {n: sum(k * w[n] for k, w in trained) / total for n in NAMES}
    return global_w, own


def _settings(**more) -> dict:
    return dict(
        client_epochs=2, batch_size=2, shuffle=False, client_pipeline="epochs",
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=LR),
        server_optimizer_fn=functools.partial(torch.optim.SGD, lr=1.0), **more,
    )  # fmt: skip


@pytest.mark.parametrize("adaptive", [True, False])
def test_three_rounds_against_a_plain_torch_loop(tmp_path, adaptive):
    cd = _client_data()
    spec = fedper_state_spec(_linear, None, "apfl")
    assert list(spec) == [*NAMES, APFL_ALPHA] and spec[APFL_ALPHA] == ((), "float32")
    store = ClientStateStore.create(tmp_path, cd.client_ids, spec)
    process = build_apfl(_linear, store, apfl_alpha=ALPHA, apfl_adaptive=adaptive, **_settings())
    state = process.initialize()
    for r, clients in enumerate(SCHEDULE, start=1):
        state, _ = process.next(state, ClientSelection(cd, clients))
        store.commit(r)
    expected_w, expected_own = _plain_apfl(2, adaptive)
    for n in NAMES:
        torch.testing.assert_close(state.model[n], expected_w[n], rtol=0, atol=1e-6)
    for c in "abc":
        v, a = expected_own[c]
        got = store.get(c)
        assert float(got[APFL_ALPHA]) == pytest.approx(a, abs=1e-6)
        for n in NAMES:
            torch.testing.assert_close(got[n], v[n], rtol=0, atol=1e-6)
    alphas = [float(store.get(c)[APFL_ALPHA]) for c in "abc"]
    assert (alphas != [ALPHA] * 3) if adaptive else (alphas == [ALPHA] * 3)

    # own state: alpha v + (1 - alpha) w with the server's w
    got = evaluate_own_state(_linear, state.model, store, cd, ["a", "c"], F.cross_entropy,
                             method="apfl")  # fmt: skip
    for c, metrics in zip("ac", got, strict=True):
        v, a = expected_own[c]
        mix = {n: a * v[n] + (1 - a) * expected_w[n] for n in NAMES}
        d = cd.create_dataset(c)
        want = _loss(mix, torch.from_numpy(d.x), torch.from_numpy(d.y))
        assert metrics["loss"] == pytest.approx(float(want), abs=1e-6)


def test_defaults_and_bad_settings(tmp_path):
    store = ClientStateStore.create(tmp_path, ["x"], fedper_state_spec(_linear, None, "apfl"))
    work = build_apfl(_linear, store).client_work
    assert (work.apfl_alpha, work.apfl_adaptive, work.personal) == (0.5, True, ())  # FL-bench's
    with pytest.raises(ValueError, match="apfl_alpha and apfl_adaptive are APFL's"):
        build_weighted_fed_avg(_linear, apfl_alpha=0.1)
    with pytest.raises(ValueError, match=r"apfl_alpha must be a number in \[0, 1\]"):
        build_apfl(_linear, store, apfl_alpha=1.5)
    with pytest.raises(ValueError, match="proximal_mu does not combine"):
        build_apfl(_linear, store, proximal_mu=0.1)


def test_from_toml_and_the_command_line(tmp_path):
    from fedp13n.experiments.config import ExperimentConfig
    from fedp13n.experiments.p13n_experiment import build_stage_process
    from fedp13n.models import emnist_conv_dropout
    from fedp13n.utils.device import Compute

    toml = tmp_path / "c.toml"
    toml.write_text('dataset = "synthetic"\nmethod = "apfl"\napfl_alpha = 0.75\n'
                    "apfl_adaptive = false\n")  # fmt: skip
    config = ExperimentConfig.from_toml(toml)
    config.validate()
    (stage,) = config.resolved_stages()
    model_fn = functools.partial(emnist_conv_dropout, num_classes=62)
    store = ClientStateStore.create(
        tmp_path / "s", ["x"], fedper_state_spec(model_fn, None, "apfl")
    )
    work = build_stage_process(config, stage, None, Compute(), store).client_work
    assert (work.apfl_alpha, work.apfl_adaptive) == (0.75, False)

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--synthetic-clients", "20", "--rounds", "2",
        "--clients-per-round", "3", "--local-steps", "2", "--batch-size", "10",
        "--num-eval-clients", "2", "--executor", "in-process", "--no-progress", "--no-report",
        "--strategy", "sgd:0.02", "--p13n-epochs", "1", "--method", "apfl",
        "--apfl-alpha", "0.3", "--output-dir", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "apfl_alpha = 0.3" in (out / rd.CONFIG).read_text()
    with open(out / rd.OWN_STATE_PER_CLIENT, newline="") as f:
        protocols = [r["protocol"] for r in csv.DictReader(f)]
    assert protocols == ["own_state"] * 2 + ["new_clients"] * 2
