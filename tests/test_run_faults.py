"""Nothing lost, nothing silently wrong at the run level: the lock, --resume, runs that
cannot learn, bad library calls (issue 11)."""

from __future__ import annotations

import csv
import os
import shutil
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


# -- issue 17: nothing lost, nothing stale, no tracebacks ------------------------------------------
@pytest.fixture(scope="module")
def _finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    res = _invoke("--output-dir", str(out))
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def finished(_finished_run, tmp_path):
    """A copy of a finished 3-round run (one run for the whole module)."""
    out = tmp_path / "run"
    shutil.copytree(_finished_run, out)
    return out


def _interrupted_line(res):
    """The one line of a run stopped by Ctrl-C (exit code 130, no traceback)."""
    lines = [line for line in res.output.splitlines() if line.startswith("interrupted")]
    assert res.exit_code == 130 and len(lines) == 1, res.output
    assert "Traceback" not in res.output and "Aborted" not in res.output
    return lines[0]


def _resume(out, *args):
    return CliRunner().invoke(
        app, ["run", "--output-dir", str(out), "--resume", "--no-report", "--no-progress", *args]
    )


def test_a_checkpoint_whose_weights_changed_is_not_resumed_from(finished):
    path = rd.checkpoint_path(finished, 3)
    payload = torch.load(path, weights_only=True)
    weight = next(v for v in payload["model"].values() if v.numel() >= 16)
    data = bytearray(path.read_bytes())
    at = data.find(weight.numpy().tobytes())
    assert at >= 0 and data.find(weight.numpy().tobytes(), at + 1) < 0
    data[at + 5] ^= 0x10  # one flipped bit in one weight
    path.write_bytes(bytes(data))
    res = _resume(finished, "--rounds", "4")
    _one_line_error(res, f"{path} fails its integrity check", "delete it to resume from")
    assert _rounds(finished) == [1, 2, 3]  # nothing ran from it


def test_a_hand_edited_config_is_refused_on_resume(finished):
    config = finished / rd.CONFIG
    text = config.read_text()
    assert "local_epochs = 1\n" in text
    config.write_text(text.replace("local_epochs = 1\n", "local_epochs = 2\n"))
    res = _resume(finished, "--rounds", "4")
    _one_line_error(
        res,
        f"{config} was edited after the run wrote it",
        f"start a new run with the edited settings: fedp13n run --config {config} --output-dir",
    )
    assert _rounds(finished) == [1, 2, 3]
    config.write_text(text)  # undone: resumes
    assert _resume(finished, "--rounds", "4").exit_code == 0
    assert _rounds(finished) == [1, 2, 3, 4]


def test_an_extended_run_interrupted_leaves_no_stale_summary(finished, monkeypatch):
    from fedp13n.experiments import p13n_experiment, sweep

    old_summary = (finished / rd.SUMMARY).read_text()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(p13n_experiment.Run, "evaluate_personalization", ctrl_c)
    res = _resume(finished, "--rounds", "4")
    assert _interrupted_line(res) == (
        f"interrupted after round 4 of 4; continue with: fedp13n run --output-dir {finished} "
        "--resume"
    )
    # the 3-round results are set aside, not shown beside the 4-round config and curve
    for name in (rd.SUMMARY, rd.PER_CLIENT, rd.PERSONALIZATION):
        assert not (finished / name).exists(), name
    previous = finished / rd.PREVIOUS / "rounds_3"
    assert (previous / rd.SUMMARY).read_text() == old_summary  # nothing lost
    assert (previous / rd.GLOBAL_WEIGHTS).is_file()  # (the new one is round 4's)
    res = CliRunner().invoke(app, ["report", str(finished)])
    _one_line_error(res, "is not a finished run directory", "--resume")
    # a sweep's "done" check does not take the run for finished
    monkeypatch.setattr(p13n_experiment, "run_experiment", lambda *a, **k: None)
    assert sweep._run_one(("r", None, str(finished), False)) == "resumed"
    monkeypatch.undo()
    res = _resume(finished)
    assert res.exit_code == 0, res.output
    assert _rounds(finished) == [1, 2, 3, 4] and (finished / rd.SUMMARY).is_file()


def test_ctrl_c_in_training_says_how_to_resume_and_loses_no_finished_round(tmp_path, monkeypatch):
    from fedp13n.algorithms import loop

    class CtrlCAtRound3(loop.LearningGuard):
        def on_round_end(self, process, state, row):
            if state.round_num == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(loop, "LearningGuard", CtrlCAtRound3)
    out = tmp_path / "run"
    res = _invoke("--output-dir", str(out), "--rounds", "4", "--checkpoint-every", "0")
    assert _interrupted_line(res) == (
        f"interrupted after round 3 of 4; continue with: fedp13n run --output-dir {out} --resume"
    )
    assert rd.checkpoint_path(out, 3).is_file()  # saved on Ctrl-C (no checkpoint was due)
    monkeypatch.undo()
    res = _resume(out)
    assert res.exit_code == 0, res.output
    assert "(round 3)" in res.output and _rounds(out) == [1, 2, 3, 4]


