"""The awkward clients of TFF's *full* data sets, which the real samples leave out
(``tests/full_data_sets.py`` writes them in TFF's h5 layout): Shakespeare roles with one
train snippet, an empty only test snippet, only empty snippets, a 6,835-character snippet,
10 test characters; EMNIST writers with one train example; and, in data of one's own,
clients without test (or train) examples. Each runs through the real CLI in seconds (tiny
models, two rounds)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from full_data_sets import (
    emnist_writers,
    small_writers,
    tiny_char,
    write_emnist,
    write_shakespeare,
)
from typer.testing import CliRunner

from fedp13n.algorithms import ClientSelection, build_weighted_fed_avg
from fedp13n.cli.main import app
from fedp13n.data import ClientData
from fedp13n.data.shakespeare import read_shakespeare_dir
from fedp13n.execution import InProcessExecutor

#: TFF 0.87's own preprocessing of the awkward roles (``char_prediction_preprocessing``
#: with TFF's evaluation spec): role -> [examples, sum of x ids, sum of y ids]; printed by
#: ``tests/data/record_tff_full_data.py`` with the TFF venv. An empty snippet is one
#: example ``x = [BOS, EOS, 0, ...]`` (88 + 89 = 177), ``y = [EOS, 0, ...]`` (89).
TFF = {
    "train": {
        "PLAY_ALL_EMPTY": [1, 177, 89],
        "PLAY_EMPTY_TEST": [11, 22867, 22481],
        "PLAY_LONG": [87, 217425, 217530],
        "PLAY_ONE_TRAIN": [1, 1452, 1364],
        "PLAY_SOME_EMPTY": [5, 5499, 5157],
        "PLAY_TINY_TEST": [8, 18356, 18042],
    },
    "test": {
        "PLAY_ALL_EMPTY": [1, 177, 89],
        "PLAY_EMPTY_TEST": [1, 177, 89],
        "PLAY_LONG": [3, 6169, 6123],
        "PLAY_ONE_TRAIN": [1, 1998, 1910],
        "PLAY_SOME_EMPTY": [2, 1376, 1200],
        "PLAY_TINY_TEST": [1, 444, 356],
    },
}

SMALL = "full_data_sets:small_writers"


@pytest.fixture(scope="module")
def shakespeare_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shakespeare")
    write_shakespeare(folder)
    return folder


@pytest.fixture(scope="module")
def emnist_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("emnist")
    write_emnist(folder)
    return folder


def _run(args: list[str]):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _value(text: str) -> float:
    return float(text) if text not in ("", "nan", "None") else math.nan


# -- the data: TFF's preprocessing of the awkward roles ------------------------------------
def test_awkward_roles_give_tffs_examples(shakespeare_dir):
    train, test, (n_train, n_test) = read_shakespeare_dir(shakespeare_dir)
    # snippets: normal roles 6+7+...+12+6 = 69 train, 8 x 2 test; awkward 17 and 7
    assert (n_train, n_test) == (69 + 17, 16 + 7)
    for split, data in (("train", train), ("test", test)):
        for cid, (n, sum_x, sum_y) in TFF[split].items():
            ds = data.create_dataset(cid)
            x, y = np.asarray(ds.x), np.asarray(ds.y)
            assert [len(x), int(x.sum()), int(y.sum())] == [n, sum_x, sum_y], (split, cid)
    # so no role of TFF's full set is without train or test examples (an empty snippet is
    # one example), and none is left out of a mean: every client has a target (EOS) to count
    assert min(train.size(c) for c in train.client_ids) == 1
    assert min(test.size(c) for c in test.client_ids) == 1


def test_data_info_counts_the_awkward_clients(shakespeare_dir, emnist_dir, tmp_path):
    out = _run(["data", "info", "--dataset", "shakespeare", "--data-dir", str(shakespeare_dir),
                "--cache-dir", str(tmp_path)])  # fmt: skip
    # 8 normal roles of 6 to 12 snippets of 20-300 characters, then the awkward roles
    assert "│ clients            │" in out and "14 │" in out
    assert "277" in out  # train examples: PLAY_LONG alone has 87
    out = _run(["data", "info", "--data-dir", str(emnist_dir), "--cache-dir", str(tmp_path)])
    sizes = emnist_writers()
    assert f"{sum(a for a, _ in sizes.values())}" in out
    assert "│ train │   1 │" in out  # the smallest writer: one train example


# -- FedAvg's weights -----------------------------------------------------------------------
def _round(process, data: ClientData, ids: list[str]):
    state, metrics = process.next(process.initialize(), ClientSelection(data, ids))
    return process.get_model_weights(state), metrics


def _plain_fedavg(model_fn, loss=None):
    kw = {} if loss is None else {"loss_fn": loss, "metrics_fn": lambda o, y: torch.zeros(())}
    return build_weighted_fed_avg(
        model_fn,
        lambda p: torch.optim.SGD(p, lr=0.5),
        lambda p: torch.optim.SGD(p, lr=1.0),  # plain weighted averaging of the models
        client_epochs=1, batch_size=4, seed=3, executor=InProcessExecutor(), **kw,
    )  # fmt: skip


def _char_loss(out, y):
    return torch.nn.functional.cross_entropy(out, y.long())


def test_fedavg_weighs_a_one_snippet_role_by_its_one_example(shakespeare_dir):
    train, _, _ = read_shakespeare_dir(shakespeare_dir)
    process = _plain_fedavg(tiny_char, _char_loss)
    both, metrics = _round(process, train, ["PLAY_ONE_TRAIN", "PLAY_LONG"])
    one, _ = _round(process, train, ["PLAY_ONE_TRAIN"])  # a round of one client: its model
    long, _ = _round(process, train, ["PLAY_LONG"])
    assert metrics.num_examples == 1 + 87 and metrics.num_clients == 2
    for name in both:  # TFF's weights: the examples each client trained on, 1 and 87
        expected = (1 * one[name].double() + 87 * long[name].double()) / 88
        torch.testing.assert_close(both[name].double(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one["out.weight"], long["out.weight"])


def test_fedavg_gives_a_client_without_examples_weight_zero():
    from full_data_sets import tiny_image

    train, _ = small_writers()
    data = ClientData.from_clients((c, x, y) for c, (x, y) in train.items())
    process = _plain_fedavg(lambda: tiny_image(4))
    with_empty, metrics = _round(process, data, ["no_train", "w00"])
    alone, alone_metrics = _round(process, data, ["w00"])
    assert metrics.num_examples == alone_metrics.num_examples == 8  # w00's 8 examples
    for name in alone:
        torch.testing.assert_close(with_empty[name], alone[name], rtol=0, atol=0)


# -- TFF's protocol with clients without test examples ----------------------------------------
OWN = [
    "run", "--dataset", SMALL, "--model", "full_data_sets:tiny_image", "--rounds", "2",
    "--clients-per-round", "5", "--local-epochs", "1", "--batch-size", "4", "--client-lr",
    "0.5", "--p13n-batch-size", "4", "--p13n-epochs", "2", "--split-seed", "10",
    "--num-train-clients", "9", "--num-p13n-clients", "8", "--num-global-eval-clients", "9",
    "--executor", "in-process", "--no-progress",
]  # fmt: skip
#: Split seed 10: validation w10, w11; personalization w06, no_test_1, no_test_0,
#: one_train, w08, w04; FedAvg clients include no_test_2 and no_train.
NO_TEST = {"no_test_0", "no_test_1"}


def test_clients_without_test_examples_are_left_out_of_the_means_and_said(tmp_path):
    out = _run([*OWN, "--num-val-clients", "2", "--strategy", "sgd:0.1", "--strategy",
                "adam:0.01", "--output-dir", str(tmp_path)])  # fmt: skip
    rows = _csv(tmp_path / "per_client.csv")
    assert {r["client_id"] for r in rows if r["num_test_examples"] == "0"} == NO_TEST
    assert {r["client_id"] for r in rows if r["client_id"] == "one_train"}  # 1 example: runs
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_clients"] == 6 and summary["num_clients_without_test_examples"] == 2
    for strategy, epochs in summary["strategies"].items():
        for epoch, stats in epochs.items():
            acc = [_value(r["accuracy"]) for r in rows
                   if (r["strategy"], r["epoch"]) == (strategy, epoch)]  # fmt: skip
            measured = [a for a in acc if math.isfinite(a)]
            assert stats["n"] == len(measured) == 4
            assert stats["mean"] == pytest.approx(sum(measured) / 4, abs=1e-12)
    base = {r["client_id"]: _value(r["baseline_accuracy"]) for r in rows}
    assert summary["baseline"]["mean"] == pytest.approx(
        np.mean([v for c, v in base.items() if c not in NO_TEST]), abs=1e-12
    )
    assert any(v > 0 for v in base.values())  # a real measurement, not all zeros
    line = "2 of 6 clients without test examples are left out of the means"
    said = [t for t in out.splitlines() if t.startswith(f"personalization: {line} (e.g. ")]
    assert len(said) == 1 and set(said[0].split("(e.g. ")[1][:-1].split(", ")) == NO_TEST
    assert f"{line}." in out  # under the table
    assert "diverged" not in out  # a client without test examples did not diverge
    assert line in (tmp_path / "report.html").read_text()


def test_tuning_with_select_epoch_leaves_validation_clients_without_test_out(tmp_path):
    """Split seed 4: the first 5 personalization clients (the validation clients) are
    no_test_2, w07, w10, w03, no_test_1."""
    config = tmp_path / "tuned.toml"
    config.write_text(
        '[[strategies]]\nname = "sgd"\nselect_epoch = true\n'
        "tune = { learning_rate = [0.01, 0.1] }\n"
    )
    args = [*OWN, "--split-seed", "4", "--num-val-clients", "5", "--config", str(config)]
    out = _run([*args, "--output-dir", str(tmp_path / "run")])
    assert "validation: 2 of 5 clients without test examples are left out of the means" in out
    tuning = json.loads((tmp_path / "run" / "tuning.json").read_text())
    assert tuning["validation_client_ids"] == ["no_test_2", "w07", "w10", "w03", "no_test_1"]
    chosen = tuning["strategies"]["sgd"]
    for c in chosen["candidates"]:  # every curve a number: the 3 measured clients' mean
        assert all(math.isfinite(v) for v in c["validation_accuracy"].values())
    best = max(
        (c["validation_accuracy"][e], -i)
        for i, c in enumerate(chosen["candidates"])
        for e in c["validation_accuracy"]
    )
    assert chosen["validation_accuracy"] == best[0]


def test_no_validation_or_evaluated_client_with_test_examples_is_one_line_error(tmp_path):
    # split seed 1: the first personalization client (the validation client) is no_test_0
    res = CliRunner().invoke(app, [*OWN, "--split-seed", "1", "--num-val-clients", "1",
                                   "--output-dir", str(tmp_path / "a")])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert (
        "error: the only one of the validation clients has no test examples, so there is no "
        "accuracy to measure on them; raise num_val_clients" in res.output
    )
    assert "Traceback" not in res.output and not (tmp_path / "a" / "checkpoints").exists()


# -- every method, on both data sets ------------------------------------------------------
METHODS = ["fedavg", "fedper", "fedrep", "lg_fedavg", "ditto", "scaffold", "per_fedavg",
           "pfedme", "fedbn", "apfl"]  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_with_clients_without_test_examples(method, tmp_path):
    extra = {"fedrep": ["--head-epochs", "1"], "pfedme": ["--pfedme-k", "1"]}.get(method, [])
    out = _run([*OWN, "--method", method, *extra, "--strategy", "sgd:0.1", "--no-report",
                "--output-dir", str(tmp_path)])  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_clients"] == 8 and summary["num_clients_without_test_examples"] == 2
    assert summary["baseline"]["n"] == 6
    assert math.isfinite(summary["strategies"]["sgd"]["epoch_1"]["mean"])
    if method == "fedavg":
        assert "other_protocols" not in summary
        return
    rows = _csv(tmp_path / "per_client_own_state.csv")
    for protocol in ("own_state", "new_clients"):
        mine = [r for r in rows if r["protocol"] == protocol]
        measured = [_value(r["accuracy"]) for r in mine if r["num_test_examples"] != "0"]
        stats = summary["other_protocols"][protocol]
        assert stats["n"] == len(measured)
        assert stats.get("num_clients_without_test_examples", 0) == len(mine) - len(measured)
        assert stats["mean"] == pytest.approx(np.mean(measured), abs=1e-12)
    new = [r for r in rows if r["protocol"] == "new_clients"]
    assert {r["client_id"] for r in new if r["num_test_examples"] == "0"} == NO_TEST
    assert (
        f"new clients: mean accuracy {summary['other_protocols']['new_clients']['mean']:.4f} "
        "on 6 clients (untuned: the stage's settings); 2 of 8 clients without test examples "
        "are left out of the means" in out
    )


SHAKESPEARE = [
    "run", "--task", "shakespeare", "--model", "full_data_sets:tiny_char", "--rounds", "2",
    "--clients-per-round", "4", "--local-epochs", "1", "--batch-size", "4", "--client-lr",
    "1", "--p13n-batch-size", "4", "--p13n-epochs", "1", "--strategy", "sgd:0.1",
    "--split-seed", "6", "--num-train-clients", "7", "--num-p13n-clients", "7",
    "--num-val-clients", "2", "--executor", "in-process", "--no-progress", "--no-report",
]  # fmt: skip
#: Split seed 6: FedAvg clients include PLAY_TINY_TEST, PLAY_SOME_EMPTY and PLAY_LONG;
#: validation PLAY_ONE_TRAIN, PLAY_EMPTY_TEST; personalization includes PLAY_ALL_EMPTY.


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_the_awkward_shakespeare_roles(method, shakespeare_dir, tmp_path):
    extra = {"fedrep": ["--head-epochs", "1"], "pfedme": ["--pfedme-k", "1", "--client-lr", "0.05"],
             "fedbn": ["--model", "full_data_sets:tiny_char_bn"]}.get(method, [])  # fmt: skip
    _run([*SHAKESPEARE, "--data-dir", str(shakespeare_dir), "--cache-dir", str(tmp_path / "c"),
          "--method", method, *extra, "--output-dir", str(tmp_path / "run")])  # fmt: skip
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    assert split["validation"] == ["PLAY_ONE_TRAIN", "PLAY_EMPTY_TEST"]
    assert "PLAY_ALL_EMPTY" in split["personalization"]
    rows = _csv(run / "per_client.csv")
    # every role is measured (an empty snippet still gives one example with its EOS target)
    assert all(math.isfinite(_value(r["accuracy"])) for r in rows)
    empty = [r for r in rows if r["client_id"] == "PLAY_ALL_EMPTY"]
    assert empty and all(r["num_train_examples"] == "1" for r in empty)
    summary = json.loads((run / "summary.json").read_text())
    assert "num_clients_without_test_examples" not in summary and summary["baseline"]["n"] == 5
    metrics = _csv(run / "fedavg_metrics.csv")
    assert [r["num_skipped_clients"] for r in metrics] == ["0", "0"]


# -- batch norms on a batch of one ----------------------------------------------------------
def test_dnn_bn_trains_a_one_example_writer_with_fedbn(emnist_dir, tmp_path):
    """PyTorch's BatchNorm1d refuses a training batch of one; Keras's (TFF's models) does
    not. Writers f9000_01 and f9001_02 have one train example each."""
    out = _run(["run", "--data-dir", str(emnist_dir), "--cache-dir", str(tmp_path / "c"),
                "--model", "dnn_bn", "--method", "fedbn", "--rounds", "2", "--clients-per-round",
                "8", "--local-epochs", "1", "--batch-size", "4", "--client-lr", "0.05",
                "--num-train-clients", "8", "--strategy", "sgd:0.05", "--p13n-epochs", "1",
                "--executor", "in-process", "--no-progress", "--no-report",
                "--output-dir", str(tmp_path / "run")])  # fmt: skip
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert "f9001_02" in split["fedavg"] and "f9000_01" in split["personalization"]
    assert "own state: mean accuracy" in out
    rows = _csv(tmp_path / "run" / "per_client.csv")
    assert [r["num_train_examples"] for r in rows if r["client_id"] == "f9000_01"] == ["1"]


def test_batch_norm_of_one_example_is_kerass():
    from fedp13n.models.layers import BatchNorm1d

    bn, ref = BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    x = torch.tensor([[1.0, 2.0, -1.0], [3.0, 0.0, 1.0]])
    torch.testing.assert_close(bn(x), ref(x), rtol=0, atol=0)  # otherwise PyTorch's
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -0.5, 2.0]))
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    one = torch.tensor([[4.0, -2.0, 6.0]], requires_grad=True)
    out = bn(one)
    # the example normalized by its own statistics (mean itself, variance 0): the bias
    assert out.tolist() == [[0.5, -0.5, 2.0]]
    torch.testing.assert_close(bn.running_mean, 0.9 * mean + 0.1 * one.detach()[0])
    torch.testing.assert_close(bn.running_var, 0.9 * var)  # toward 0, Keras's biased variance
    assert int(bn.num_batches_tracked) == 2
    out.sum().backward()
    assert one.grad.tolist() == [[0.0, 0.0, 0.0]] and bn.bias.grad.tolist() == [1.0, 1.0, 1.0]


def test_a_round_says_which_clients_it_left_out_of_the_average():
    from fedp13n.experiments.callbacks import round_info

    row = {"loss": 2.0, "accuracy": 0.5, "examples_per_second": 10.0, "num_clients": 1,
           "num_skipped_clients": 3}  # fmt: skip
    assert round_info(row) == (
        "loss 2.000 acc 0.500 10 ex/s; 3 of 4 clients left out of the average (update not "
        "finite: lower the client learning rate)"
    )
    assert round_info({**row, "num_skipped_clients": 0}) == "loss 2.000 acc 0.500 10 ex/s"


def test_a_client_without_test_examples_is_not_called_diverged():
    from fedp13n.experiments.p13n_experiment import diverged_clients, without_test_line
    from fedp13n.personalization.result import PersonalizationResult

    nan = float("nan")
    base = {"num_test_examples": [0, 3, 2], "loss": [nan, 1.0, 1.0], "accuracy": [nan, 0.5, 0.5]}
    result = PersonalizationResult(
        baseline_metrics=base,
        sgd={"epoch_1": {**base, "loss": [nan, nan, 1.0], "accuracy": [nan, 0.0, 0.5]}},
        client_ids=["empty", "a", "b"],
    )
    assert diverged_clients(result) == [  # client "a" diverged, "empty" has nothing to measure
        "strategy 'sgd': the test loss is not finite for 1 of 3 clients (epoch 1: 1); their "
        "accuracy is no measurement (the fine-tuning diverged: lower its learning rate)"
    ]
    assert without_test_line(result, "validation: ") == (
        "validation: 1 of 3 clients without test examples is left out of the means (e.g. empty)"
    )
