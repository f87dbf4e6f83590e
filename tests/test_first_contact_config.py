"""Issue 17, first contact: strategy defaults that were silently wrong (a strategy's learning
rate is its optimizer's / kind's, declared once), tuning that could rename a strategy,
user strategies that fail, empty folder settings, normalised folders, and sweep inputs
that wrote outside ``--output-dir`` or started too many processes."""

from __future__ import annotations

import functools
import json
import os
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedp13n.cli.main import app
from fedp13n.experiments import sweep as sweep_module
from fedp13n.experiments.config import ConfigError, ExperimentConfig, StrategyConfig
from fedp13n.experiments.p13n_experiment import _describe
from fedp13n.experiments.sweep import RUNS, SweepConfig, run_dir_of, run_folder_name, run_sweep
from fedp13n.personalization import build_personalization_eval, build_personalize_fn
from fedp13n.personalization.registry import (
    DEFAULT_LEARNING_RATES,
    build_strategy,
    default_learning_rate,
)
from fedp13n.personalization.strategies import RECOMMENDED_ADAM_LR
from fedp13n.rundir import layout as rd

TINY = [
    "run", "--dataset", "synthetic", "--synthetic-clients", "6", "--num-train-clients", "4",
    "--num-p13n-clients", "2", "--rounds", "1", "--clients-per-round", "2",
    "--local-epochs", "1", "--num-eval-clients", "2", "--p13n-epochs", "1",
    "--num-global-eval-clients", "2", "--executor", "in-process", "--no-report",
    "--no-progress",
]  # fmt: skip
BASE_TOML = 'dataset = "synthetic"\nsynthetic_clients = 6\nnum_train_clients = 4\n'


def _error(res, *fragments: str) -> str:
    """The one line of a refused command (exit code 2, nothing else printed)."""
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _strategy_toml(tmp_path: Path, body: str, extra: str = "") -> Path:
    path = tmp_path / "c.toml"
    path.write_text(BASE_TOML + extra + '[[strategies]]\nname = "s"\n' + body)
    return path


def _rate_that_runs(config: ExperimentConfig, s: StrategyConfig) -> tuple[type, float]:
    """The optimizer class and rate the strategy's built personalize_fn trains with."""
    optimizer_fn = config.strategy_builder(s).build_optimizer_fn()
    return optimizer_fn.func, optimizer_fn.keywords["lr"]


# -- 1. learning-rate defaults belong to the optimizer / kind --------------------------------------
@pytest.mark.parametrize(
    "body, optimizer, rate",
    [
        ("", "sgd", 0.02),  # sgd, no rate
        ('optimizer = "sgd"\n', "sgd", 0.02),
        ('optimizer = "adam"\n', "adam", 0.002),  # TFF's Adam rate, not sgd's 0.02
        ('kind = "adam_recommended"\n', "adam", 5e-4),  # the kind's documented rate
        ('kind = "adam_recommended"\noptimizer = "adam"\n', "adam", 5e-4),
        ('optimizer = "adam"\nlearning_rate = 0.01\n', "adam", 0.01),  # explicit: honoured
        ('optimizer = "sgd"\nlearning_rate = 0.1\n', "sgd", 0.1),
        ('kind = "adam_recommended"\nlearning_rate = 0.001\n', "adam", 0.001),
    ],
)
def test_a_strategy_without_a_rate_runs_at_its_optimizers_or_kinds_default(
    tmp_path, body, optimizer, rate
):
    path = _strategy_toml(tmp_path, body)
    config = ExperimentConfig.from_toml(path)
    config.validate()
    (s,) = config.strategies
    assert (s.optimizer, s.learning_rate) == (optimizer, rate)
    cls, lr = _rate_that_runs(config, s)
    assert cls is {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer] and lr == rate
    # the log line and --print-config (the saved config.toml) show the rate that runs
    assert f"{optimizer} lr {rate}" in _describe(s)
    res = CliRunner().invoke(app, ["run", "--config", str(path), "--print-config"])
    assert res.exit_code == 0, res.output
    shown = ExperimentConfig.from_dict(tomllib.loads(res.output)).strategies[0]
    assert (shown.optimizer, shown.learning_rate) == (optimizer, rate)
    assert f"learning_rate = {rate}" in res.output


