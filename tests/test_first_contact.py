"""What a new user sees (issue 17): personalization progress with counts and an ETA, the
best strategy chosen on validation clients, TensorBoard per run and per epoch, and
``fedp13n data`` saying before it downloads."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fedp13n
from fedp13n.cli.main import app
from fedp13n.experiments.callbacks import ClientProgress, flatten_settings, format_duration
from fedp13n.experiments.config import ExperimentConfig, StrategyConfig
from fedp13n.experiments.p13n_experiment import progress_slice, run_experiment
from fedp13n.rundir import layout as rd


# -- progress ------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 5.4, 59.6, 130, 3725)] == [
        "0s",
        "5s",
        "1m00s",
        "2m10s",
        "1h02m05s",
    ]


def test_client_progress_counts_elapsed_and_eta_in_log_lines() -> None:
    clock, lines = FakeClock(), []
    with ClientProgress("personalization", 900, bar=False, log=lines.append, clock=clock) as p:
        assert p.line() == "personalization: 0/900 clients, 0s elapsed, ETA unknown"
        for _ in range(20):
            clock.now += 2.0
            p.advance(45)
    # a line at the first slice, then at every tenth of the clients, and at the end
    assert lines[0] == "personalization: 45/900 clients, 2s elapsed, ETA 38s"
    assert lines[1] == "personalization: 90/900 clients, 4s elapsed, ETA 36s"
    assert len(lines) == 11
    assert lines[-1] == "personalization: 900/900 clients, 40s elapsed"
    assert p.done == 900


def test_progress_slices_keep_every_worker_busy() -> None:
    assert progress_slice(900, 2) == 45  # about 20 updates
    assert progress_slice(50, 16) == 64  # at least 4 clients per worker: one slice
    assert progress_slice(6, 1) == 4


# -- one tiny run: progress, validation choice, TensorBoard ---------------------------------------
STRATEGIES = [StrategyConfig("sgd", "sgd", 0.05, epochs=2), StrategyConfig("slow", "sgd", 0.001)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    tmp = tmp_path_factory.mktemp("first-contact")
    config = ExperimentConfig(
        dataset="synthetic", synthetic_clients=14, num_train_clients=6, num_p13n_clients=8,
        num_val_clients=2, rounds=2, clients_per_round=2, local_epochs=1, eval_every=1,
        num_eval_clients=6, num_global_eval_clients=4, p13n_epochs=1, executor="in-process",
        strategies=STRATEGIES, tensorboard=str(tmp / "tb"),
    )  # fmt: skip
    lines: list[str] = []
    run_experiment(config, tmp / "tiny-run", progress=False, log=lines.append)
    return tmp / "tiny-run", tmp / "tb", lines


def _progress_counts(lines: list[str], label: str) -> list[tuple[int, int]]:
    found = [re.match(rf"{label}: (\d+)/(\d+) clients, ", line) for line in lines]
    return [(int(m[1]), int(m[2])) for m in found if m]


def test_personalization_progress_ends_at_all_clients(tiny_run) -> None:
    run, _, lines = tiny_run
    # in-process: slices of 4 clients; the 6 reported clients end at 6/6, the 2 validation
    # clients at 2/2
    assert _progress_counts(lines, "personalization") == [(4, 6), (6, 6)]
    assert _progress_counts(lines, "validation") == [(2, 2)]
    assert any(re.fullmatch(r"personalization: 6/6 clients, \d+m?\d*s elapsed", x) for x in lines)
    assert len(json.loads((run / rd.PERSONALIZATION).read_text())["client_ids"]) == 6


def test_slices_give_the_numbers_of_one_evaluation(tiny_run) -> None:
    run, _, _ = tiny_run
    saved = json.loads((run / rd.PERSONALIZATION).read_text())
    train, test = fedp13n.load_dataset("synthetic", num_clients=14, seed=0, progress=False)
    model_fn = functools.partial(fedp13n.emnist_conv_dropout, num_classes=62)
    fn_dict = {
        "sgd": functools.partial(
            fedp13n.build_personalize_fn,
            optimizer_fn=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.0),
            batch_size=20, num_epochs=2, num_epochs_per_eval=1,
        ),
        "slow": functools.partial(
            fedp13n.build_personalize_fn,
            optimizer_fn=functools.partial(torch.optim.SGD, lr=0.001, momentum=0.0),
            batch_size=20, num_epochs=1, num_epochs_per_eval=1,
        ),
    }  # fmt: skip
    whole = fedp13n.build_personalization_eval(model_fn, fn_dict, fedp13n.evaluate_fn, seed=0)(
        torch.load(run / rd.GLOBAL_WEIGHTS, weights_only=True),
        [
            {
                "client_id": c,
                "train_data": train.create_dataset(c),
                "test_data": test.create_dataset(c),
            }
            for c in saved["client_ids"]
        ],  # fmt: skip
    )
    assert json.loads(json.dumps(whole.to_dict())) == saved


def test_best_is_chosen_on_the_validation_clients(tiny_run) -> None:
    run, _, _ = tiny_run
    tuning = json.loads((run / rd.TUNING).read_text())
    assert len(tuning["validation_client_ids"]) == 2 and tuning["strategies"] == {}
    val = tuning["validation_accuracy"]
    assert set(val) == {"sgd", "slow"} and set(val["sgd"]) == {"epoch_1", "epoch_2"}
    cands = [(v, s, e) for s in val for e, v in val[s].items()]
    _, strategy, epoch = max(cands, key=lambda t: (t[0], -cands.index(t)))
    best = json.loads((run / rd.SUMMARY).read_text())["best"]
    assert (best["strategy"], best["epoch"]) == (strategy, epoch)
    assert best["held_out"] is True
    assert best["how"] == "best, chosen on the 2 validation clients"


def test_tensorboard_has_every_epoch_and_the_settings_in_the_runs_subfolder(tiny_run) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, tb, _ = tiny_run
    assert [p.name for p in tb.iterdir()] == [run.name]  # one subfolder per run
    acc = EventAccumulator(str(tb / run.name))
    acc.Reload()
    summary = json.loads((run / rd.SUMMARY).read_text())
    base = summary["baseline"]
    for strategy, epochs in (("sgd", 2), ("slow", 1)):
        rows = [summary["strategies"][strategy][f"epoch_{k}"] for k in range(1, epochs + 1)]
        for what in ("mean", "ci_low", "ci_high"):
            logged = acc.Scalars(f"personalization/{strategy}/accuracy_{what}")
            assert [e.step for e in logged] == list(range(epochs + 1))
            expected = [base[what]] + [r[what] for r in rows]
            assert [e.value for e in logged] == pytest.approx(expected, rel=1e-6)
    head = acc.Scalars("personalization/sgd_epoch_1_accuracy")
    assert [e.step for e in head] == [2]
    # the settings as hparams
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["rounds"].number_value == 2
    assert hp["dataset"].string_value == "synthetic"
    assert hp["strategies.sgd.learning_rate"].number_value == 0.05
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metrics = {m.name.tag for m in exp.experiment.metric_infos}
    assert "personalization/baseline_accuracy" in metrics


def test_flatten_settings() -> None:
    flat = flatten_settings(
        {"rounds": 3, "data_dir": None, "strategies": [{"name": "a", "tune": {"lr": [1, 2]}}],
         "stages": []}
    )  # fmt: skip
    assert flat == {
        "rounds": 3,
        "data_dir": "None",
        "strategies.a.tune.lr": "[1, 2]",
        "stages": "[]",
    }


# -- fedp13n data without --data-dir ---------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    """The downloader, replaced: it records its calls and fails as a dead network does."""
    from fedp13n.data import datasets
    from fedp13n.data.download import DownloadError

    calls = []

    def fail(url, target, **kw):
        calls.append((url, Path(target)))
        raise DownloadError(f"download of {url} failed (no network in this test).")

    monkeypatch.setattr(datasets, "download_file", fail)
    return calls


def test_data_info_says_before_downloading(no_network, tmp_path) -> None:
    cache = tmp_path / "cache"
    res = CliRunner().invoke(app, ["data", "info", "--cache-dir", str(cache)])
    assert res.exit_code == 2
    url = "https://storage.googleapis.com/tff-datasets-public/fed_emnist.tar.bz2"
    assert no_network == [(url, cache / "downloads" / "fed_emnist.tar.bz2")]
    lines = res.output.splitlines()
    assert lines == [
        f"downloading EMNIST-62 (~200 MB) from {url} to {cache}; pass --data-dir to use local "
        "files",
        f"error: download of {url} failed (no network in this test).",
    ]


def test_data_download_and_the_sqlite_source_say_so_too(no_network, tmp_path) -> None:
    cache = tmp_path / "cache"
    res = CliRunner().invoke(
        app, ["data", "download", "--dataset", "emnist-sqlite", "--cache-dir", str(cache)]
    )
    url = "https://storage.googleapis.com/tff-datasets-public/emnist_all.sqlite.lzma"
    assert res.exit_code == 2
    assert res.output.splitlines()[0] == (
        f"downloading EMNIST (TFF's SQLite file) from {url} to {cache}; pass --data-dir to use "
        "local files"
    )
    assert res.output.splitlines()[1].startswith("error: download of ")


def test_no_download_no_notice(no_network, tmp_path) -> None:
    res = CliRunner().invoke(app, ["data", "info", "--dataset", "synthetic", "--num-clients", "3"])
    assert res.exit_code == 0, res.output
    assert "downloading" not in res.output and no_network == []
    res = CliRunner().invoke(app, ["data", "info", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and no_network == []
    assert res.output.startswith("error: missing ")


def test_the_divergence_warning_says_epoch_2() -> None:
    from fedp13n.experiments.p13n_experiment import diverged_clients

    nan = float("nan")
    result = {
        "baseline_metrics": {"loss": [1.0, 1.0], "accuracy": [0.5, 0.5]},
        "sgd": {
            "epoch_1": {"loss": [1.0, 1.0], "accuracy": [0.5, 0.5]},
            "epoch_2": {"loss": [nan, 1.0], "accuracy": [0.0, 0.5]},
        },
    }
    assert diverged_clients(result) == [
        "strategy 'sgd': the test loss is not finite for 1 of 2 clients (epoch 2: 1); their "
        "accuracy is no measurement (the fine-tuning diverged: lower its learning rate)"
    ]


def test_client_progress_bar_counts_to_the_total() -> None:
    with ClientProgress("personalization", 10, bar=True) as p:
        p.advance(4)
        p.advance(6)
        task = p._progress.tasks[0]
        assert (task.description, task.completed, task.total) == ("personalization", 10, 10)
    assert p._progress is None  # stopped


def _broken_on_six(model, train_data, test_data):
    if len(train_data) == 6:
        raise ValueError("client six is broken")
    return {"ok": 1.0}


def test_a_failing_client_is_named_by_its_place_among_all_clients() -> None:
    import numpy as np

    from fedp13n.data import ClientDataset
    from fedp13n.execution.base import ClientWorkError
    from fedp13n.execution.factory import make_executor
    from fedp13n.experiments.p13n_experiment import _run_eval, model_fn_for

    config = ExperimentConfig(dataset="synthetic")
    weights = model_fn_for(config)().state_dict()

    def data(n: int) -> ClientDataset:
        return ClientDataset(np.zeros((n, 28, 28), np.float32), np.zeros(n, np.int64))

    inputs = [
        {"client_id": f"c{n}", "train_data": data(n + 1), "test_data": data(1)} for n in range(6)
    ]
    lines: list[str] = []
    failed = pytest.raises(ClientWorkError, match=r"^task 5 \(client 'c5'\) failed .*six is")
    with make_executor("processes", num_workers=1) as ex, failed:  # slices of 4: 0-3, 4-5
        _run_eval(
            config, {"s": lambda: _broken_on_six}, weights, inputs, ex, False,
            "personalization", None, lines.append,
        )  # fmt: skip
    assert lines == [lines[0]] and lines[0].startswith("personalization: 4/6 clients, ")


def test_run_says_before_downloading_too(no_network, tmp_path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "run",
            "--dataset",
            "emnist",
            "--cache-dir",
            str(cache),
            "--output-dir",
            str(out),
            "--executor",
            "in-process",
            "--no-progress",
        ],
    )
    url = "https://storage.googleapis.com/tff-datasets-public/fed_emnist.tar.bz2"
    assert res.exit_code == 2, res.output
    assert no_network == [(url, cache / "downloads" / "fed_emnist.tar.bz2")]
    notice = (
        f"downloading EMNIST-62 (~200 MB) from {url} to {cache}; pass --data-dir to use local files"
    )
    assert notice in res.output and "error: download of " in res.output
