"""Bad input found by the audit of the pFL surface (client-state store, --resume of a
stateful run, --repeats, method settings): each was a traceback, a raw errno message or a
silent wrong result before; now one line naming the problem and the fix (CLI: ``error:``
and exit 2; Python: a ValueError / TypeError at the public call)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms.checkpoint import checkpoint_rounds
from fedp13n.algorithms.fedper import fedper_state_spec
from fedp13n.cli.main import app
from fedp13n.experiments.config import ConfigError, ExperimentConfig
from fedp13n.rundir import layout as rd
from fedp13n.state import ClientStateStore, state_spec

TINY = [
    "run", "--dataset", "synthetic", "--synthetic-clients", "6", "--num-train-clients", "4",
    "--num-p13n-clients", "2", "--rounds", "2", "--clients-per-round", "2",
    "--local-epochs", "1", "--num-eval-clients", "2", "--p13n-epochs", "1",
    "--num-global-eval-clients", "2", "--executor", "in-process", "--no-report",
    "--no-progress", "--strategy", "sgd", "--batch-size", "8",
]  # fmt: skip


def _error(res) -> str:
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "Traceback" not in res.output
    return lines[0]


@pytest.fixture(scope="module")
def ditto_run(tmp_path_factory) -> Path:
    """A finished 2-round Ditto run (client_state/ of 4 FedAvg clients)."""
    out = tmp_path_factory.mktemp("base") / "ditto"
    res = CliRunner().invoke(app, [*TINY, "--method", "ditto", "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _truncate(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:n])


def _other_ids(d: Path) -> None:
    index = d / rd.CLIENT_STATE / "index.json"
    data = json.loads(index.read_text())
    data["client_ids"] = [f"other_{i}" for i in range(len(data["client_ids"]))]
    index.write_text(json.dumps(data))


def _checkpoints_file(d: Path) -> None:
    shutil.rmtree(d / rd.CHECKPOINTS)
    (d / rd.CHECKPOINTS).write_text("x")


@pytest.mark.parametrize(
    "damage, message",
    [  # each was a traceback or a raw errno line (or, for the csv, rows silently lost)
        (lambda d: _truncate(d / rd.CLIENT_STATE / "0.bin", 3),
         "client_state/0.bin (client state 'conv1.weight') has 3 bytes, not the 4608 bytes of "
         "its 4 rows: the store is damaged and cannot be read; start afresh."),
        (lambda d: (d / rd.CLIENT_STATE / "0.bin").unlink(),
         "client_state/0.bin (client state 'conv1.weight') is missing, not the 4608 bytes"),
        (lambda d: _truncate(d / rd.CLIENT_STATE / "index.json", 20),
         "client_state/index.json is not a client-state index ("),
        (_other_ids, "holds 4 clients that are not this run's 4 FedAvg clients (e.g. ['other_0',"),
        (lambda d: (d / rd.CLIENT_STATE / "generations" / "round_000003.npz").write_bytes(b"x"),
         "round_000003.npz is not a readable client-state generation"),
        (_checkpoints_file, "checkpoints is a file, not the run's checkpoints/ folder"),
        (lambda d: (d / rd.FEDAVG_METRICS).write_text("\x00garbage\n"),
         "fedavg_metrics.csv is not the table of rounds fedp13n writes (not text, or no "
         "'round' column); restore it, or move it away to go on without its rows."),
    ],
)  # fmt: skip
def test_a_damaged_stateful_run_refuses_resume_in_one_line(damage, message, ditto_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ditto_run, run)
    damage(run)
    res = CliRunner().invoke(app, ["run", "--resume", "--output-dir", str(run), "--rounds", "3"])
    assert message in _error(res)
    if (run / rd.CHECKPOINTS).is_dir():
        assert checkpoint_rounds(run) == checkpoint_rounds(ditto_run)  # nothing trained


def _model():
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))


def test_a_client_state_of_other_tensors_is_refused_on_resume(tmp_path):
    from fedp13n.experiments.p13n_experiment import _resumed_client_state

    ids = ["a", "b"]
    ClientStateStore.create(tmp_path / "s", ids, fedper_state_spec(_model, None, "fedper"))
    with pytest.raises(ConfigError) as e:
        _resumed_client_state(tmp_path / "s", 0, ids, fedper_state_spec(_model, None, "ditto"))
    assert str(e.value) == (
        f"the client state in {tmp_path / 's'} keeps ['2.bias', '2.weight'], not what this "
        "run's method keeps (['0.bias', '0.weight', '2.bias', '2.weight']): it belongs to "
        "another run; --resume cannot go on without it: start a new run."
    )
    # the store of the run's own tensors and clients resumes
    store = _resumed_client_state(tmp_path / "s", 0, ids, fedper_state_spec(_model, None))
    assert store.client_ids == ids and store.round_num == 0


def test_resume_of_a_run_without_checkpoints_says_it_starts_again(ditto_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ditto_run, run, ignore=shutil.ignore_patterns(rd.CLIENT_STATE))
    shutil.rmtree(run / rd.CHECKPOINTS)
    res = CliRunner().invoke(app, ["run", "--resume", "--output-dir", str(run), "--no-report"])
    assert res.exit_code == 0, res.output
    assert f"no checkpoint in {run / rd.CHECKPOINTS}: training starts again from round 1" in (
        res.output
    )


@pytest.mark.parametrize(
    "index_change, message",
    [
        ({"client_ids": 3}, "(TypeError: client_ids must be a list of client ids, got 3.)"),
        ({"spec": {"w": 1}}, "(TypeError: 'int' object is not iterable)"),
        ({"round": "x"}, "(ValueError: round must be an integer >= 0, got 'x')"),
        ({"initialised": [7]}, "(ValueError: initialised must list rows in 0..1)"),
    ],
)
def test_a_damaged_store_index_is_a_value_error(index_change, message, tmp_path):
    store = ClientStateStore.create(tmp_path, ["a", "b"], {"w": ((2,), "float32")})
    index = tmp_path / "index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), **index_change}))
    with pytest.raises(ValueError) as e:
        ClientStateStore.open(store.directory)
    assert str(e.value) == (
        f"{index} is a damaged client-state index {message}; the store cannot be read: start "
        "afresh (a new run, or ClientStateStore.create)."
    )


def test_store_on_a_file_and_prune_of_a_non_round_are_one_line(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    spec = {"w": ((1,), "float32")}
    for call in (lambda: ClientStateStore.open(path),
                 lambda: ClientStateStore.create(path, ["a"], spec)):  # fmt: skip
        with pytest.raises(NotADirectoryError, match=f"^{path} is a file; a client-state store"):
            call()
    store = ClientStateStore.create(tmp_path / "s", ["a"], {"w": ((1,), "float32")})
    with pytest.raises(TypeError, match="round_num must be an integer, got '1'"):
        store.prune("1")
    with pytest.raises(TypeError, match="state_spec takes a mapping name -> tensor"):
        state_spec(torch.ones(2))


def test_fedper_on_a_model_that_is_only_a_head_is_refused():
    # its head is the whole model: nothing would be averaged (a silent local-only run)
    for method in ("fedper", "fedrep"):
        with pytest.raises(ValueError) as e:
            fedper_state_spec(lambda: nn.Linear(3, 2), None, method)
        assert str(e.value) == (
            f"method={method!r} keeps the head personal and averages the rest, but Linear is "
            "only a head (its last layer is all it trains), so nothing would be averaged; use "
            "a model with a body, or name personal_layers ('' keeps the whole model personal: "
            "local training only)."
        )
    # named, the whole model is personal on purpose; a model with a body keeps its head
    assert fedper_state_spec(lambda: nn.Linear(3, 2), "", "fedper") == {
        "weight": ((2, 3), "float32"),
        "bias": ((2,), "float32"),
    }
    assert list(fedper_state_spec(_model, None, "fedper")) == ["2.weight", "2.bias"]


@pytest.mark.parametrize(
    "method, message",
    [
        ("fedavg", "method='fedavg' keeps no client state, so it needs no client-state store"),
        ("per_fedavg", "method='per_fedavg' keeps no client state"),
        ("fedx", "method must be one of ['fedavg', 'fedper',"),
    ],
)
def test_a_state_spec_of_a_method_without_state_is_refused(method, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        fedper_state_spec(_model, None, method)


@pytest.mark.parametrize("strategy", [{"name": "sgd"}, "sgd"])
def test_strategies_that_are_not_strategy_configs_are_a_config_error(strategy):
    with pytest.raises(ConfigError) as e:
        ExperimentConfig(dataset="synthetic", strategies=[strategy]).validate()
    assert str(e.value).startswith(
        f"strategies[0] is a {type(strategy).__name__} ({strategy!r}), not a StrategyConfig: "
        "give StrategyConfig(name='sgd', optimizer='sgd', learning_rate=0.02), or tables "
        "through ExperimentConfig.from_dict("
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", str(10**23)],
         "error: seed must be an integer in -9223372036854775808..9223372036854775807 (what a "
         f"TOML config holds), got {10**23}."),
        (["--repeats", "2", "--seed", str(2**63 - 1), "--output-dir", "x"],
         "error: --repeats 2 from seed 9223372036854775807 would reach seed "
         "9223372036854775808, past the largest seed a config holds (9223372036854775807); "
         "start from a smaller --seed."),
        (["--strategy", "=adam"],
         "error: --strategy '=adam': the name before '=' is empty; give one (e.g. "
         "'fast=adam') or leave out the '='."),
        (["--dataset", "fedp13n.examples.my_task:NUM_CLIENTS"],
         "error: dataset 'fedp13n.examples.my_task:NUM_CLIENTS' is an int, not a function; "
         "name a function of the module."),
    ],
)  # fmt: skip
def test_seeds_strategies_and_non_functions_are_refused_before_anything_runs(args, message):
    res = CliRunner().invoke(app, ["run", "--dataset", "synthetic", *args, "--print-config"])
    assert _error(res) == message


def test_fewer_repeats_on_resume_are_refused(tmp_path):
    out = tmp_path / "rep"
    args = [*TINY, "--rounds", "0", "--output-dir", str(out)]
    assert CliRunner().invoke(app, [*args, "--repeats", "2"]).exit_code == 0
    before = (out / "repeats.md").read_text()
    res = CliRunner().invoke(app, [*args, "--repeats", "1", "--resume"])
    assert _error(res) == (
        f"error: --repeats 1 is fewer than the 2 seeds of the repeats in {out}; the table "
        "would leave the others out: resume with --repeats 2 (or more, to add seeds)."
    )
    assert (out / "repeats.md").read_text() == before  # the 2-seed table is kept
    res = CliRunner().invoke(app, [*args, "--repeats", "2", "--resume"])
    assert res.exit_code == 0, res.output


def test_an_exception_message_ending_in_a_period_is_not_doubled():
    from fedp13n.data.client_data import ClientData
    from fedp13n.models.objectives import TaskLoss
    from fedp13n.tasks.build import check_model_fits

    class Refuses(nn.Linear):
        def forward(self, x):
            raise ValueError("expects images.")

    import numpy as np

    data = ClientData.from_mapping({"a": (np.zeros((2, 2), np.float32), np.array([0, 1]))})
    with pytest.raises(ValueError) as e:
        check_model_fits(lambda: Refuses(2, 2), TaskLoss(), data, data, "m:b")
    assert str(e.value).endswith("ValueError: expects images.")