def test_the_defaults_are_declared_once_and_shared_by_the_registry():
    assert DEFAULT_LEARNING_RATES == {"sgd": 0.02, "adam": 0.002}
    assert default_learning_rate("finetune") == 0.02
    assert default_learning_rate("finetune", "adam") == 0.002
    assert default_learning_rate("head_only", "adam") == 0.002
    assert default_learning_rate("adam_recommended") == RECOMMENDED_ADAM_LR == 5e-4
    assert default_learning_rate("some.module:factory") is None  # not imported for this
    strategy = build_strategy("finetune", optimizer="adam")
    assert strategy.build_optimizer_fn().keywords["lr"] == 0.002
    # the experiment's default strategies: TFF's sgd 0.02 and adam 0.002
    assert [(s.name, s.optimizer, s.learning_rate) for s in ExperimentConfig().strategies] == [
        ("sgd", "sgd", 0.02),
        ("adam", "adam", 0.002),
    ]


def test_adam_recommended_with_another_optimizer_is_an_error_naming_the_conflict(tmp_path):
    path = _strategy_toml(tmp_path, 'kind = "adam_recommended"\noptimizer = "sgd"\n')
    res = CliRunner().invoke(app, ["run", "--config", str(path), "--print-config"])
    assert _error(res) == (
        "error: strategy 's': strategy kind 'adam_recommended': it fine-tunes with Adam, so "
        "optimizer 'sgd' contradicts it; drop optimizer, or use kind 'finetune' with "
        "optimizer 'sgd'."
    )
    with pytest.raises(ValueError, match="optimizer 'sgd' contradicts it"):
        build_strategy("adam_recommended", optimizer="sgd")


def test_cli_strategy_form_takes_the_optimizers_default_rate():
    res = CliRunner().invoke(
        app, [*TINY, "--strategy", "adam", "--strategy", "f=sgd:0.1", "--print-config"]
    )
    assert res.exit_code == 0, res.output
    strategies = ExperimentConfig.from_dict(tomllib.loads(res.output)).strategies
    assert [(s.name, s.optimizer, s.learning_rate) for s in strategies] == [
        ("adam", "adam", 0.002),
        ("f", "sgd", 0.1),
    ]


def test_a_tuned_optimizer_takes_each_candidates_own_default_rate():
    s = StrategyConfig("t", tune={"optimizer": ["sgd", "adam"]})
    assert s.learning_rate is None  # left to each candidate, not fixed to sgd's 0.02
    assert [s.with_params(p).learning_rate for p in s.grid()] == [0.02, 0.002]
    # the saved config reloads to the same strategy
    config = ExperimentConfig(strategies=[s], num_val_clients=2)
    again = ExperimentConfig.from_dict(config.to_dict())
    assert again.strategies == [s]
    kept = StrategyConfig("k", "adam", tune={"learning_rate": [1e-3, 1e-4]})
    assert (kept.optimizer, kept.learning_rate) == ("adam", None)


# -- 2. tune varies hyperparameters only -----------------------------------------------------------
@pytest.mark.parametrize("key", ["name", "kind"])
def test_tuning_a_name_or_kind_is_refused_listing_the_tunable_keys(tmp_path, key):
    path = _strategy_toml(
        tmp_path, f'tune = {{ {key} = ["a", "b"] }}\n', extra="num_val_clients = 2\n"
    )
    res = CliRunner().invoke(app, ["run", "--config", str(path), "--print-config"])
    assert _error(res) == (
        f"error: strategy 's': tune.{key} is not a tunable hyperparameter; tune any of "
        "optimizer, learning_rate, batch_size, epochs, epochs_per_eval, momentum, shuffle "
        "(e.g. tune = { learning_rate = [0.01, 0.02] })."
    )
    with pytest.raises(ConfigError, match=f"proximal.*tune.{key} is not a tunable.*, lam, "):
        StrategyConfig("proximal", kind="proximal", options={"lam": 0.1},
                       tune={key: ["x"]}).validate()  # fmt: skip


