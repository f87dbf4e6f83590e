"""The multi-client engine behind the public API: ``build_weighted_fed_avg(engine=...)``
and ``build_personalization_eval(engine=...)`` give the per-client path's numbers (max
abs difference below 1e-5 in float32), strategies it cannot batch run per client."""

from __future__ import annotations

import functools

import numpy as np
import torch
from test_engine import NUM_CLASSES, global_weights, make_clients, small_cnn

from fedp13n.algorithms import ClientSelection, build_weighted_fed_avg
from fedp13n.data import ClientData
from fedp13n.engine import MultiClientEngine
from fedp13n.personalization import build_personalization_eval, build_personalize_fn, evaluate_fn
from fedp13n.personalization.registry import build_strategy


def _client_data(sizes):
    datasets = make_clients(sizes, seed=4)
    return ClientData.from_clients((f"c{i}", d.x, d.y) for i, d in enumerate(datasets))


def test_fedavg_round_with_the_engine_equals_the_executor_path():
    cd = _client_data([13, 0, 7, 21, 4])
    ids = list(cd.client_ids)
    results = []
    for engine in (None, MultiClientEngine(small_cnn, max_clients=3)):
        process = build_weighted_fed_avg(
            small_cnn,
            functools.partial(torch.optim.SGD, lr=0.1),
            client_epochs=2, batch_size=5, seed=3, client_pipeline="tff", engine=engine,
        )  # fmt: skip
        state = process.initialize()
        for _ in range(2):
            state, metrics = process.next(state, ClientSelection(cd, ids))
        results.append((state, metrics))
    (a, ma), (b, mb) = results
    diff = max(float((a.model[k] - b.model[k]).abs().max()) for k in a.model)
    moved = max(
        float((a.model[k] - build_weighted_fed_avg(small_cnn, seed=3).initialize().model[k])
              .abs().max()) for k in a.model
    )  # fmt: skip
    assert diff < 1e-5 and moved > 1e-3
    assert ma.num_examples == mb.num_examples and ma.num_clients == mb.num_clients == 5
    assert abs(ma.loss - mb.loss) < 1e-5 and abs(ma.accuracy - mb.accuracy) < 1e-9


def test_personalization_with_the_engine_equals_the_per_client_path():
    datasets = make_clients([9, 14, 0, 5], seed=7)
    tests = make_clients([6, 3, 4, 0], seed=8)
    inputs = [
        {"client_id": f"c{i}", "train_data": tr, "test_data": te}
        for i, (tr, te) in enumerate(zip(datasets, tests, strict=True))
    ]
    fn_dict = {
        "sgd": functools.partial(
            build_personalize_fn, functools.partial(torch.optim.SGD, lr=0.05),
            batch_size=4, num_epochs=2, num_epochs_per_eval=1,
        ),
        "adam": build_strategy("adam_recommended", batch_size=4, epochs=2),
        "head": build_strategy("head_only", learning_rate=0.05, batch_size=4, epochs=2),
    }  # fmt: skip
    weights = global_weights(small_cnn)
    plain = build_personalization_eval(small_cnn, fn_dict, evaluate_fn, seed=5)(weights, inputs)
    engine = MultiClientEngine(small_cnn, max_clients=2)
    fast = build_personalization_eval(small_cnn, fn_dict, evaluate_fn, seed=5, engine=engine)(
        weights, inputs
    )
    assert list(plain) == list(fast) == ["baseline_metrics", "sgd", "adam", "head"]
    assert plain.client_ids == fast.client_ids

    def leaves(tree, path=()):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from leaves(v, (*path, k))
            else:
                yield (*path, k), v

    a, b = dict(leaves(plain)), dict(leaves(fast))
    assert a.keys() == b.keys()
    for key in a:
        x, y = np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)
        assert np.allclose(x, y, atol=1e-5, equal_nan=True), key
    # the strategies did something: accuracy differs from the baseline on some client
    base = np.asarray(a[("baseline_metrics", "loss")], dtype=float)
    tuned = np.asarray(a[("sgd", "epoch_2", "loss")], dtype=float)
    assert np.nanmax(np.abs(base - tuned)) > 1e-3
    assert NUM_CLASSES > 1


def test_engine_on_the_command_line_gives_the_per_client_numbers(tmp_path):
    from typer.testing import CliRunner

    from fedp13n.cli.main import app
    from fedp13n.rundir import layout as rd

    args = [
        "run", "--dataset", "synthetic", "--synthetic-clients", "12", "--num-train-clients",
        "8", "--num-p13n-clients", "4", "--rounds", "2", "--clients-per-round", "3",
        "--local-epochs", "1", "--num-eval-clients", "3", "--p13n-epochs", "1",
        "--executor", "in-process", "--no-report", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    # --device cpu: the CPU's engine, also on a machine with a GPU
    outs = []
    for engine in ("off", "on"):
        out = tmp_path / engine
        res = CliRunner().invoke(app, [*args, "--engine", engine, "--output-dir", str(out)])
        assert res.exit_code == 0, res.output
        outs.append(out)
    assert "engine: up to 64 clients at once on cpu" in res.output
    a = torch.load(outs[0] / rd.GLOBAL_WEIGHTS, weights_only=True)
    b = torch.load(outs[1] / rd.GLOBAL_WEIGHTS, weights_only=True)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    import json

    pa = json.loads((outs[0] / rd.PERSONALIZATION).read_text())
    pb = json.loads((outs[1] / rd.PERSONALIZATION).read_text())
    for strategy in ("sgd", "adam"):
        la = np.asarray(pa[strategy]["epoch_1"]["loss"], dtype=float)
        lb = np.asarray(pb[strategy]["epoch_1"]["loss"], dtype=float)
        assert np.allclose(la, lb, atol=1e-4)
