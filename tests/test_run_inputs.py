"""Run-level bad input and surprises found by an audit of the CLI: relative folders and
--resume from elsewhere, --resume --rounds on a staged run, resuming on another device,
strategies the model refuses caught before training, diverged fine-tuning said, a global
model that cannot be evaluated stopped, files left by a killed writer removed."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from fedp13n.algorithms.loop import LearningGuard, TrainingError
from fedp13n.cli.main import app
from fedp13n.experiments.config import ExperimentConfig
from fedp13n.rundir import layout as rd
from fedp13n.utils.fs import remove_stale_temporaries

TINY = [
    "run", "--dataset", "synthetic", "--synthetic-clients", "10", "--num-train-clients", "6",
    "--num-p13n-clients", "4", "--clients-per-round", "2",
    "--local-epochs", "1", "--num-eval-clients", "2", "--p13n-epochs", "1",
    "--executor", "in-process", "--no-report", "--no-progress",
]  # fmt: skip


def _invoke(*args):
    return CliRunner().invoke(app, [*TINY, *args])


def _error(res, *fragments):
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _rounds(run_dir):
    with open(run_dir / rd.FEDAVG_METRICS, newline="") as f:
        return [int(r["round"]) for r in csv.DictReader(f)]


def test_relative_folders_are_saved_absolute_so_resume_works_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "a")
    res = _invoke("--rounds", "1", "--cache-dir", "cache", "--output-dir", str(out))
    assert res.exit_code == 0, res.output
    saved = ExperimentConfig.from_toml(out / rd.CONFIG)
    assert saved.cache_dir == str(tmp_path / "a" / "cache")
    monkeypatch.chdir(tmp_path / "b")  # elsewhere, and the same relative option again
    res = CliRunner().invoke(app, ["run", "--resume", "--output-dir", str(out), "--rounds", "2"])
    assert res.exit_code == 0, res.output
    assert _rounds(out) == [1, 2]


def test_resume_rounds_on_a_run_whose_stages_set_their_own_is_refused(tmp_path):
    out = tmp_path / "run"
    res = _invoke("--stage", "a:rounds=1", "--stage", "b:rounds=1", "--output-dir", str(out))
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["run", "--resume", "--output-dir", str(out), "--rounds", "9"])
    _error(res, "--rounds 9 changes nothing", "every stage of this run sets its own rounds")
    assert _rounds(out) == [1, 2]


def test_resume_on_another_device_is_where_it_runs(tmp_path):
    out = tmp_path / "run"
    assert _invoke("--rounds", "1", "--output-dir", str(out)).exit_code == 0  # device auto
    res = CliRunner().invoke(
        app,
        ["run", "--resume", "--output-dir", str(out), "--rounds", "2", "--device", "cpu",
         "--engine", "off", "--nondeterministic"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _rounds(out) == [1, 2]


def test_a_strategy_the_model_refuses_fails_before_training(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[[strategies]]\nname = "top"\nkind = "head_only"\nhead = "nonexistent"\n')
    out = tmp_path / "run"
    res = _invoke("--rounds", "2", "--config", str(config), "--output-dir", str(out))
    _error(
        res,
        "strategy 'top' fails on a one-example client, before training:",
        "head 'nonexistent' names no layer",
        "conv1",
    )
    assert not (out / rd.FEDAVG_METRICS).exists()  # no round was trained


def test_diverged_fine_tuning_is_said(tmp_path):
    with pytest.warns(RuntimeWarning) as said:
        res = _invoke("--rounds", "1", "--strategy", "sgd:1e9", "--output-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    messages = [str(w.message) for w in said]
    assert any(
        m.startswith("strategy 'sgd': the test loss is not finite for 2 of 2 clients")
        for m in messages
    ), messages


def test_a_global_model_whose_test_loss_is_not_finite_stops_the_run():
    class State:
        round_num = 3
        model = {"w": torch.ones(2)}

    guard = LearningGuard()
    guard.on_round_end(None, State(), {"num_clients": 2, "num_skipped_clients": 0})
    guard.on_round_end(
        None, State(), {"num_clients": 2, "num_skipped_clients": 0, "eval_loss": 2.5}
    )
    with pytest.raises(TrainingError, match="round 3: the global model's test loss is nan"):
        guard.on_round_end(
            None, State(), {"num_clients": 2, "num_skipped_clients": 0, "eval_loss": float("nan")}
        )


def test_files_a_killed_writer_left_are_removed(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(gone.stdout)
    import os

    stale = tmp_path / f".round_000002.pt.tmp-{dead_pid}"
    live = tmp_path / f".config.toml.tmp-{os.getpid()}"  # this process is writing it
    other = tmp_path / "round_000002.pt"
    for p in (stale, live, other):
        p.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
