"""Bad input found by a fourth audit of the command line (settings accepted in a
combination that ignores them, subcommand flags): each is refused with a one-line error
naming the fix (exit 2), or the run says that it ignores the setting, never a silently
wrong result. The harness that found them: /work/audit4-harness (not shipped)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedp13n.cli.main import app
from fedp13n.experiments.config import ExperimentConfig

TINY = [
    "--dataset", "synthetic", "--synthetic-clients", "10", "--num-train-clients", "6",
    "--num-p13n-clients", "4", "--clients-per-round", "2", "--rounds", "1",
    "--local-epochs", "1", "--num-eval-clients", "2", "--p13n-epochs", "1",
    "--batch-size", "16", "--executor", "in-process", "--no-report", "--no-progress",
]  # fmt: skip


def _error(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0]


def _notes(**settings) -> list[str]:
    config = ExperimentConfig(**settings)
    config.validate()
    return config.unused_settings()


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"client_optimizer": "adam", "client_momentum": 0.5}, "client_momentum"),
        ({"server_optimizer": "adam", "server_momentum": 0.5}, "server_momentum"),
        ({"server_beta1": 0.5}, "server_beta1"),
        ({"server_beta2": 0.9}, "server_beta2"),
        ({"server_epsilon": 0.1}, "server_epsilon"),
    ],
)
def test_an_optimizer_setting_the_chosen_optimizer_does_not_read_is_said_ignored(settings, key):
    # make_optimizer_fn drops SGD's momentum for adam (and never gives SGD Adam's betas):
    # the run now says so instead of training as if the setting were not there
    notes = _notes(**settings)
    assert len(notes) == 1 and notes[0].startswith(f"{key} = ") and "ignored" in notes[0]
    # the same settings under the optimizer that reads them, and the defaults: no note
    reader = "sgd" if "momentum" in key else "adam"
    which = "client_optimizer" if key.startswith("client") else "server_optimizer"
    assert _notes(**{**settings, which: reader}) == []
    assert _notes(client_optimizer="adam", server_optimizer="adam") == []


def test_max_retries_with_the_in_process_executor_is_refused():
    # in-process has no worker process to die and re-run: max_retries was ignored silently
    line = _error(["run", "--executor", "in-process", "--max-retries", "5", "--print-config"])
    assert "max_retries" in line and "'processes'" in line
    res = CliRunner().invoke(app, ["run", "--executor", "processes", "--max-retries", "5",
                                   "--print-config"])  # fmt: skip
    assert res.exit_code == 0, res.output


def test_engine_clients_with_the_engine_off_is_said_ignored(tmp_path):
    args = ["run", *TINY, "--output-dir", str(tmp_path / "r"), "--engine", "off"]
    res = CliRunner().invoke(app, [*args, "--engine-clients", "4"])
    assert res.exit_code == 0, res.output
    assert "engine_clients = 4 applies to the multi-client engine only: ignored" in res.output


def test_data_info_seed_without_num_clients_is_refused():
    # --seed chooses the --num-clients subset; without one it was ignored (all clients read)
    line = _error(["data", "info", "-d", "emnist", "--seed", "5"])
    assert "--seed 5" in line and "--num-clients" in line
    # the seed of the synthetic data is used without --num-clients: still accepted
    res = CliRunner().invoke(app, ["data", "info", "-d", "synthetic", "--seed", "5"])
    assert res.exit_code == 0, res.output


def _options(command, path):
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _options(sub, [*path, name])
        return
    for p in command.params:
        if p.param_type_name == "option" and p.name != "help":
            yield " ".join(path), p


def test_every_option_of_every_command_states_its_default_in_its_help():
    import typer

    #: on/off switches without a negative form: absent means off
    switches = {"--resume", "--print-config", "--version"}
    missing = []
    for path, p in _options(typer.main.get_command(app), ["fedp13n"]):
        if p.required or p.opts[0] in switches or p.opts[0] == "--config":
            continue
        shown = p.show_default and p.default is not None and (p.secondary_opts or not p.is_flag)
        if not shown and "default:" not in (p.help or ""):
            missing.append(f"{path} {p.opts[0]}")
    assert missing == []


def test_p13n_epochs_and_batch_size_when_every_strategy_sets_its_own_are_said_ignored():
    strategies = [{"name": "a", "epochs": 1, "batch_size": 8}]
    config = ExperimentConfig.from_dict(
        {"p13n_epochs": 2, "p13n_batch_size": 4, "strategies": strategies}
    )
    config.validate()
    notes = config.unused_settings()
    assert [n.split(" = ")[0] for n in notes] == ["p13n_epochs", "p13n_batch_size"]
    assert all("ignored" in n for n in notes)
    # one strategy without its own epochs reads p13n_epochs: no note for it
    mixed = [{"name": "a", "epochs": 1}, {"name": "b"}]
    config = ExperimentConfig.from_dict({"p13n_epochs": 2, "strategies": mixed})
    config.validate()
    assert config.unused_settings() == []


def test_print_config_names_the_settings_the_run_would_ignore():
    import tomllib

    res = CliRunner().invoke(
        app, ["run", "--task", "shakespeare", "--synthetic-clients", "20", "--print-config"]
    )
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first.startswith("# note: synthetic_clients = 20 applies to dataset 'synthetic'")
    assert tomllib.loads(res.output)["synthetic_clients"] == 20  # still TOML


def test_data_dir_with_the_generated_synthetic_dataset_is_said_ignored():
    # the run ignored it silently; a note, not an error: a run that failed before its data
    # loaded is resumed with --dataset synthetic and keeps its saved data_dir
    notes = _notes(dataset="synthetic", data_dir="/tmp/d")
    assert len(notes) == 1 and notes[0].startswith("data_dir = '/tmp/d'"), notes
    assert "ignored" in notes[0] and "'synthetic' is generated" in notes[0]
    assert _notes(dataset="emnist", data_dir="/tmp/d") == []  # read from there


@pytest.mark.parametrize("dataset", ["synthetic", "fedp13n.examples.my_task:load"])
def test_cache_dir_with_data_that_is_not_cached_is_said_ignored(dataset):
    model = {} if dataset == "synthetic" else {"model": "fedp13n.examples.my_task:build"}
    notes = _notes(dataset=dataset, cache_dir="/tmp/c", **model)
    assert len(notes) == 1 and notes[0].startswith("cache_dir = '/tmp/c'"), notes
    assert "ignored" in notes[0]
    assert _notes(dataset="emnist", cache_dir="/tmp/c") == []  # read and cached there


def test_a_top_level_training_setting_every_stage_replaces_is_said_ignored():
    stages = [
        {"name": "a", "client_learning_rate": 0.05},
        {"name": "b", "client_learning_rate": 0.03},
    ]
    notes = _notes(client_learning_rate=0.1, stages=stages)
    assert notes == [
        "client_learning_rate = 0.1 at the top level is every stage's default, but every "
        "stage sets its own: ignored"
    ]
    # a stage that takes the top-level value: used, no note
    assert _notes(client_learning_rate=0.1, stages=[stages[0], {"name": "b"}]) == []


def test_every_setting_is_named_in_the_readme():
    import dataclasses
    from pathlib import Path

    from fedp13n.experiments.config import field_flag

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    unnamed = [f.name for f in dataclasses.fields(ExperimentConfig)
               if f.name not in readme and field_flag(f) not in readme]  # fmt: skip
    assert unnamed == []


def test_nondeterministic_off_cuda_is_said_ignored(tmp_path):
    # set_deterministic runs on CUDA only: on the CPU --nondeterministic changed nothing
    args = ["run", *TINY, "--output-dir", str(tmp_path / "r"), "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "--nondeterministic"])
    assert res.exit_code == 0, res.output
    assert (
        "deterministic = false (--nondeterministic) switches CUDA kernels only: ignored on cpu"
        in (res.output)
    )


def test_config_given_twice_is_refused():
    # click kept the last --config and dropped the first silently: a run reads one file
    line = _error(["run", "--config", "demo", "--config", "femnist_sample", "--print-config"])
    assert "--config is given 2 times ('demo', 'femnist_sample')" in line
    res = CliRunner().invoke(app, ["run", "--config", "demo", "--print-config"])
    assert res.exit_code == 0 and "rounds = 25\n" in res.output, res.output
