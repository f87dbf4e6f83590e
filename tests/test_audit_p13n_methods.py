"""Bad input found by an audit of the newest surfaces (one's own dataset / model / loss,
``fedp13n.partition``, ``data info --url``, the methods and the centralized stage): each is
a one-line error naming the problem and the fix, or a note in the run's log for a setting
that nothing in the run uses, never a traceback or a misleading message rounds later."""

from __future__ import annotations

import importlib
import sys
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedp13n.cli.main import app
from fedp13n.data.client_data import ClientData
from fedp13n.data.datasets import load_dataset
from fedp13n.data.partition import partition
from fedp13n.data.validate import DataError
from fedp13n.experiments.config import ConfigError, ExperimentConfig
from fedp13n.models.objectives import TaskLoss
from fedp13n.tasks.build import check_model_fits, client_data_pair

X = np.arange(12, dtype=np.float32).reshape(6, 2) / 12  # 6 examples, 2 features
Y = np.array([0, 1, 2, 0, 1, 2])


def _pair(x_a=X[:3], y_a=Y[:3], x_b=X[3:], y_b=Y[3:]):
    """(train, test) of clients 'a' and 'b': the first 2 examples train, the last 1 test."""
    train = {"a": (x_a[:2], y_a[:2]), "b": (x_b[:2], y_b[:2])}
    test = {"a": (x_a[2:], y_a[2:]), "b": (x_b[2:], y_b[2:])}
    return train, test


def _nan_at(x, i):
    x = x.copy()
    x.flat[i] = np.nan
    return x


@pytest.mark.parametrize(
    "pair, message",
    [
        (_pair(x_b=_nan_at(X[3:], 1)), "its train data: client 'b' has NaN or infinite features"),
        (_pair(x_a=X[:3] * np.inf), "its train data: client 'a' has NaN or infinite features"),
        (_pair(y_a=np.array([0.0, 1.0, 1.0]), y_b=np.array([0.0, np.nan, 1.0])),
         "client 'b' has NaN or infinite labels"),
        (_pair(y_a=np.array(["x", "y", "z"]), y_b=np.array(["x", "y", "z"])),
         "the labels have dtype <U1; they must be numbers (e.g. class indices"),
        (_pair(y_b=np.array([0, -1, 1])), "client 'b' has label -1; labels are class indices"),
        (_pair(y_a=Y[:3] > 0, y_b=Y[3:] > 0), "the labels are booleans; give class indices"),
        (({"a": (X[:0], Y[:0]), "b": (X[:0], Y[:0])}, _pair()[1]),
         "its train data has no examples (every client is empty)"),
        ((_pair()[0], {"a": (X[:0], Y[:0]), "b": (X[:0], Y[:0])}),
         "its test data has no examples (every client is empty); give the clients examples"),
    ],
)  # fmt: skip
def test_ones_own_data_with_bad_values_is_refused_when_loaded(pair, message):
    with pytest.raises(DataError) as e:
        client_data_pair(pair, "dataset 'm:f'")
    assert message in str(e.value) and str(e.value).startswith("dataset 'm:f': ")
    assert "\n" not in str(e.value)


def test_good_own_data_passes_the_value_checks():
    train, test = client_data_pair(_pair(), "dataset 'm:f'")
    assert train.client_ids == test.client_ids == ("a", "b")
    assert train.num_examples == 4 and test.num_examples == 2


class _NoParams(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 3)


class _Scaled(torch.nn.Linear):
    def __init__(self, scale):
        super().__init__(2, 3)
        self.scale = scale

    def forward(self, x):
        return super().forward(x) * self.scale


def _frozen():
    net = torch.nn.Linear(2, 3)
    net.requires_grad_(False)
    return net


