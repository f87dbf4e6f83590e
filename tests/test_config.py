import pytest

from fedp13n.experiments.config import (
    ConfigError,
    ExperimentConfig,
    StageConfig,
    StrategyConfig,
    resolve_split,
)


def test_defaults_are_tffs_example():
    c = ExperimentConfig()
    c.validate()
    assert (c.dataset, c.rounds, c.clients_per_round, c.local_epochs, c.batch_size) == (
        "emnist",
        5,
        10,
        10,
        20,
    )
    assert (c.client_learning_rate, c.server_learning_rate, c.server_momentum) == (0.02, 1.0, 0.9)
    assert [
        (s.name, s.optimizer, s.learning_rate, c.strategy_epochs(s), c.strategy_batch_size(s))
        for s in c.strategies
    ] == [("sgd", "sgd", 0.02, 3, 20), ("adam", "adam", 0.002, 3, 20)]
    [stage] = c.resolved_stages()
    assert (stage.server_optimizer, stage.client_optimizer, stage.local_steps) == (
        "sgd",
        "sgd",
        None,
    )
    assert c.num_eval_clients == 50 and c.split_seed == 42


def test_toml_roundtrip(tmp_path):
    c = ExperimentConfig(
        dataset="synthetic", rounds=7, strategies=[StrategyConfig("fast", "sgd", 0.1, epochs=2)]
    )
    p = tmp_path / "c.toml"
    p.write_text(c.to_toml())
    assert ExperimentConfig.from_toml(p) == c


def test_toml_errors_name_the_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("rounds = 3\nroundz = 4\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['roundz'\]"):
        ExperimentConfig.from_toml(p)
    p.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ExperimentConfig.from_toml(p)
    with pytest.raises(ConfigError, match="does not exist"):
        ExperimentConfig.from_toml(tmp_path / "missing.toml")


def test_toml_with_a_byte_order_mark(tmp_path):
    p = tmp_path / "c.toml"
    p.write_bytes(b"\xef\xbb\xbfrounds = 3\n")  # what Windows Notepad writes
    assert ExperimentConfig.from_toml(p).rounds == 3


def test_a_sweep_file_is_not_a_run_config(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("rounds = 3\n[sweep]\ngrid = { seed = [1, 2] }\n")
    with pytest.raises(ConfigError, match=r"is a sweep file \(it has a \[sweep\] table\)"):
        ExperimentConfig.from_toml(p)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rounds=-1), "rounds must be a non-negative integer"),
        (dict(clients_per_round=0), "clients_per_round must be a positive integer"),
        (dict(dataset="mnist"), "dataset 'mnist' is not a data source of task 'emnist'"),
        (dict(server_momentum=1.0), r"server_momentum must be a number in \[0, 1\)"),
        (dict(client_learning_rate=float("inf")), "client_learning_rate must be a finite"),
        (dict(seed="1"), "seed must be an integer, got str '1'"),
        (dict(only_digits="no"), "only_digits must be true or false"),
        (dict(stages=[{"roundz": 3}]), r"stages\[0\]: unknown key\(s\) \['roundz'\]"),
        (dict(stages=[{"server_optimizer": "rmsprop"}]), "stage 'stage1' server_optimizer"),
        (dict(strategies=[StrategyConfig("baseline_metrics")]), "reserved"),
        (dict(strategies=[StrategyConfig("a"), StrategyConfig("a")]), "unique"),
        (dict(strategies=[StrategyConfig("a", "rmsprop")]), "optimizer 'rmsprop'"),
        (dict(dataset="leaf"), "needs data_dir"),
        (dict(split_seed=-1), r"split_seed must be an integer in 0\.\.4294967295, got -1"),
        (dict(split_seed=2**32), r"split_seed must be an integer in 0\.\.4294967295"),
        (dict(stages=[{"name": "bad name"}]), "stage name 'bad name' must be letters"),
        (dict(stages=[{"name": ""}]), "stage name is empty"),
        (dict(stages=[{"name": 3}]), "stage name 3 must be"),
        (dict(strategies=[StrategyConfig("a b")]), "strategy name 'a b' must be letters"),
        (dict(strategies=[StrategyConfig("")]), "strategy name is empty"),
        (dict(dataset="synthetic", synthetic_clients=1), "at least 2.*--synthetic-clients 2"),
        (dict(dataset="synthetic", synthetic_clients=10, num_p13n_clients=10), "has 10 clients"),
    ],
)
def test_invalid_values(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**change).validate()


def test_seed_limits():
    ExperimentConfig(split_seed=0).validate()
    ExperimentConfig(split_seed=2**32 - 1).validate()
    ExperimentConfig(seed=-1).validate()  # derive_seed hashes it: any integer is a seed


