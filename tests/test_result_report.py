"""Issue 17: a personalization result from the library becomes the files of a run: the same
per_client.csv, summary.json and report.html as ``fedp13n run`` (README's library flow)."""

from __future__ import annotations

import csv
import functools
import json
import statistics
import warnings

import pytest
import torch

import fedp13n
from fedp13n.reporting import summarize_run
from fedp13n.reporting.result_report import library_note
from fedp13n.rundir import layout as rd


@pytest.fixture(scope="module")
def flow():
    """README's library section, made small: FedAvg on synthetic writers, then two strategies."""
    train, test = fedp13n.load_dataset("synthetic", num_clients=12, seed=0, progress=False)
    fedavg_ids, p13n_ids = fedp13n.split_clients(
        train.client_ids, num_train=9, num_personalization=3
    )
    model_fn = functools.partial(fedp13n.emnist_conv_dropout, num_classes=62)
    process = fedp13n.build_weighted_fed_avg(model_fn, client_epochs=1, batch_size=20, seed=0)
    state, rounds = process.initialize(), []
    for round_num in (1, 2):
        clients = fedp13n.sample_clients(fedavg_ids, 1, seed=0, round_num=round_num)
        state, metrics = process.next(state, fedp13n.ClientSelection(train, clients))
        rounds.append(metrics)

    def strategy(num_epochs, lr):
        return functools.partial(
            fedp13n.build_personalize_fn,
            optimizer_fn=functools.partial(torch.optim.SGD, lr=lr),
            batch_size=20,
            num_epochs=num_epochs,
            num_epochs_per_eval=1,
        )

    def sizes():  # a custom strategy without accuracies: not a per_client.csv row
        return lambda model, train_data, test_data: {"n": len(train_data)}

    p13n_eval = fedp13n.build_personalization_eval(
        model_fn,
        {"sgd": strategy(2, 0.02), "fast": strategy(1, 0.1), "sizes": sizes},
        fedp13n.evaluate_fn,
        seed=0,
    )
    result = p13n_eval(
        process.get_model_weights(state),
        [
            {
                "client_id": c,
                "train_data": train.create_dataset(c),
                "test_data": test.create_dataset(c),
            }
            for c in p13n_ids
        ],
    )
    return train, result, rounds


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_library_result_writes_the_files_of_a_run(flow, tmp_path):
    train, result, rounds = flow
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deliberate omission is said in the report, no warning
        path = fedp13n.write_personalization_report(result, out, train_sizes=train)
    assert path == out / rd.REPORT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written elsewhere
    assert {rd.PER_CLIENT, rd.SUMMARY, rd.REPORT, rd.PERSONALIZATION} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / rd.FEDAVG_METRICS).exists() and not (out / rd.CONFIG).exists()

    # per_client.csv: one row per client x strategy x epoch, the result's numbers
    rows = _rows(out / rd.PER_CLIENT)
    epochs = {"sgd": ["epoch_1", "epoch_2"], "fast": ["epoch_1"]}
    ids = list(result.client_ids)
    assert len(ids) == 3 and len(rows) == len(ids) * 3
    expected = [(cid, s, e, i) for s, es in epochs.items() for e in es for i, cid in enumerate(ids)]
    base = result["baseline_metrics"]
    for row, (cid, s, e, i) in zip(rows, expected, strict=True):
        m = result[s][e]
        assert (row["client_id"], row["strategy"], row["epoch"]) == (cid, s, e)
        assert int(row["num_train_examples"]) == train.size(cid)
        assert int(row["num_test_examples"]) == m["num_test_examples"][i]
        assert float(row["accuracy"]) == m["accuracy"][i]
        assert float(row["loss"]) == m["loss"][i]
        assert float(row["baseline_accuracy"]) == base["accuracy"][i]
        assert float(row["baseline_loss"]) == base["loss"][i]

    # summary.json: the plain means of the result's lists
    summary = json.loads((out / rd.SUMMARY).read_text())
    assert summary["num_clients"] == 3
    assert summary["baseline"]["mean"] == pytest.approx(
        statistics.fmean(base["accuracy"]), abs=1e-12
    )
    for s, es in epochs.items():
        for e in es:
            mean = statistics.fmean(result[s][e]["accuracy"])
            assert summary["strategies"][s][e]["mean"] == pytest.approx(mean, abs=1e-12)
    assert json.loads((out / rd.PERSONALIZATION).read_text()) == json.loads(result.to_json())

    # the report says plainly what a library result lacks
    html = (out / rd.REPORT).read_text()
    assert library_note(fedavg=False).replace("'", "&#x27;") in html
    assert "no FedAvg rounds" in library_note(fedavg=False)
    assert "no run configuration (config.toml)" in library_note(fedavg=False)
    assert summarize_run(out).num_clients == 3  # `fedp13n report` reads the folder


def test_fedavg_rounds_give_the_training_curves_and_a_rewrite_replaces(flow, tmp_path):
    train, result, rounds = flow
    out = tmp_path / "out"
    fedp13n.write_personalization_report(result, out, train_sizes=train, fedavg_metrics=rounds)
    fedavg = _rows(out / rd.FEDAVG_METRICS)
    assert [int(r["round"]) for r in fedavg] == [1, 2]
    assert [float(r["loss"]) for r in fedavg] == [m.loss for m in rounds]
    assert (out / "fedavg_curves.png").is_file()
    html = (out / rd.REPORT).read_text()
    assert "no FedAvg rounds" not in html and "no run configuration" in html
    # again without rounds: the earlier call's curves do not pass for this result's
    sizes = {c: train.size(c) for c in result.client_ids}
    fedp13n.write_personalization_report(result, out, train_sizes=sizes, report=False)
    assert not (out / rd.FEDAVG_METRICS).exists()


def test_what_cannot_become_a_report(flow, tmp_path):
    train, result, _ = flow
    run = tmp_path / "run"
    run.mkdir()
    (run / rd.CONFIG).write_text("rounds = 3\n")
    with pytest.raises(ValueError) as e:
        fedp13n.write_personalization_report(result, run, train_sizes=train)
    assert str(e.value) == (
        f"output_dir {run} holds a 'fedp13n run' (it has config.toml); write the library result "
        "into another folder so neither overwrites the other."
    )
    assert sorted(p.name for p in run.iterdir()) == [rd.CONFIG]  # untouched
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"train_sizes has no client '.*' of the result"):
        fedp13n.write_personalization_report(result, out, train_sizes={})
    with pytest.raises(TypeError, match="train_sizes must be the ClientData"):
        fedp13n.write_personalization_report(result, out, train_sizes=[1, 2])
    empty = fedp13n.PersonalizationResult({k: v for k, v in result.items()}, client_ids=(), seed=0)
    with pytest.raises(ValueError, match="has no clients"):
        fedp13n.write_personalization_report(empty, out, train_sizes=train)
    with pytest.raises(TypeError, match="a PersonalizationResult"):
        fedp13n.write_personalization_report([1], out, train_sizes=train)
    assert not out.exists()  # nothing written for refused input
