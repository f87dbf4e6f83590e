"""``fedp13n sweep``: a grid of runs, resumable after kill -9 without redoing finished
runs, identical to an uninterrupted sweep (sequential or in parallel), ending in Table 1."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from fedp13n.cli.main import app
from fedp13n.experiments.config import ConfigError
from fedp13n.experiments.sweep import RUNS, SweepConfig, first_round_reaching
from fedp13n.rundir import layout as rd

SWEEP = """
dataset = "synthetic"
synthetic_clients = 20
num_train_clients = 12
num_p13n_clients = 8
rounds = 2
local_epochs = 1
eval_every = 1
p13n_eval_every = 1
num_eval_clients = 4
p13n_epochs = 1
executor = "in-process"

[[strategies]]
name = "sgd"
optimizer = "sgd"
learning_rate = 0.02

[sweep]
grid = { clients_per_round = [2, 4], local_epochs = [1, 2] }
rows = "clients_per_round"
columns = "local_epochs"
target_accuracy = 0.05
"""
NAMES = [
    "clients_per_round=2,local_epochs=1",
    "clients_per_round=2,local_epochs=2",
    "clients_per_round=4,local_epochs=1",
    "clients_per_round=4,local_epochs=2",
]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _weights(sweep_dir, name):
    return torch.load(sweep_dir / RUNS / name / rd.GLOBAL_WEIGHTS, weights_only=True)


@pytest.mark.slow
def test_sweep_killed_in_its_second_run_resumes_to_the_same_results(tmp_path):
    toml = tmp_path / "sweep.toml"
    toml.write_text(SWEEP)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fedp13n.cli.main", "sweep", str(toml), "--output-dir",
           str(killed)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = killed / RUNS / NAMES[1]
    try:
        deadline = time.monotonic() + 180
        while not rd.checkpoint_path(second, 1).exists():
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "the second run did not start in 180 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert (killed / RUNS / NAMES[0] / rd.SUMMARY).exists()
    assert not (second / rd.SUMMARY).exists(), "killed too late"
    first_mtime = (killed / RUNS / NAMES[0] / rd.GLOBAL_WEIGHTS).stat().st_mtime_ns

    res = CliRunner().invoke(app, ["sweep", str(toml), "--output-dir", str(killed), "--resume"])
    assert res.exit_code == 0, res.output
    assert f"{NAMES[0]}: done before" in res.output and f"{NAMES[1]}: resumed" in res.output
    assert (killed / RUNS / NAMES[0] / rd.GLOBAL_WEIGHTS).stat().st_mtime_ns == first_mtime

    straight = tmp_path / "straight"
    res = CliRunner().invoke(app, ["sweep", str(toml), "--output-dir", str(straight)])
    assert res.exit_code == 0, res.output
    parallel = tmp_path / "parallel"
    res = CliRunner().invoke(
        app, ["sweep", str(toml), "--output-dir", str(parallel), "--parallel", "2"]
    )
    assert res.exit_code == 0, res.output

    def numbers(path):  # every column but the wall time
        return [{k: v for k, v in r.items() if k != "fedavg_seconds"} for r in _csv(path)]

    rows = numbers(straight / "sweep.csv")
    assert [r["run"] for r in rows] == NAMES
    assert numbers(killed / "sweep.csv") == rows == numbers(parallel / "sweep.csv")
    for name in NAMES:
        w = _weights(straight, name)
        for other in (killed, parallel):
            assert all(torch.equal(w[k], _weights(other, name)[k]) for k in w), (other, name)
        metrics = _csv(straight / RUNS / name / rd.FEDAVG_METRICS)
        row = next(r for r in rows if r["run"] == name)
        expected = first_round_reaching(metrics, "p13n_accuracy", 0.05)
        assert row["personalized_rounds_to_target"] == ("" if expected is None else str(expected))
    table = (straight / "table.md").read_text()
    assert table.startswith("| clients_per_round \\ local_epochs | 1 | 2 |")
    assert (straight / "comparison.html").is_file()


def test_sweep_refuses_bad_grids(tmp_path):
    with pytest.raises(ConfigError, match="not a setting"):
        SweepConfig.from_dict({"sweep": {"grid": {"roundz": [1]}}})
    with pytest.raises(ConfigError, match="non-empty list"):
        SweepConfig.from_dict({"sweep": {"grid": {"rounds": 3}}})
    with pytest.raises(ConfigError, match="needs a \\[sweep\\] table"):
        SweepConfig.from_dict({"rounds": 3})
    with pytest.raises(ConfigError, match="clients_per_round must be a positive integer"):
        SweepConfig.from_dict({"sweep": {"grid": {"clients_per_round": [2, 0]}}})
    toml = tmp_path / "s.toml"
    toml.write_text(SWEEP)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sweep.toml").write_text("x = 1\n")
    res = CliRunner().invoke(app, ["sweep", str(toml), "--output-dir", str(tmp_path / "out")])
    assert res.exit_code == 2 and "--resume" in res.output


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_sweep_refuses_a_repeated_grid_value_before_any_run(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(SWEEP.replace("clients_per_round = [2, 4]", "clients_per_round = [2, 4, 2]"))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["sweep", str(toml), "--output-dir", str(out)])
    assert _one_error_line(res) == (
        f"error: {toml}: grid 'clients_per_round' repeats 2; give each value once."
    )
    assert not out.exists()  # refused before any run
    with pytest.raises(ConfigError, match="grid 'client_learning_rate' repeats 0.01; give each"):
        SweepConfig.from_dict({"sweep": {"grid": {"client_learning_rate": [0.01, 0.01]}}})
    with pytest.raises(ConfigError, match="grid 'client_learning_rate' repeats 0.1;"):
        SweepConfig.from_dict({"sweep": {"grid": {"client_learning_rate": [0.1, 0.2, 0.1]}}})
    strategy = {"name": "sgd", "optimizer": "sgd", "learning_rate": 0.02}
    with pytest.raises(ConfigError, match='repeats \\[{"name":"sgd"'):
        SweepConfig.from_dict({"sweep": {"grid": {"strategies": [[strategy], [strategy]]}}})
    # distinct values are fine (1 and 2.0 are two settings)
    sweep = SweepConfig.from_dict({"sweep": {"grid": {"client_learning_rate": [1, 2.0]}}})
    assert [name for name, _ in sweep.runs()] == [
        "client_learning_rate=1",
        "client_learning_rate=2.0",
    ]


def test_sweep_file_and_output_dir_of_the_wrong_kind(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(SWEEP)
    folder = tmp_path / "folder"
    folder.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("")
    runner = CliRunner()
    for args, message in (
        (
            [str(folder), "--output-dir", str(tmp_path / "o1")],
            f"error: sweep file {folder} is a directory; give the sweep's TOML file.",
        ),
        (
            [str(toml), "--output-dir", str(afile)],
            f"error: --output-dir {afile} is a file, not a directory; choose another --output-dir.",
        ),
        (
            [str(toml), "--output-dir", str(afile / "sub")],
            f"error: --output-dir {afile / 'sub'}: {afile} is a file, not a directory; choose "
            "another --output-dir.",
        ),
        (
            [str(toml), "--output-dir", str(afile), "--resume"],
            f"error: --output-dir {afile} is a file, not a directory; choose another --output-dir.",
        ),
    ):
        res = runner.invoke(app, ["sweep", *args])
        assert _one_error_line(res) == message
    assert not (tmp_path / "o1").exists() and afile.read_text() == ""
    # a sweep's output directory given as the sweep file: how to continue it
    (folder / "sweep.toml").write_text(SWEEP)
    res = runner.invoke(app, ["sweep", str(folder), "--output-dir", str(tmp_path / "o2")])
    assert _one_error_line(res) == (
        f"error: sweep file {folder} is a directory; give the sweep's TOML file (to continue "
        f"the sweep saved there: fedp13n sweep {folder / 'sweep.toml'} --output-dir {folder} "
        "--resume)."
    )


def test_sweep_checks_the_reported_strategy_and_epoch_before_any_run():
    base = {"p13n_epochs": 3, "strategies": [{"name": "sgd", "epochs_per_eval": 2}]}
    grid = {"grid": {"local_epochs": [1, 2]}}
    ok = SweepConfig.from_dict({**base, "sweep": {**grid, "report_epoch": "epoch_2"}})
    assert ok.report_epoch == "epoch_2"
    with pytest.raises(ConfigError, match="report_strategy 'adam' is not a strategy of run"):
        SweepConfig.from_dict({**base, "sweep": {**grid, "report_strategy": "adam"}})
    with pytest.raises(
        ConfigError,
        match="report_epoch 'epoch_1' is not evaluated: strategy 'sgd' of run local_epochs=1 "
        "reports epoch_2, epoch_3; choose one of those",
    ):
        SweepConfig.from_dict({**base, "sweep": {**grid, "report_epoch": "epoch_1"}})
    with pytest.raises(ConfigError, match="report_epoch must be an evaluation key like 'epoch_3'"):
        SweepConfig.from_dict({**base, "sweep": {**grid, "report_epoch": 3}})
