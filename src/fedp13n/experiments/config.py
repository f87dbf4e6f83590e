"""The configuration of a personalization experiment, with TFF's example as the defaults.

Defaults reproduce TFF's ``emnist_p13n_main.py`` (Jiang et al. 2019 setup): EMNIST-62,
clients shuffled with seed 42 and split 2,500 / 900, weighted FedAvg (client SGD 0.02,
server SGD 1.0 momentum 0.9, 10 local epochs, batch 20, 10 clients per round, 5 rounds),
then ``sgd`` (lr 0.02) and ``adam`` (lr 0.002) fine-tuning, batch 20, 3 epochs, evaluated
every epoch, on 50 sampled personalization clients.

A config can come from a TOML file (same keys as the fields below, strategies as an
array of tables) and be overridden from the command line; the resolved config is saved
with the results so every run can be repeated.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

DATASETS = ("emnist", "emnist-sqlite", "leaf", "synthetic")
MODELS = ("conv_dropout", "fedavg_cnn")
OPTIMIZERS = ("sgd", "adam")
EXECUTORS = ("auto", "in-process", "processes", "ray")

#: TFF's split of the full data: 2,500 training and 900 personalization clients of 3,400.
FULL_TRAIN_CLIENTS = 2500
FULL_P13N_CLIENTS = 900


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the fix."""


@dataclass
class StrategyConfig:
    """One fine-tuning strategy: ``name`` is the key in ``personalize_fn_dict``."""

    name: str
    optimizer: str = "sgd"
    learning_rate: float = 0.02
    batch_size: int = 20
    epochs: int = 3
    epochs_per_eval: int = 1

    def validate(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(
                f"strategy name {self.name!r} must be letters, digits, '_' or '-' (e.g. 'sgd')."
            )
        if self.name in ("baseline_metrics", "client_ids", "seed"):
            raise ConfigError(
                f"strategy name {self.name!r} is reserved (the personalization result uses it); "
                "choose another name."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"strategy {self.name!r}: optimizer {self.optimizer!r} is not one of {OPTIMIZERS}."
            )
        _positive(f"strategy {self.name!r} learning_rate", self.learning_rate)
        for key in ("batch_size", "epochs", "epochs_per_eval"):
            _positive_int(f"strategy {self.name!r} {key}", getattr(self, key))

    @classmethod
    def parse(cls, spec: str) -> StrategyConfig:
        """Parse the CLI form ``[NAME=]OPTIMIZER:LR`` (e.g. ``sgd:0.02``, ``fast=sgd:0.1``)."""
        name, _, rest = spec.rpartition("=")
        opt, sep, lr = rest.partition(":")
        if not sep:
            raise ConfigError(
                f"--strategy {spec!r}: expected [NAME=]OPTIMIZER:LEARNING_RATE, e.g. 'adam:0.002'."
            )
        try:
            rate = float(lr)
        except ValueError:
            raise ConfigError(
                f"--strategy {spec!r}: learning rate {lr!r} is not a number."
            ) from None
        return cls(name=name or opt, optimizer=opt, learning_rate=rate)


def _default_strategies() -> list[StrategyConfig]:
    return [
        StrategyConfig("sgd", "sgd", 0.02),
        StrategyConfig("adam", "adam", 0.002),
    ]


@dataclass
class ExperimentConfig:
    # -- data ---------------------------------------------------------------------------
    dataset: str = "emnist"
    data_dir: str | None = None
    cache_dir: str | None = None
    only_digits: bool = False
    #: Number of writers of the synthetic dataset (ignored for real data).
    synthetic_clients: int = 160
    #: Client split; None = TFF's 2,500 / 900 on the full data, the same proportions on less.
    num_train_clients: int | None = None
    num_p13n_clients: int | None = None
    split_seed: int = 42
    # -- model and FedAvg -------------------------------------------------------------------
    model: str = "conv_dropout"
    rounds: int = 5
    clients_per_round: int = 10
    client_learning_rate: float = 0.02
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9
    local_epochs: int = 10
    batch_size: int = 20
    #: Measure the global model on held-out data every N rounds (0 = only at the end).
    eval_every: int = 0
    #: Training clients whose test data measure the global model.
    num_global_eval_clients: int = 100
    checkpoint_every: int = 10
    # -- personalization ----------------------------------------------------------------------
    strategies: list[StrategyConfig] = field(default_factory=_default_strategies)
    num_eval_clients: int = 50
    max_num_samples: int = 100
    # -- execution ------------------------------------------------------------------------------
    seed: int = 0
    executor: str = "auto"
    workers: int | None = None
    ray_address: str | None = None

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset {self.dataset!r} is not one of {DATASETS}.")
        if self.dataset == "leaf" and not self.data_dir:
            raise ConfigError("dataset 'leaf' needs data_dir (a folder with train/ and test/).")
        if self.model not in MODELS:
            raise ConfigError(f"model {self.model!r} is not one of {MODELS}.")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor {self.executor!r} is not one of {EXECUTORS}.")
        for key in ("rounds", "eval_every", "checkpoint_every"):
            _non_negative_int(key, getattr(self, key))
        for key in (
            "clients_per_round",
            "local_epochs",
            "batch_size",
            "num_eval_clients",
            "max_num_samples",
            "synthetic_clients",
            "num_global_eval_clients",
        ):
            _positive_int(key, getattr(self, key))
        for key in ("num_train_clients", "num_p13n_clients", "workers"):
            if getattr(self, key) is not None:
                _positive_int(key, getattr(self, key))
        _positive("client_learning_rate", self.client_learning_rate)
        _positive("server_learning_rate", self.server_learning_rate)
        if not 0.0 <= self.server_momentum < 1.0:
            raise ConfigError(f"server_momentum must be in [0, 1), got {self.server_momentum}.")
        if not self.strategies:
            raise ConfigError("at least one personalization strategy is needed.")
        names = [s.name for s in self.strategies]
        if len(set(names)) != len(names):
            raise ConfigError(f"strategy names must be unique, got {names}.")
        for s in self.strategies:
            s.validate()

    # -- (de)serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # TOML has no null: leave unset optional values out (they mean "default").
        return {k: v for k, v in d.items() if v is not None}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {unknown}; valid keys are {sorted(known)}."
            )
        data = dict(data)
        if "strategies" in data:
            strategies = []
            for i, s in enumerate(data["strategies"]):
                if not isinstance(s, dict) or "name" not in s:
                    raise ConfigError(
                        f"{source}: strategies[{i}] must be a table with at least 'name' "
                        "(e.g. [[strategies]] name = 'sgd' optimizer = 'sgd' learning_rate = 0.02)."
                    )
                try:
                    strategies.append(StrategyConfig(**s))
                except TypeError as e:
                    raise ConfigError(f"{source}: strategies[{i}]: {e}") from None
            data["strategies"] = strategies
        return cls(**data)

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist.") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