@pytest.mark.parametrize(
    "model_fn, loss_fn, message",
    [
        (_NoParams, torch.nn.functional.cross_entropy, "model 'm:b' has no trainable parameters"),
        (_frozen, torch.nn.functional.cross_entropy, "model 'm:b' has no trainable parameters"),
        (lambda: torch.nn.Linear(2, 3), lambda out, y: torch.tensor(1.0),
         "the loss on model 'm:b''s output has no gradient (requires_grad is False)"),
        (lambda: _Scaled(float("nan")), torch.nn.functional.cross_entropy,
         "the loss on 2 examples of client 'a' is nan (the output is not finite)"),
        (lambda: torch.nn.Linear(2, 3), lambda out, y: out.sum() * float("nan"),
         "the loss on 2 examples of client 'a' is nan (the loss is not finite)"),
    ],
)  # fmt: skip
def test_a_model_or_loss_that_cannot_train_is_refused_before_training(model_fn, loss_fn, message):
    train, test = client_data_pair(_pair())
    with pytest.raises(ValueError) as e:
        check_model_fits(model_fn, TaskLoss(loss_fn), train, test, "m:b")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_dry_run_leaves_a_fitting_model_and_the_global_rng_alone():
    train, test = client_data_pair(_pair())
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    check_model_fits(lambda: _Scaled(1.0), TaskLoss(), train, test, "m:b")
    assert torch.equal(torch.rand(2), expected)


