"""Bad input to ``report``, ``compare``, ``sweep``, ``data`` and the Python API found by an
audit: each is one ``error:`` line and exit code 2 (the CLI) or one exception naming the
fix at the public function, never a traceback, a silently ignored setting or files
written into the current folder."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from test_cli_inputs import _error
from test_reporting import make_run_dir
from typer.testing import CliRunner

import fedp13n
from fedp13n.cli.main import app
from fedp13n.data.validate import DataError
from fedp13n.experiments.config import ConfigError
from fedp13n.experiments.sweep import SweepConfig
from fedp13n.personalization.p13n_utils import evaluate_fn
from fedp13n.reporting.summary import ReportError
from fedp13n.rundir import layout as rd
from fedp13n.rundir.readers import read_fedavg_metrics, read_per_client


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run_dir(tmp_path / "run", num_clients=3, epochs=1, rounds=2)


def _cut(path: Path, keep_lines: int, keep_chars: int) -> None:
    """``path`` as a killed writer or a partial copy leaves it: ``keep_lines`` whole lines,
    then ``keep_chars`` characters of the next."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep_lines]) + lines[keep_lines][:keep_chars])


@pytest.mark.parametrize(
    "file, read, line, got, expected",
    [
        (rd.PER_CLIENT, read_per_client, 3, 3, 9),  # "f0001_01,123,17" of 9 values
        (rd.FEDAVG_METRICS, read_fedavg_metrics, 2, 2, 11),  # "1,3.5..." of 11 columns
    ],
)
def test_a_csv_cut_mid_row_names_the_line(run_dir, file, read, line, got, expected):
    path = run_dir / file
    first = path.read_text().splitlines()[line - 1]
    _cut(path, line - 1, len(",".join(first.split(",")[:got])))
    with pytest.raises(ReportError) as e:
        read(path)
    assert str(e.value) == (
        f"{path}, line {line}: {got} values where the header has {expected}: the file is cut "
        "short or damaged; restore it, or rerun the run into a new --output-dir."
    )
    res = CliRunner().invoke(app, ["report", str(run_dir), "--no-summary"])
    _error(res, f"{file}, line {line}: {got} values where the header has {expected}")


def test_a_csv_row_with_a_value_too_many_is_refused(run_dir):
    path = run_dir / rd.PER_CLIENT
    lines = path.read_text().splitlines()
    lines[1] += ",7"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match="line 2: 10 values where the header has 9"):
        read_per_client(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["report", ""], "the run directory is empty; give the folder 'fedp13n run' wrote."),
        (["report", "RUN", "-o", ""], "--output is empty; give a folder (e.g. -o report)"),
        (["compare", "RUN", "RUN2", "-o", " "], "--output is empty; give a folder"),
        (["compare", "", "RUN"], "a run directory is empty; give each run's folder."),
        (["sweep", "table1_sample", "--output-dir", ""], "--output-dir is empty; give the sweep"),
        (["data", "info", "--dataset", "synthetic", "--cache-dir", ""], "--cache-dir is empty"),
        (["data", "info", "--data-dir", ""], "--data-dir is empty; give the folder holding"),
        (["data", "download", "--url", ""], "--url is empty; give the archive's URL"),
        (
            ["data", "info", "--dataset", "synthetic", "--data-dir", "DIR"],
            "--data-dir reads files, but 'synthetic' is generated; drop --data-dir.",
        ),
    ],
)
def test_empty_paths_and_ignored_folders_are_refused(args, message, run_dir, tmp_path, monkeypatch):
    """``Path("")`` is ``"."``: these would write into (or read) the current folder."""
    other = make_run_dir(tmp_path / "run2", num_clients=3, epochs=1, rounds=2, seed=1)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    names = {"RUN": str(run_dir), "RUN2": str(other), "DIR": str(tmp_path)}
    res = CliRunner().invoke(app, [names.get(a, a) for a in args])
    _error(res, message)
    assert list(here.iterdir()) == []  # nothing written where the command ran