def resolve_split(config: ExperimentConfig, num_clients: int) -> tuple[int, int]:
    """Split sizes for a dataset of ``num_clients`` clients.

    Explicit sizes are used as given (too large is an error naming both numbers). Unset
    sizes keep TFF's 2,500 / 900 when the data has all 3,400 clients, else the same
    proportions (so the 286-writer sample splits 210 / 76).
    """
    n_train, n_p13n = config.num_train_clients, config.num_p13n_clients
    total = FULL_TRAIN_CLIENTS + FULL_P13N_CLIENTS
    if n_train is None and n_p13n is None:
        if num_clients >= total:
            n_train, n_p13n = FULL_TRAIN_CLIENTS, FULL_P13N_CLIENTS
        else:
            n_train = max(1, round(num_clients * FULL_TRAIN_CLIENTS / total))
            n_p13n = num_clients - n_train
    elif n_train is None:
        n_train = num_clients - n_p13n
    elif n_p13n is None:
        n_p13n = num_clients - n_train
    if n_train < 1 or n_p13n < 1 or n_train + n_p13n > num_clients:
        raise ConfigError(
            f"the dataset has {num_clients} clients, which cannot be split into "
            f"{n_train} training and {n_p13n} personalization clients; choose sizes that add up "
            f"to at most {num_clients} (e.g. --num-train-clients {round(num_clients * 0.735)})."
        )
    return n_train, n_p13n


def _positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}.")


def _non_negative_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{key} must be a non-negative integer, got {value!r}.")


def _positive(key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}.")