def _module(tmp_path, monkeypatch, source: str, name: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return name


_OWN = """
import numpy as np, torch

def load():
    rng = np.random.default_rng(0)
    pair = lambda: {f"c{i}": (rng.normal(size=(4, 2)).astype(np.float32),
                              np.arange(4) % 3) for i in range(4)}
    return pair(), pair()

def labels_as_text():
    train, test = load()
    text = lambda d: {k: (x, np.array([f"l{v}" for v in y])) for k, (x, y) in d.items()}
    return text(train), text(test)

def build(num_classes):
    return torch.nn.Linear(2, num_classes)

def build_fixed():
    return torch.nn.Linear(2, 3)

def constant_loss(out, y):
    return torch.tensor(1.0)
"""


@pytest.mark.parametrize(
    "args, message",
    [  # each was a traceback (or a misleading message) before the audit
        (["--loss", "{m}:constant_loss"], "has no gradient (requires_grad is False)"),
        (["--dataset", "{m}:labels_as_text"], "the labels have dtype <U2; they must be numbers"),
        (["--data-dir", "somewhere"], "your dataset '{m}:load' loads its own (drop data_dir"),
    ],
)
def test_own_task_mistakes_exit_2_with_one_line(args, message, tmp_path, monkeypatch):
    m = _module(tmp_path, monkeypatch, _OWN, "audit_own_task")
    base = ["run", "--dataset", f"{m}:load", "--model", f"{m}:build", "--rounds", "1",
            "--clients-per-round", "2",
            "--executor", "in-process", "--no-report", "--no-progress",
            "--output-dir", str(tmp_path / "run")]  # fmt: skip
    args = [a.format(m=m) for a in args]
    res = CliRunner().invoke(app, [*base, *args])
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert message.format(m=m) in lines[0] and "Traceback" not in res.output


@pytest.mark.parametrize(
    "x, y, kwargs, message",
    [
        (_nan_at(np.zeros((20, 2)), 7), np.arange(20) % 2, {},
         "x holds NaN or infinite values (first at example 3)"),
        (np.zeros((20, 2)), np.where(np.arange(20) == 5, np.nan, 1.0), {"scheme": "iid"},
         "y holds NaN or infinite values (first at example 5)"),
        (np.zeros((20, 2)), np.arange(20) % 3 - 1, {}, "y holds label -1; labels are class"),
        (np.zeros((20, 2)), np.arange(20) % 2, {"seed": -1}, "seed must be an integer >= 0"),
        (np.zeros((0, 2)), np.zeros(0, int), {}, "there are no examples to partition"),
        (np.float32(3), np.int64(1), {}, "x and y need one row per example, got shapes ()"),
    ],
)  # fmt: skip
def test_partition_refuses_nan_and_negative_labels(x, y, kwargs, message):
    with pytest.raises(ValueError) as e:
        partition(x, y, 2, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "name, data_dir, message",
    [
        ("shakespeare", "dir", "--url downloads a dataset, but 'shakespeare' reads --data-dir"),
        ("synthetic", None, "--url downloads a dataset, but 'synthetic' is generated; drop --url"),
    ],
)
def test_url_with_local_data_is_refused(name, data_dir, message, tmp_path):
    with pytest.raises(DataError, match=message):
        load_dataset(name, data_dir=data_dir, url="https://example.org/x.tar.bz2",
                     cache_dir=tmp_path)  # fmt: skip


def test_a_centralized_stage_refuses_every_method_but_fedavg():
    # Per-FedAvg keeps no client state, so it used to pass, train, then fail with a
    # traceback in the evaluation of new clients (a centralized process has no client work)
    config = ExperimentConfig(
        dataset="synthetic", stages=[{"name": "centralized", "method": "per_fedavg"}]
    )
    with pytest.raises(ConfigError, match="stage 'centralized' is centralized .* method "
                       "'per_fedavg' needs clients; set method = 'fedavg' there"):  # fmt: skip
        config.validate()


@pytest.mark.parametrize(
    "settings, notes",
    [
        ({"ditto_lambda": 0.5},
         ["ditto_lambda = 0.5 applies to method 'ditto' only: ignored (this run trains fedavg)"]),
        ({"method": "ditto", "ditto_lambda": 0.5}, []),
        ({"method": "fedper", "apfl_adaptive": False, "personal_layers": "fc2"},
         ["apfl_adaptive = False applies to method 'apfl' only: ignored (this run trains fedper)"]),
        ({"ditto_lambda": 0.5, "stages": [{"name": "a"}, {"name": "b", "method": "ditto"}]}, []),
        ({"pfedme_k": 3, "stages": [{"name": "centralized", "rounds": 1}]},
         ["pfedme_k = 3 applies to method 'pfedme' only: ignored (this run trains centralized)"]),
        ({"personal_layers": "fc1"},
         ["personal_layers = 'fc1' applies to method 'fedper' or 'fedrep' or 'lg_fedavg' only: "
          "ignored (this run trains fedavg)"]),
        ({"dataset": "emnist", "synthetic_clients": 30},
         ["synthetic_clients = 30 applies to dataset 'synthetic' only: ignored (this run "
          "reads 'emnist')"]),
        ({"dataset": "synthetic", "synthetic_clients": 30}, []),
    ],
)  # fmt: skip
def test_settings_no_stage_uses_are_named(settings, notes):
    assert ExperimentConfig(**settings).unused_settings() == notes


def test_the_run_says_it_ignores_a_setting_of_another_method(tmp_path):
    res = CliRunner().invoke(app, [
        "run", "--dataset", "synthetic", "--synthetic-clients", "6", "--rounds", "0",
        "--clients-per-round", "2", "--num-eval-clients", "1", "--p13n-epochs", "1",
        "--strategy", "sgd", "--executor", "in-process", "--no-report", "--no-progress",
        "--ditto-lambda", "0.5", "--output-dir", str(tmp_path / "r"),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "ditto_lambda = 0.5 applies to method 'ditto' only: ignored" in res.output


def test_client_data_objects_are_checked_too():
    bad = ClientData.from_mapping({"a": (np.zeros((2, 1), np.float32), np.array([0, -2]))})
    with pytest.raises(DataError, match="client 'a' has label -2"):
        client_data_pair((bad, bad), "dataset 'm:f'")


def test_global_eval_clients_without_test_data_are_refused_before_training(tmp_path, monkeypatch):
    # only the personalization client has test examples, so the global model's test loss on
    # the FedAvg clients' would be 0/0, reported a round later as weights that "blew up"
    from fedp13n.data.split import split_clients

    ids = [f"c{i}" for i in range(6)]
    _, (p13n_id,) = split_clients(ids, 5, 1, seed=42)
    m = _module(
        tmp_path,
        monkeypatch,
        f"""
    import numpy as np
    from audit_own_task import build
    def load():
        rng = np.random.default_rng(0)
        x = lambda n: rng.normal(size=(n, 2)).astype(np.float32)
        train = {{c: (x(4), np.arange(4) % 3) for c in {ids!r}}}
        test = {{c: (x(0), np.zeros(0, int)) for c in {ids!r}}}
        test[{p13n_id!r}] = (x(2), np.array([0, 1]))
        return train, test
    """,
        "audit_no_test",
    )
    _module(tmp_path, monkeypatch, _OWN, "audit_own_task")
    res = CliRunner().invoke(app, [
        "run", "--dataset", f"{m}:load", "--model", f"{m}:build", "--num-train-clients", "5",
        "--num-global-eval-clients", "3", "--rounds", "1", "--clients-per-round", "2",
        "--executor", "in-process", "--no-report", "--no-progress",
        "--output-dir", str(tmp_path / "r"),
    ])  # fmt: skip
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0] == (
        "error: the 3 FedAvg client(s) whose test data measure the global model "
        "(num_global_eval_clients = 3) have no test examples; raise num_global_eval_clients, "
        "or give those clients test data."
    )


def test_num_classes_a_model_does_not_take_is_said_ignored(tmp_path, monkeypatch):
    m = _module(tmp_path, monkeypatch, _OWN, "audit_own_task")
    res = CliRunner().invoke(app, [
        "run", "--dataset", f"{m}:load", "--model", f"{m}:build_fixed", "--num-classes", "5",
        "--rounds", "0", "--clients-per-round", "2", "--num-eval-clients", "1",
        "--p13n-epochs", "1", "--strategy", "sgd", "--executor", "in-process", "--no-report",
        "--no-progress", "--output-dir", str(tmp_path / "r"),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (
        f"num_classes = 5 is ignored: model '{m}:build_fixed' does not take num_classes"
        in res.output
    )


def test_fedbn_on_a_task_without_batch_norms_names_a_fix_that_exists():
    # Shakespeare's one model has no batch norm; 'conv_bn' is EMNIST's (refused for it)
    from fedp13n.algorithms.fedbn import batch_norm_names
    from fedp13n.models import create_recurrent_model

    with pytest.raises(ValueError) as e:
        batch_norm_names(create_recurrent_model(90))
    assert str(e.value) == (
        "method='fedbn' keeps the batch-norm layers local, but ShakespeareRNN has none; use a "
        "model with batch norms (EMNIST's model = 'conv_bn', or your own 'module:function'), "
        "or another method."
    )


_EMNIST_HEAD_AND_FC1 = {  # EmnistConvDropout's fc1 (9216 -> 128) and fc2 (128 -> 62), model order
    "fc1.weight": ((128, 9216), "float32"),
    "fc1.bias": ((128,), "float32"),
    "fc2.weight": ((62, 128), "float32"),
    "fc2.bias": ((62,), "float32"),
}


@pytest.mark.parametrize(
    "toml",
    [
        'method = "fedper"\npersonal_layers = ["fc2", "fc1"]\n',
        '[[stages]]\nname = "per"\nmethod = "fedper"\npersonal_layers = ["fc2", " fc1"]\n',
    ],
)
def test_personal_layers_as_a_toml_list_is_the_comma_separated_string(toml, tmp_path):
    from fedp13n.algorithms.fedper import fedper_state_spec
    from fedp13n.cli.run_cmd import resolve_config
    from fedp13n.experiments.p13n_experiment import model_fn_for

    (tmp_path / "c.toml").write_text(toml)
    from_toml = resolve_config(tmp_path / "c.toml", {})
    from_cli = resolve_config(None, {"method": "fedper", "personal_layers": "fc2,fc1"})
    stages = [c.resolved_stages()[0] for c in (from_toml, from_cli)]
    assert [s.personal_layers for s in stages] == ["fc2,fc1", "fc2,fc1"]
    specs = [fedper_state_spec(model_fn_for(c), s.personal_layers, s.method)
             for c, s in zip((from_toml, from_cli), stages, strict=True)]  # fmt: skip
    assert specs[0] == specs[1] == _EMNIST_HEAD_AND_FC1
    res = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "c.toml"), "--print-config"])
    assert res.exit_code == 0 and 'personal_layers = "fc2,fc1"' in res.output, res.output


@pytest.mark.parametrize("value", ["[1, 2]", "[]", '["fc1,fc2"]', '["fc1", ""]'])
@pytest.mark.parametrize("where", ["", '[[stages]]\nname = "per"\nmethod = "fedper"\n'])
def test_personal_layers_as_a_list_of_anything_but_names_exits_2(value, where, tmp_path):
    (tmp_path / "c.toml").write_text(f"{where}personal_layers = {value}\n")
    res = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "c.toml"), "--print-config"])
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert (
        "personal_layers must name layers or parameters of the model: a string 'fc1,fc2' "
        "or a list of names ['fc1', 'fc2'], got " in lines[0]
    )