# -- 3. head = [] names head -----------------------------------------------------------------------
def test_an_empty_head_is_refused_naming_head(tmp_path):
    path = _strategy_toml(tmp_path, 'kind = "head_only"\nhead = []\n')
    res = CliRunner().invoke(app, ["run", "--config", str(path), "--print-config"])
    assert _error(res) == (
        "error: strategy 's': strategy kind 'head_only': head is an empty list: it names no "
        "layer to fine-tune; name at least one (e.g. head = ['fc2']) or leave head out for the "
        "last layer with parameters."
    )


# -- 4. a user's strategy that fails; a built strategy where a builder belongs ---------------------
@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    folder = tmp_path / "user_modules"
    folder.mkdir()
    (folder / "fc17_broken.py").write_text("value = undefined_name\n")
    (folder / "fc17_raising.py").write_text(
        "def factory(**kwargs):\n    raise RuntimeError('no GPU here\\nsecond line')\n\n"
        "def personalize(model, train_data, test_data, context=None):\n    return {}\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    yield
    for name in ("fc17_broken", "fc17_raising"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    "kind, message",
    [
        (
            "fc17_broken:factory",
            "error: strategy 's': strategy kind 'fc17_broken:factory': importing module "
            "'fc17_broken' raised NameError: name 'undefined_name' is not defined; fix the "
            "module.",
        ),
        (
            "fc17_raising:factory",
            "error: strategy 's': strategy kind 'fc17_raising:factory': the factory raised "
            "RuntimeError: no GPU here second line.",
        ),
        (
            "fc17_raising:personalize",
            "error: strategy 's': strategy kind 'fc17_raising:personalize' is a built strategy "
            "(it takes ['model', 'train_data', 'test_data']), not a factory: a strategy kind "
            "names a factory that takes keyword hyperparameters and returns "
            "personalize_fn(model, train_data, test_data, context=None).",
        ),
    ],
)
def test_a_user_strategy_that_fails_is_one_line_naming_it(tmp_path, user_modules, kind, message):
    path = _strategy_toml(tmp_path, f'kind = "{kind}"\n')
    res = CliRunner().invoke(app, ["run", "--config", str(path), "--print-config"])
    assert _error(res) == message


def _linear() -> torch.nn.Module:
    return torch.nn.Linear(2, 2)


def test_a_built_strategy_where_a_builder_belongs_is_a_type_error_naming_the_key():
    built = build_personalize_fn(
        functools.partial(torch.optim.SGD, lr=0.1), batch_size=2, num_epochs=1,
        num_epochs_per_eval=1,
    )  # fmt: skip
    with pytest.raises(TypeError) as e:
        build_personalization_eval(_linear, {"ft": built}, lambda m, d: {})
    assert str(e.value).startswith(
        "personalize_fn_dict['ft'] takes arguments (model, train_data, test_data, "
        "context): it is a built strategy (a personalize_fn), but a no-argument builder "
        "is expected; pass the builder"
    )
    # the reverse: a builder that returns a builder rather than the strategy
    builder = build_strategy("finetune")
    with pytest.raises(TypeError, match=r"personalize_fn_dict\['ft'\]\(\) returned a "
                       r"no-argument callable \(a strategy builder\?\)"):  # fmt: skip
        build_personalization_eval(_linear, {"ft": lambda: builder}, lambda m, d: {})


# -- 5. --tensorboard '' ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["tensorboard", "data-dir", "cache-dir"])
def test_an_empty_folder_setting_is_refused(tmp_path, monkeypatch, key):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [*TINY, f"--{key}", "", "--output-dir", str(tmp_path / "o")])
    name = key.replace("-", "_")
    assert (
        _error(res) == f"error: {name} is empty; give a folder (--{key} DIR) or leave {name} out."
    )
    assert list(tmp_path.iterdir()) == []