@pytest.mark.parametrize(
    "sweep, message",
    [
        (
            {"rows": "rounds", "columns": "rounds"},
            "[sweep] rows and columns are both 'rounds'; give two different grid keys",
        ),
        ({"target_accuracy": True}, "target_accuracy must be in (0, 1], got True."),
    ],
)
def test_sweep_table_settings_that_make_no_table(sweep, message):
    with pytest.raises(ConfigError) as e:
        SweepConfig.from_dict({"sweep": {"grid": {"rounds": [1, 2]}, **sweep}})
    assert message in str(e.value)


def _model():
    return fedp13n.emnist_conv_dropout(num_classes=62)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: fedp13n.split_clients("abc", num_train=1, num_personalization=1),
            TypeError,
            "client_ids must be a list of client ids, got the string 'abc'; use ['abc'].",
        ),
        (
            lambda ds: evaluate_fn(None, ds),
            TypeError,
            "model must be a torch.nn.Module (the model to evaluate), got NoneType; "
            "pass model_fn(), not model_fn.",
        ),
        (
            lambda ds: evaluate_fn(functools.partial(_model), ds),
            TypeError,
            "got partial; pass model_fn(), not model_fn.",
        ),
        (
            lambda ds: evaluate_fn(_model(), ds, loss_fn="cross_entropy"),
            TypeError,
            "loss_fn must be callable ((outputs, targets) -> loss), got str.",
        ),
        (
            lambda: fedp13n.build_evaluate_fn(batch_size=0),
            ValueError,
            "batch_size must be a positive integer, got 0.",
        ),
        (
            lambda: fedp13n.load_dataset("emnist", data_dir=3),
            DataError,
            "data_dir must be a folder (a str or Path), got int.",
        ),
        (
            lambda: fedp13n.load_dataset("synthetic", cache_dir=" "),
            DataError,
            "cache_dir is empty; give a folder, or None for the default.",
        ),
    ],
)
def test_public_functions_name_a_wrong_argument(call, error, message):
    train, _ = fedp13n.load_dataset("synthetic", num_clients=2, seed=0)
    args = [train.create_dataset(train.client_ids[0])] if call.__code__.co_argcount else []
    with pytest.raises(error) as e:
        call(*args)
    assert message in str(e.value)


def test_a_library_report_into_an_empty_folder_name_is_refused(tmp_path, monkeypatch):
    train, test = fedp13n.load_dataset("synthetic", num_clients=2, seed=0, progress=False)
    sgd = functools.partial(
        fedp13n.build_personalize_fn,
        optimizer_fn=functools.partial(torch.optim.SGD, lr=0.02),
        batch_size=20,
        num_epochs=1,
        num_epochs_per_eval=1,
    )
    p13n_eval = fedp13n.build_personalization_eval(_model, {"sgd": sgd}, evaluate_fn, seed=0)
    c = train.client_ids[0]
    result = p13n_eval(
        _model().state_dict(),
        [
            {
                "client_id": c,
                "train_data": train.create_dataset(c),
                "test_data": test.create_dataset(c),
            }
        ],
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:  # Path("") is ".": the report would land here
        fedp13n.write_personalization_report(result, "", train_sizes=train)
    assert (
        str(e.value)
        == "output_dir must be a folder for the report (a non-empty str or Path), got ''."
    )
    assert list(tmp_path.iterdir()) == []


def test_a_report_into_another_runs_folder_is_refused(run_dir, tmp_path):
    """It would replace that run's summary.json and report.html with this run's numbers."""
    other = make_run_dir(tmp_path / "other", num_clients=3, epochs=1, rounds=2, seed=1)
    kept = {p.name: p.read_bytes() for p in other.iterdir()}
    res = CliRunner().invoke(app, ["report", str(run_dir), "-o", str(other), "--no-summary"])
    _error(
        res,
        f"output {other} holds another run (it has per_client.csv): the report of {run_dir} "
        "would replace its summary.json and report.html; choose another --output",
    )
    assert {p.name: p.read_bytes() for p in other.iterdir()} == kept