_HUGE_LABEL = """
import numpy as np

def load(top=10**9):
    rng = np.random.default_rng(0)
    x = lambda: rng.normal(size=(4, 2)).astype(np.float32)
    train = {f"c{i}": (x(), np.arange(4) % 3) for i in range(4)}
    test = {f"c{i}": (x(), np.arange(4) % 3) for i in range(4)}
    test["c2"] = (x(), np.array([0, 1, top, 2]))
    return train, test

def load_many_classes():
    return load(top=150_000 - 1)

def build(num_classes):
    import torch
    return torch.nn.Linear(2, num_classes)
"""


@pytest.mark.parametrize(
    "extra, error",
    [
        ([], "error: dataset 'audit_huge:load': client 'c2' has label 1000000000, which would "
             "make 1000000001 classes (the largest label + 1) for 32 examples; labels are class "
             "indices 0..K-1: remap them (np.unique(y, return_inverse=True)[1]), or set "
             "num_classes (--num-classes K) if the model has that many outputs."),
        (["--num-classes", "3"], "error: model 'audit_huge:build' outputs shape (2, 3) for labels "
             "of shape (2,) (largest label 1000000000); it must output logits (batch, at least "
             "1000000001 classes)."),
    ],
)  # fmt: skip
def test_a_huge_label_of_ones_own_data_is_refused_unless_num_classes_is_set(
    extra, error, tmp_path, monkeypatch
):
    m = _module(tmp_path, monkeypatch, _HUGE_LABEL, "audit_huge")
    res = CliRunner().invoke(app, [
        "run", "--dataset", f"{m}:load", "--model", f"{m}:build", *extra, "--rounds", "0",
        "--clients-per-round", "2", "--executor", "in-process", "--no-report",
        "--no-progress", "--output-dir", str(tmp_path / "r"),
    ])  # fmt: skip
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and lines == [error], res.output