# -- 6. folders stored normalised ------------------------------------------------------------------
def test_folders_are_stored_absolute_and_normalised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ExperimentConfig(data_dir="a/./b/../c/", cache_dir="~/x/..//cache/")
    stored = config.with_absolute_paths()
    assert stored.data_dir == str(tmp_path / "a" / "c")
    assert stored.cache_dir == os.path.join(os.path.expanduser("~"), "cache")
    # a run saves them so (and logs the strategies' real rates)
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app, [*TINY, "--cache-dir", "sub/../cache/", "--strategy", "adam", "--output-dir", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "strategies adam (adam lr 0.002)" in res.output  # the log names the real rate
    saved = ExperimentConfig.from_toml(out / rd.CONFIG)
    assert saved.cache_dir == str(tmp_path / "cache")
    assert (saved.strategies[0].optimizer, saved.strategies[0].learning_rate) == ("adam", 0.002)


# -- 7. sweep inputs -------------------------------------------------------------------------------
SWEEP = """
dataset = "synthetic"
synthetic_clients = 6
num_train_clients = 4
num_p13n_clients = 2
rounds = 1
clients_per_round = 2
local_epochs = 1
num_eval_clients = 2
p13n_epochs = 1
num_global_eval_clients = 2
executor = "in-process"

[sweep]
"""


def test_run_folder_names_are_safe_readable_and_distinct():
    assert run_folder_name("local_epochs=2,client_learning_rate=0.01") == (
        "local_epochs=2,client_learning_rate=0.01"
    )
    name = run_folder_name("data_dir=x/../../../../t")
    assert (
        name.startswith("data_dir=x_.._.._.._.._t-")
        and len(name) == len("data_dir=x_.._.._.._.._t-") + 8
    )
    assert "/" not in name and "\\" not in run_folder_name("data_dir=a\\b")
    assert run_folder_name("k=a/b") != run_folder_name("k=a_b") != run_folder_name("k=a b")
    assert len(run_folder_name("k=" + "v" * 400)) <= 160
    with pytest.raises(ConfigError, match="not a folder name inside"):
        run_dir_of(Path("out"), "../x")


def test_a_grid_value_with_dot_dots_stays_inside_the_output_dir(tmp_path):
    out = tmp_path / "deep" / "er" / "out"
    sweep = SweepConfig.from_dict(
        tomllib.loads(SWEEP + "grid = { tensorboard = ['x/../../../../../t'] }")
    )
    ((name, _),) = sweep.runs()
    assert "/" not in name
    (tmp_path / "deep" / "er").mkdir(parents=True)
    before = set(tmp_path.rglob("*"))
    run_sweep(sweep, out, log=lambda s: None)
    written = set(tmp_path.rglob("*")) - before
    assert written and all(p == out or out in p.parents for p in written)
    assert (out / RUNS / name / rd.SUMMARY).is_file()


@pytest.mark.parametrize("grid", ["grid = {}", "grid = { local_epochs = [] }"])
def test_an_empty_grid_is_refused(tmp_path, grid):
    toml = tmp_path / "s.toml"
    toml.write_text(SWEEP + grid)
    res = CliRunner().invoke(app, ["sweep", str(toml), "--output-dir", str(tmp_path / "o")])
    message = (
        "the sweep grid is empty; give at least one setting and its values, e.g. [sweep] "
        "grid = { local_epochs = [2, 5] } (for a single run: fedp13n run)."
        if grid == "grid = {}"
        else "sweep grid 'local_epochs' must be a non-empty list of values."
    )
    assert _error(res) == f"error: {toml}: {message}"
    assert not (tmp_path / "o").exists()


class _Pool:
    """Stands in for the sweep's process pool: runs the jobs here, one after another."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, jobs):
        return [fn(job) for job in jobs]


@pytest.mark.parametrize(
    "cores, pool, message",
    [
        (16, [2], "--parallel 48 capped at 2 (2 runs left to do)."),
        (1, [], "--parallel 48 capped at 1 (one run per core, 1 core)."),  # no pool at all
    ],
)
def test_parallel_is_capped_at_the_runs_left_and_the_cores(
    tmp_path, monkeypatch, cores, pool, message
):
    from fedp13n.execution import factory

    real, sizes = factory.make_executor, []

    def make_executor(kind, num_workers=None, **kwargs):
        if kind != "processes":  # the runs' own executors
            return real(kind, num_workers=num_workers, **kwargs)
        sizes.append(num_workers)
        return _Pool()

    monkeypatch.setattr(factory, "make_executor", make_executor)
    monkeypatch.setattr(sweep_module.os, "cpu_count", lambda: cores)
    ran = []  # the runs themselves are not the point here
    monkeypatch.setattr(sweep_module, "_run_one", lambda job: ran.append(job[0]) or "ran")
    sweep = SweepConfig.from_dict(tomllib.loads(SWEEP + "grid = { local_epochs = [1, 2] }"))
    lines: list[str] = []
    run_sweep(sweep, tmp_path / "o", parallel=48, log=lines.append)
    assert message in lines
    assert sizes == pool
    assert ran == ["local_epochs=1", "local_epochs=2"]


def test_run_into_a_sweep_folder_and_sweep_into_a_run_folder_are_refused(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(SWEEP + "grid = { local_epochs = [1] }")
    sweep_dir = tmp_path / "sweep"
    res = CliRunner().invoke(app, ["sweep", str(toml), "--output-dir", str(sweep_dir)])
    assert res.exit_code == 0, res.output
    before = sorted(p.name for p in sweep_dir.iterdir())
    res = CliRunner().invoke(app, [*TINY, "--output-dir", str(sweep_dir)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.splitlines()[-1] == (
        f"error: --output-dir {sweep_dir} is a sweep directory (written by 'fedp13n sweep'), "
        "not a run directory; give the run its own --output-dir."
    )
    assert sorted(p.name for p in sweep_dir.iterdir()) == before
    run_dir = sweep_dir / RUNS / "local_epochs=1"
    res = CliRunner().invoke(app, ["sweep", str(toml), "--output-dir", str(run_dir)])
    assert _error(res) == (
        f"error: --output-dir {run_dir} is the run directory of a 'fedp13n run' (it has "
        "config.toml), not a sweep directory; give the sweep its own --output-dir."
    )
    assert not (run_dir / "sweep.toml").exists()


def test_a_summary_of_the_wrong_shape_is_not_a_summary(tmp_path):
    path = tmp_path / "summary.json"
    for garbage in ("not json {", "[1, 2]", '{"strategies": 3}', "\udcff", ""):
        path.write_text(garbage, errors="surrogateescape")
        assert sweep_module.read_summary(path) is None
    path.write_bytes(b"\xff\xfe")
    assert sweep_module.read_summary(path) is None
    path.write_text('{"strategies": {}, "baseline": {}}')
    assert sweep_module.read_summary(path) == {"strategies": {}, "baseline": {}}


def test_a_garbage_summary_under_resume_is_kept_aside_and_the_run_redone(tmp_path):
    garbage = "not json {"
    toml = tmp_path / "s.toml"
    toml.write_text(SWEEP + "grid = { local_epochs = [1] }")
    out = tmp_path / "sweep"
    assert CliRunner().invoke(app, ["sweep", str(toml), "--output-dir", str(out)]).exit_code == 0
    summary = out / RUNS / "local_epochs=1" / rd.SUMMARY
    good = json.loads(summary.read_text())
    summary.write_text(garbage)
    res = CliRunner().invoke(app, ["sweep", str(toml), "--output-dir", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert (
        f"warning: {summary} is not a run summary; it is kept as summary.json.unreadable and "
        "run local_epochs=1 runs again."
    ) in res.output.splitlines()
    assert (summary.parent / "summary.json.unreadable").read_text() == garbage  # nothing lost
    assert json.loads(summary.read_text())["baseline"] == good["baseline"]
    assert "Traceback" not in res.output
