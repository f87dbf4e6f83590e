"""Every setting is reachable from the command line and from TOML, defined once."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
import tomli_w
from typer.testing import CliRunner

from fedp13n.cli.main import app
from fedp13n.cli.run_cmd import config_options
from fedp13n.experiments.config import ExperimentConfig, base_type, field_flag

#: A value different from the default for every setting, and how the CLI spells it.
CHANGED = {
    "task": ("emnist-copy", "emnist-copy"),  # registered by the test that sets it
    "dataset": ("synthetic", "synthetic"),
    "data_dir": ("some/dir", "some/dir"),
    "cache_dir": ("a/cache", "a/cache"),
    "only_digits": (True, None),
    "synthetic_clients": (33, "33"),
    "num_train_clients": (20, "20"),
    "num_p13n_clients": (7, "7"),
    "split_seed": (5, "5"),
    "num_val_clients": (3, "3"),
    "rounds": (9, "9"),
    "clients_per_round": (4, "4"),
    "local_epochs": (2, "2"),
    "local_steps": (6, "6"),
    "batch_size": (16, "16"),
    "client_pipeline": ("epochs", "epochs"),
    "client_optimizer": ("adam", "adam"),
    "client_learning_rate": (0.5, "0.5"),
    "client_momentum": (0.5, "0.5"),
    "server_optimizer": ("adam", "adam"),
    "server_learning_rate": (0.01, "0.01"),
    "server_momentum": (0.5, "0.5"),
    "server_beta1": (0.8, "0.8"),
    "server_beta2": (0.99, "0.99"),
    "server_epsilon": (1e-6, "1e-06"),
    "proximal_mu": (0.01, "0.01"),
    "method": ("fedper", "fedper"),
    "personal_layers": ("fc1,fc2", "fc1,fc2"),
    "head_epochs": (3, "3"),
    "ditto_lambda": (0.5, "0.5"),
    "per_fedavg_variant": ("hf", "hf"),
    "per_fedavg_alpha": (0.05, "0.05"),
    "pfedme_lambda": (10.0, "10.0"),
    "pfedme_k": (3, "3"),
    "pfedme_personal_lr": (0.05, "0.05"),
    "pfedme_beta": (2.0, "2.0"),
    "apfl_alpha": (0.75, "0.75"),
    "apfl_adaptive": (False, None),
    "model": ("fedavg_cnn", "fedavg_cnn"),
    "loss": ("torch.nn.functional:nll_loss", "torch.nn.functional:nll_loss"),
    "num_classes": (5, "5"),
    "stages": ([{"name": "a", "rounds": 2}], "a:rounds=2"),
    "eval_every": (3, "3"),
    "num_global_eval_clients": (12, "12"),
    "checkpoint_every": (2, "2"),
    "keep_checkpoints": (0, "0"),
    "strategies": (
        [
            {
                "name": "fast",
                "optimizer": "sgd",
                "learning_rate": 0.1,
                "epochs_per_eval": 1,
                "kind": "finetune",
            }
        ],
        "fast=sgd:0.1",
    ),
    "p13n_epochs": (5, "5"),
    "p13n_batch_size": (10, "10"),
    "num_eval_clients": (8, "8"),
    "p13n_eval_every": (2, "2"),
    "seed": (3, "3"),
    "executor": ("in-process", "in-process"),
    "workers": (1, "1"),
    "ray_address": ("auto", "auto"),
    "tensorboard": ("tb", "tb"),
    "task_timeout": (30.0, "30"),
    "device": ("cpu", "cpu"),
    "precision": ("bf16", "bf16"),
    "engine": ("on", "on"),
    "engine_clients": (8, "8"),
    "workers_per_gpu": (2, "2"),
    "deterministic": (False, None),
    "max_retries": (1, "1"),
}


def field_flag_of(name: str) -> str:
    return field_flag(next(f for f in dataclasses.fields(ExperimentConfig) if f.name == name))


def _printed(args: list[str]) -> dict:
    res = CliRunner().invoke(app, ["run", *args, "--print-config"])
    assert res.exit_code == 0, res.output
    return tomllib.loads(res.output)


def test_the_table_covers_every_setting():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert {name for _, name, _, _ in config_options()} == set(CHANGED)


@pytest.mark.parametrize("field", dataclasses.fields(ExperimentConfig), ids=lambda f: f.name)
def test_every_setting_from_the_command_line_and_from_toml(field, tmp_path, monkeypatch):
    from fedp13n.tasks.registry import TASKS

    monkeypatch.setitem(TASKS, "emnist-copy", dataclasses.replace(TASKS["emnist"], name="x"))
    value, text = CHANGED[field.name]
    default = ExperimentConfig()
    assert getattr(default, field.name) != value
    flag = field_flag(field)
    if base_type(field) is bool:
        args = [field.metadata["negative_flag"] if value is False else flag]
    else:
        args = [flag, text]
    extra = {  # settings that need another
        "ray_address": {"executor": "ray"},
        "num_classes": {"dataset": "fedp13n.examples.my_task:load"},
    }.get(field.name, {})
    args += [a for k, v in extra.items() for a in (field_flag_of(k), v)]
    from_cli = _printed(args)
    toml_file = tmp_path / "c.toml"
    toml_file.write_text(tomli_w.dumps({field.name: value, **extra}))
    from_toml = _printed(["--config", str(toml_file)])
    assert from_cli[field.name] == value
    assert from_toml[field.name] == value


def test_command_line_wins_over_toml(tmp_path):
    toml_file = tmp_path / "c.toml"
    toml_file.write_text("rounds = 3\nseed = 4\n")
    printed = _printed(["--config", str(toml_file), "--rounds", "7"])
    assert (printed["rounds"], printed["seed"]) == (7, 4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stage", "rounds=x"], "--stage rounds: 'x' is not an integer"),
        (["--stage", "a:bogus=1"], "KEY one of"),
        (["--rounds", "-1"], "rounds must be a non-negative integer"),
        (["--client-lr", "inf"], "client_learning_rate must be a finite"),
    ],
)
def test_bad_values_are_one_line_errors(args, message):
    res = CliRunner().invoke(app, ["run", *args, "--print-config"])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output


def test_help_shows_defaults_without_placeholders():
    res = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "[default: 0.02]" in res.output and "[default: sgd:0.02 adam:0.002]" in res.output
    ours = [line for line in res.output.splitlines() if "Show this message" not in line]
    assert not [line for line in ours if "<bool>" in line]
    assert " ." not in res.output.replace("...", "")