def test_the_huge_label_rule_bounds_classes_and_examples_both(tmp_path, monkeypatch):
    from fedp13n.tasks.build import MAX_INFERRED_CLASSES, infer_num_classes

    m = _module(tmp_path, monkeypatch, _HUGE_LABEL, "audit_huge")
    module = importlib.import_module(m)
    assert MAX_INFERRED_CLASSES == 100_000
    # 150,000 classes for 32 examples: refused; 100,000 (the bound) passes
    with pytest.raises(DataError, match="client 'c2' has label 149999, which would make 150000"):
        infer_num_classes(*client_data_pair(module.load_many_classes()))
    assert infer_num_classes(*client_data_pair(module.load(top=99_999))) == 100_000
    # more than 100,000 classes, but no more than the examples: a real many-class task
    train = {"a": (np.zeros((200_001, 1), np.float32), np.arange(200_001))}
    test = {"a": (np.zeros((1, 1), np.float32), np.array([0]))}
    assert infer_num_classes(*client_data_pair((train, test))) == 200_001


_FLOAT_LABELS = (
    "the labels are float32 numbers, but the loss is cross-entropy, which takes integer class "
    "indices: give "
    "integer class labels (y.astype(np.int64) for whole numbers, else "
    "np.unique(y, return_inverse=True)[1]), or a loss that takes float targets "
    "(loss = 'module:function', e.g. --loss my_task:mse_loss)."
)


def test_float_labels_with_cross_entropy_name_both_fixes():
    y = (Y + 0.5).astype(np.float32)
    train, test = client_data_pair(_pair(y_a=y[:3], y_b=y[3:]))
    with pytest.raises(ValueError) as e:
        check_model_fits(lambda: torch.nn.Linear(2, 3), TaskLoss(), train, test, "m:b")
    assert str(e.value) == _FLOAT_LABELS
    # the two fixes pass the dry run: integer labels, or a loss taking float targets
    train, test = client_data_pair(_pair(y_a=y[:3].astype(np.int64), y_b=y[3:].astype(np.int64)))
    check_model_fits(lambda: torch.nn.Linear(2, 3), TaskLoss(), train, test, "m:b")
    train, test = client_data_pair(_pair(y_a=y[:3], y_b=y[3:]))
    mse = TaskLoss(lambda out, t: ((out[:, 0] - t) ** 2).mean())
    check_model_fits(lambda: torch.nn.Linear(2, 3), mse, train, test, "m:b")
    # float class probabilities of the output's shape are cross-entropy's own targets
    probs = np.full((6, 3), 1 / 3, np.float32)
    train, test = client_data_pair(_pair(y_a=probs[:3], y_b=probs[3:]))
    check_model_fits(lambda: torch.nn.Linear(2, 3), TaskLoss(), train, test, "m:b")