def test_ctrl_c_in_a_sweep_says_how_to_resume(tmp_path, monkeypatch):
    from fedp13n.experiments import sweep

    def ctrl_c(config, out, **kwargs):
        (out / "sweep.toml").parent.mkdir(parents=True)
        (out / "sweep.toml").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep.SweepConfig, "from_toml", classmethod(lambda cls, path: None))
    monkeypatch.setattr(sweep, "run_sweep", ctrl_c)
    out = tmp_path / "sw"
    res = CliRunner().invoke(app, ["sweep", "s.toml", "--output-dir", str(out)])
    assert _interrupted_line(res) == (
        f"interrupted; finished runs are kept; continue with: fedp13n sweep s.toml "
        f"--output-dir {out} --resume"
    )


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    from fedp13n.algorithms import checkpoint

    def full(obj, f, *args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing "
            "file data/0: file write failed"
        )

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint.torch, "save", full)
    res = _invoke("--output-dir", str(out))
    _one_line_error(
        res,
        f"no space left on device while writing {rd.checkpoint_path(out, 1)}; free space and "
        "rerun with --resume",
    )
    monkeypatch.undo()
    assert _rounds(out) == [1]
    assert not list((out / rd.CHECKPOINTS).iterdir())  # no partial file
    assert _resume(out).exit_code == 0


def test_a_full_disk_after_training_keeps_every_round(tmp_path, monkeypatch):
    import errno

    from fedp13n.experiments import p13n_experiment

    real = p13n_experiment.atomic_write

    def full(path, data):
        if path.name == rd.PERSONALIZATION:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    out = tmp_path / "run"
    monkeypatch.setattr(p13n_experiment, "atomic_write", full)
    res = _invoke("--output-dir", str(out))
    _one_line_error(
        res,
        f"no space left on device while writing {out / rd.PERSONALIZATION}; free space and "
        "rerun with --resume",
    )
    monkeypatch.undo()
    res = _resume(out)
    assert res.exit_code == 0, res.output
    assert "(round 3)" in res.output and _rounds(out) == [1, 2, 3]


@pytest.mark.parametrize(
    "args",
    [
        ["--clients-per-round", "7"],
        ["--stage", "a:rounds=1", "--stage", "b:rounds=1,clients-per-round=7"],
    ],
)
def test_a_refused_run_does_not_block_its_corrected_rerun(tmp_path, args):
    out = tmp_path / "run"
    _one_line_error(_invoke("--output-dir", str(out), *args), "clients_per_round is 7")
    fixed = [a.replace("7", "2") for a in args]
    res = _invoke("--output-dir", str(out), *fixed)  # the same command, corrected
    assert res.exit_code == 0, res.output
    assert (out / rd.SUMMARY).is_file()


def test_a_run_that_failed_before_its_data_loaded_can_be_rerun_or_resumed(tmp_path):
    out = tmp_path / "run"
    nowhere = str(tmp_path / "nowhere")
    res = _invoke("--dataset", "emnist", "--data-dir", nowhere, "--output-dir", str(out))
    _one_line_error(res, "fed_emnist_train.h5")
    res = _resume(out, "--dataset", "synthetic")  # nothing finished: settings may change
    assert res.exit_code == 0, res.output
    assert "no round of the run" in res.output and _rounds(out) == [1, 2, 3]
    # a run with finished rounds is never started over
    _one_line_error(_invoke("--output-dir", str(out)), "already holds a run", "--resume")
    assert _rounds(out) == [1, 2, 3]


def test_bad_files_in_a_run_directory_are_one_line_errors(finished):
    (finished / rd.TUNING).write_text('{"strategies": {"sgd": 3}}')
    res = CliRunner().invoke(app, ["report", str(finished)])
    _one_line_error(res, f"{finished / rd.TUNING} is not a tuning record fedp13n wrote",
                    "strategy 'sgd' has no 'chosen' settings")  # fmt: skip
    (finished / rd.TUNING).write_text("[1, 2]")
    _one_line_error(CliRunner().invoke(app, ["report", str(finished)]), "not a tuning record")
    (finished / rd.TUNING).unlink()
    for name in (rd.PER_CLIENT, rd.CONFIG, rd.FEDAVG_METRICS):
        saved = (finished / name).read_bytes()
        (finished / name).write_bytes(b"\xff\xfe\x00binary\x81")
        res = CliRunner().invoke(app, ["report", str(finished)])
        _one_line_error(res, f"{finished / name} is not a text file fedp13n wrote")
        (finished / name).write_bytes(saved)
    (finished / rd.FEDAVG_METRICS).write_bytes(b"\xff\xfe\x00binary\x81")
    _one_line_error(
        _resume(finished, "--rounds", "4"),
        f"{finished / rd.FEDAVG_METRICS} is not the table of rounds fedp13n writes",
    )
    (finished / rd.CONFIG).write_bytes(b"\xff\xfe\x00binary\x81")
    _one_line_error(_resume(finished), f"config file {finished / rd.CONFIG} is not text")
