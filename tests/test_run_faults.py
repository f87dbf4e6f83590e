"""Nothing lost, nothing silently wrong at the run level: the lock, --resume, runs that
cannot learn, bad library calls (issue 11)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import build_weighted_fed_avg
from fedp13n.cli.main import app
from fedp13n.data import ClientDataset
from fedp13n.rundir import layout as rd
from fedp13n.rundir.lock import run_dir_lock

TINY = [
    "run", "--dataset", "synthetic", "--synthetic-clients", "10", "--num-train-clients", "6",
    "--num-p13n-clients", "4", "--rounds", "3", "--clients-per-round", "2",
    "--local-epochs", "1", "--num-eval-clients", "2", "--p13n-epochs", "1",
    "--strategy", "sgd:0.02", "--executor", "in-process", "--no-report", "--no-progress",
]  # fmt: skip


def _invoke(*args):
    return CliRunner().invoke(app, [*TINY, *args])


def _one_line_error(res, *fragments):
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1, res.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in res.output


def _rounds(run_dir):
    with open(run_dir / rd.FEDAVG_METRICS, newline="") as f:
        return [int(r["round"]) for r in csv.DictReader(f)]


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with run_dir_lock(out):
        res = _invoke("--output-dir", str(out))
    _one_line_error(res, "in use by another fedp13n run", f"pid {os.getpid()}")
    assert not (out / rd.FEDAVG_METRICS).exists()  # nothing written by the refused run


def test_resume_keeps_the_saved_config_and_extends_rounds_on_purpose(tmp_path):
    out = tmp_path / "run"
    assert _invoke("--output-dir", str(out)).exit_code == 0
    _one_line_error(
        CliRunner().invoke(app, ["run", "--output-dir", str(tmp_path / "nowhere"), "--resume"]),
        "nothing to resume",
    )
    res = CliRunner().invoke(
        app, ["run", "--output-dir", str(out), "--resume", "--local-epochs", "2"]
    )
    _one_line_error(res, "settings differ from it: ['local_epochs']")
    res = CliRunner().invoke(app, ["run", "--output-dir", str(out), "--resume", "--rounds", "2"])
    _one_line_error(res, "round 3, beyond the 2 rounds")
    assert "rounds = 3" in (out / rd.CONFIG).read_text()  # the refused resume changed nothing
    res = CliRunner().invoke(app, ["run", "--output-dir", str(out), "--resume", "--rounds", "4",
                                   "--no-report", "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "resuming with rounds = 4 (was 3)" in res.output and "(round 3)" in res.output
    assert _rounds(out) == [1, 2, 3, 4]
    straight = tmp_path / "straight"
    assert _invoke("--output-dir", str(straight), "--rounds", "4").exit_code == 0
    a = torch.load(out / rd.GLOBAL_WEIGHTS, weights_only=True)
    b = torch.load(straight / rd.GLOBAL_WEIGHTS, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_kill_with_the_default_checkpointing_loses_no_finished_round(tmp_path):
    out = tmp_path / "run"
    args = [a for a in TINY[1:] if a != "--no-progress"] + ["--rounds", "6", "--no-progress"]
    cmd = [sys.executable, "-m", "fedp13n.cli.main", "run", *args, "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not rd.checkpoint_path(out, 2).exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = max(_rounds(out))
    assert done >= 2
    res = CliRunner().invoke(app, ["run", "--output-dir", str(out), "--resume", "--no-report",
                                   "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"(round {done})" in res.output  # every finished round was checkpointed
    assert _rounds(out) == [1, 2, 3, 4, 5, 6]
    # only the newest checkpoints are kept
    assert len(list((out / rd.CHECKPOINTS).iterdir())) == 2


def test_a_run_that_cannot_learn_says_so(tmp_path):
    res = _invoke("--client-lr", "1e30", "--output-dir", str(tmp_path / "r"))
    _one_line_error(res, "round 1", "not finite", "lower the client learning rate")
    res = _invoke("--clients-per-round", "7", "--output-dir", str(tmp_path / "r2"))
    _one_line_error(res, "clients_per_round is 7 but there are only 6 FedAvg clients")


def test_output_dir_under_a_regular_file_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(_invoke("--output-dir", str(blocker / "run")), "--output-dir")


def test_library_api_refuses_wrong_calls_in_its_own_words():
    process = build_weighted_fed_avg(lambda: nn.Linear(2, 3))
    with pytest.raises(TypeError, match="state must be the ServerState"):
        process.next({"round_num": 0}, [ClientDataset.from_arrays([[0.0, 1.0]], [1])])
    with pytest.raises(TypeError, match=r"model_fn\(\) must return a torch nn.Module, got int"):
        build_weighted_fed_avg(lambda: 3).initialize()