def test_float_labels_of_ones_own_data_exit_2_naming_the_fix(tmp_path, monkeypatch):
    m = _module(tmp_path, monkeypatch, _OWN + """
def float_labels():
    train, test = load()
    return tuple({k: (x, y + 0.5) for k, (x, y) in d.items()} for d in (train, test))
""", "audit_float_labels")  # fmt: skip
    res = CliRunner().invoke(app, [
        "run", "--dataset", f"{m}:float_labels", "--model", f"{m}:build_fixed", "--rounds",
        "0", "--clients-per-round", "2", "--executor", "in-process", "--no-report",
        "--no-progress", "--output-dir", str(tmp_path / "r"),
    ])  # fmt: skip
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and lines == ["error: " + _FLOAT_LABELS], res.output


@pytest.mark.parametrize("command", ["info", "download"])
def test_data_commands_on_ones_own_dataset_say_what_they_cover(command):
    res = CliRunner().invoke(app, ["data", command, "--dataset", "my_mod:load"])
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    verb = "describes" if command == "info" else "fetches"
    assert res.exit_code == 2 and lines == [
        f"error: 'data {command}' {verb} fedp13n's built-in data sets only (emnist, "
        "emnist-sqlite, leaf, synthetic, shakespeare, shakespeare-leaf); 'my_mod:load' is your "
        "own 'module:function': `fedp13n run --dataset my_mod:load` logs its clients, examples "
        "and classes before any training (its 'num_classes:' and 'data:' lines), or call the "
        "function in Python."
    ], res.output


def test_the_run_logs_what_data_info_would_say_of_ones_own_data(tmp_path, monkeypatch):
    # what the 'data info' error points to: 4 clients of 4 train and 4 test examples each,
    # labels 0..2 (_OWN's load)
    m = _module(tmp_path, monkeypatch, _OWN, "audit_own_task")
    res = CliRunner().invoke(app, [
        "run", "--dataset", f"{m}:load", "--model", f"{m}:build", "--rounds", "0",
        "--clients-per-round", "2", "--num-eval-clients", "1", "--p13n-epochs", "1",
        "--strategy", "sgd", "--executor", "in-process", "--no-report", "--no-progress",
        "--output-dir", str(tmp_path / "r"),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1] == "num_classes: 3 (the largest label + 1)"
    assert lines[2].startswith(f"data: {m}:load, 4 clients, 16 train / 16 test examples; ")


@pytest.mark.parametrize(
    "stages, kept",
    [
        (["a:method=fedper,personal_layers=fc2", "b:method=ditto"],
         "stage 'a' keeps fedper's head 'fc2', stage 'b' keeps ditto's whole model"),
        (["a:method=fedper", "b:method=lg_fedavg"],
         "stage 'a' keeps fedper's head (the default: the last layer), stage 'b' keeps "
         "lg_fedavg's body (the default: all but the last layer)"),
        (["w:method=fedavg", "a:method=fedrep,personal_layers=fc1", "b:method=scaffold",
          "c:method=apfl"],
         "stage 'a' keeps fedrep's head 'fc1', stage 'b' keeps scaffold's control variates, "
         "stage 'c' keeps apfl's whole model and alpha"),
    ],
)  # fmt: skip
def test_stages_keeping_different_client_state_are_named_in_words(stages, kept):
    args = [a for s in stages for a in ("--stage", s)]
    res = CliRunner().invoke(app, ["run", *args, "--print-config"])
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and lines == [
        f"error: the stages keep different personal_layers or kinds of client state: {kept}; "
        "a run keeps one client state: give every stateful stage the same layers and a method "
        "that keeps the same kind."
    ], res.output
