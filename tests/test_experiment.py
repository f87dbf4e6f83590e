"""End-to-end: ``fedp13n run`` writes a complete run directory, resumes after a kill with
identical numbers, and learns on real writers."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedp13n.cli.main import app
from fedp13n.experiments.config import ExperimentConfig
from fedp13n.experiments.p13n_experiment import run_experiment
from fedp13n.rundir import layout as rd

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/femnist_sample"

SMALL = [
    "--dataset", "synthetic", "--synthetic-clients", "40", "--rounds", "3",
    "--clients-per-round", "5", "--local-epochs", "2", "--num-eval-clients", "8",
    "--executor", "in-process", "--no-progress",
]  # fmt: skip


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_synthetic_writes_everything_and_personalization_helps(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", *SMALL, "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    for name in (rd.CONFIG, rd.FEDAVG_METRICS, rd.GLOBAL_WEIGHTS, rd.PERSONALIZATION,
                 rd.PER_CLIENT, rd.SUMMARY, rd.REPORT):  # fmt: skip
        assert (out / name).is_file(), name

    config = tomllib.loads((out / rd.CONFIG).read_text())
    assert config["rounds"] == 3 and config["dataset"] == "synthetic"
    assert [s["name"] for s in config["strategies"]] == ["sgd", "adam"]

    fedavg = _rows(out / rd.FEDAVG_METRICS)
    assert [int(r["round"]) for r in fedavg] == [1, 2, 3]
    assert all(int(r["num_clients"]) == 5 for r in fedavg)
    assert fedavg[-1]["eval_accuracy"] != ""  # measured at the end

    result = json.loads((out / rd.PERSONALIZATION).read_text())
    ids = result["client_ids"]
    assert len(ids) == 8 and len(set(ids)) == 8
    for strategy in ("sgd", "adam"):
        assert list(result[strategy]) == ["epoch_1", "epoch_2", "epoch_3", "num_train_examples"]
        for epoch in ("epoch_1", "epoch_2", "epoch_3"):
            assert all(len(v) == 8 for v in result[strategy][epoch].values())

    rows = _rows(out / rd.PER_CLIENT)
    assert len(rows) == 8 * 2 * 3  # clients x strategies x epochs
    # The per-client table agrees with the nested result, client by client.
    for row in rows:
        i = ids.index(row["client_id"])
        assert float(row["accuracy"]) == pytest.approx(
            result[row["strategy"]][row["epoch"]]["accuracy"][i]
        )
        assert float(row["baseline_accuracy"]) == pytest.approx(
            result["baseline_metrics"]["accuracy"][i]
        )
        # num_train_examples is summed over 3 epochs (TFF): 3 x the client's train size
        assert result[row["strategy"]]["num_train_examples"][i] == 3 * int(
            row["num_train_examples"]
        )

    base = np.mean(result["baseline_metrics"]["accuracy"])
    tuned = np.mean(result["sgd"]["epoch_3"]["accuracy"])
    assert tuned > base + 0.05, (base, tuned)
    assert "mean baseline accuracy" in res.output


def test_existing_run_dir_needs_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text("")  # a run that failed before training: reusable
    res = CliRunner().invoke(
        app, ["run", "--data-dir", str(tmp_path / "nowhere"), "--output-dir", str(out)]
    )
    assert res.exit_code == 2 and "fed_emnist_train.h5" in res.output
    (out / rd.FEDAVG_METRICS).write_text("round\n1\n")  # a finished round: never started over
    res = CliRunner().invoke(app, ["run", *SMALL, "--output-dir", str(out)])
    assert res.exit_code == 2
    assert "--resume" in res.output


def test_bad_option_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(
        app, ["run", "--dataset", "mnist", "--output-dir", str(tmp_path / "r")]
    )
    assert res.exit_code == 2
    assert "dataset 'mnist' is not a data source of task 'emnist'" in res.output


def _fedavg_numbers(run_dir):
    return [
        (r["round"], r["loss"], r["accuracy"], r["num_examples"])
        for r in _rows(run_dir / rd.FEDAVG_METRICS)
    ]


@pytest.mark.slow
def test_kill_and_resume_gives_identical_weights(tmp_path):
    args = [
        "--dataset", "synthetic", "--synthetic-clients", "30", "--rounds", "8",
        "--clients-per-round", "4", "--local-epochs", "2", "--num-eval-clients", "3",
        "--checkpoint-every", "1", "--executor", "in-process", "--no-progress", "--no-report",
        "--strategy", "sgd:0.02", "--p13n-epochs", "1",
    ]  # fmt: skip
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fedp13n.cli.main", "run", *args, "--output-dir", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not rd.checkpoint_path(killed, 2).exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (killed / rd.GLOBAL_WEIGHTS).exists(), "killed too late to test resuming"

    res = CliRunner().invoke(app, ["run", *args, "--output-dir", str(killed), "--resume"])
    assert res.exit_code == 0, res.output
    assert "resumed from" in res.output

    straight = tmp_path / "straight"
    res = CliRunner().invoke(app, ["run", *args, "--output-dir", str(straight)])
    assert res.exit_code == 0, res.output

    w1 = torch.load(killed / rd.GLOBAL_WEIGHTS, weights_only=True)
    w2 = torch.load(straight / rd.GLOBAL_WEIGHTS, weights_only=True)
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert _fedavg_numbers(killed) == _fedavg_numbers(straight)
    assert len(_fedavg_numbers(killed)) == 8
    p1 = json.loads((killed / rd.PERSONALIZATION).read_text())
    p2 = json.loads((straight / rd.PERSONALIZATION).read_text())
    assert p1 == p2


@pytest.mark.slow
@pytest.mark.skipif(not (SAMPLE / "fed_emnist_train.h5").is_file(), reason="real sample absent")
def test_real_sample_short_run_learns(tmp_path):
    config = ExperimentConfig(
        dataset="emnist", data_dir=str(SAMPLE), cache_dir=str(tmp_path / "cache"),
        num_train_clients=220, num_p13n_clients=66, rounds=6, clients_per_round=5,
        local_epochs=5, client_learning_rate=0.05, num_eval_clients=6,
        num_global_eval_clients=40, executor="processes", workers=2,
    )  # fmt: skip
    result = run_experiment(config, tmp_path / "run", progress=False, log=lambda s: None)
    final = result.round_metrics[-1]
    # chance is 1/62 = 0.016 (the most frequent class of these writers: about 0.06)
    assert float(final["eval_accuracy"]) > 0.15, final
    assert float(result.round_metrics[-1]["loss"]) < float(result.round_metrics[0]["loss"])