def test_stage_cli_form():
    parse = StageConfig.parse
    assert parse("reptile:rounds=20,local-steps=10", ExperimentConfig()) == {
        "name": "reptile",
        "rounds": 20,
        "local_steps": 10,
    }
    assert parse("rounds=2", ExperimentConfig()) == {"rounds": 2}
    for spec, message in [
        ("a:rounds=1,rounds=2", "stage 'a' sets rounds twice"),
        ("rounds=1,rounds=2", "the stage sets rounds twice"),
        ("", "is empty"),
        ("a:", "sets nothing"),
        (":rounds=1", "stage name is empty"),
        ("bad name:rounds=1", "stage name 'bad name' must be"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse(spec, ExperimentConfig())


def test_strategy_cli_form():
    assert StrategyConfig.parse("adam:0.002") == StrategyConfig("adam", "adam", 0.002)
    assert StrategyConfig.parse("fast=sgd:0.1") == StrategyConfig("fast", "sgd", 0.1)
    # the rate may be left out: the optimizer's default (issue 17)
    assert StrategyConfig.parse("sgd") == StrategyConfig("sgd", "sgd", 0.02)
    assert StrategyConfig.parse("slow=adam").learning_rate == 0.002
    for spec in ("", "fast=", ":0.1"):
        with pytest.raises(ConfigError, match="expected"):
            StrategyConfig.parse(spec)
    with pytest.raises(ConfigError, match="not a number"):
        StrategyConfig.parse("sgd:fast")


def test_split_sizes():
    assert resolve_split(ExperimentConfig(), 3400) == (2500, 900)
    # the 286-writer sample keeps TFF's proportions: round(286 * 2500 / 3400) = 210
    assert resolve_split(ExperimentConfig(), 286) == (210, 76)
    assert resolve_split(ExperimentConfig(num_train_clients=220), 286) == (220, 66)
    assert resolve_split(ExperimentConfig(num_p13n_clients=50), 286) == (236, 50)
    with pytest.raises(ConfigError, match="has 286 clients"):
        resolve_split(ExperimentConfig(num_train_clients=2500, num_p13n_clients=900), 286)


def test_settings_that_need_the_client_count_are_checked_against_it_once():
    # 286 clients split 210 FedAvg / 76 personalization (round(286 * 2500 / 3400) = 210)
    fits = ExperimentConfig(clients_per_round=210, num_val_clients=75)
    assert fits.validate_against(286) == (210, 76)
    too_many = "clients_per_round is 211 but there are only 210 FedAvg clients; choose at most 210"
    with pytest.raises(ConfigError, match=f"^{too_many} "):
        ExperimentConfig(clients_per_round=211).validate_against(286)
    staged = ExperimentConfig(stages=[{"rounds": 1}, {"rounds": 1, "clients_per_round": 211}])
    with pytest.raises(ConfigError, match=f"^{too_many} "):
        staged.validate_against(286)
    with pytest.raises(
        ConfigError, match="^num_val_clients is 76 but there are only 76 personalization clients"
    ):
        ExperimentConfig(num_val_clients=76).validate_against(286)
    with pytest.raises(ConfigError, match="has 286 clients"):  # the split itself first
        ExperimentConfig(num_train_clients=2500, clients_per_round=2600).validate_against(286)


def test_strategy_kinds_and_their_options_from_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(
        '[[strategies]]\nname = "ditto"\nkind = "proximal"\nlam = 0.5\n'
        '[[strategies]]\nname = "head"\nkind = "head_only"\nhead = "fc2"\nepochs = 2\n'
    )
    c = ExperimentConfig.from_toml(p)
    c.validate()
    ditto, head = c.strategies
    assert (ditto.kind, ditto.options) == ("proximal", {"lam": 0.5})
    assert (head.kind, head.options, c.strategy_epochs(head)) == ("head_only", {"head": "fc2"}, 2)
    assert c.strategy_builder(ditto).lam == 0.5
    assert ExperimentConfig.from_toml(p).to_dict()["strategies"][0]["lam"] == 0.5
    p.write_text('[[strategies]]\nname = "x"\nkind = "proximal"\nlamda = 0.5\n')
    with pytest.raises(ConfigError, match="strategy 'x': .*lamda"):
        ExperimentConfig.from_toml(p).validate()
    p.write_text('[[strategies]]\nname = "x"\nkind = "nosuchmodule:fn"\n')
    with pytest.raises(ConfigError, match="strategy 'x'"):
        ExperimentConfig.from_toml(p).validate()
