"""The configuration of a personalization experiment: every setting defined once, here.

Each field below carries its default, type, help text and choices; the command-line
options of ``fedp13n run``, the TOML keys, ``--help`` and ``fedp13n run --print-config``
are all generated from these fields, so adding a setting means adding one field.

Defaults reproduce TFF's ``emnist_p13n_main.py`` (Jiang et al. 2019 setup): EMNIST-62,
clients shuffled with seed 42 and split 2,500 / 900, weighted FedAvg (client SGD 0.02,
server SGD 1.0 momentum 0.9, 10 local epochs, batch 20, 10 clients per round, 5 rounds),
then ``sgd`` (lr 0.02) and ``adam`` (lr 0.002) fine-tuning, batch 20, 3 epochs, evaluated
every epoch, on 50 sampled personalization clients.

Training is a list of **stages** run one after another, each a FedAvg-style process with
its own local work and server optimizer (e.g. FedAvg with server momentum, then a
Reptile stage of K local steps with server Adam: Personalized FedAvg). Without
``[[stages]]`` the top-level training settings form the single stage; with them, every
key a stage leaves out takes the top-level value.

Precedence: these defaults < ``--config FILE`` (TOML) < command-line options. The
resolved configuration is saved with the results, so every run can be repeated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import tomli_w

from fedp13n.algorithms import per_fedavg, pfedme
from fedp13n.algorithms.apfl import DEFAULT_APFL_ALPHA
from fedp13n.algorithms.ditto import DEFAULT_DITTO_LAMBDA
from fedp13n.algorithms.fedper import (
    BATCH_NORM_LOCAL,
    METHOD_SETTINGS,
    METHODS,
    keeps_state,
    parse_personal_layers,
    state_kind,
)
from fedp13n.algorithms.fedrep import DEFAULT_HEAD_EPOCHS
from fedp13n.data.pipeline import DEFAULT_CLIENT_PIPELINE, PIPELINES
from fedp13n.data.split import MIN_CLIENTS, split_sizes
from fedp13n.execution.base import EXECUTOR_KINDS
from fedp13n.models.registry import BATCH_NORM_MODELS
from fedp13n.rundir.layout import RESERVED_KEYS
from fedp13n.tasks.registry import DEFAULT_TASK, TASK_NAMES, get_task, models_text, sources_text
from fedp13n.utils.checks import (
    check_fraction,
    check_non_negative_int,
    check_non_negative_number,
    check_positive_int,
    check_positive_number,
)
from fedp13n.utils.imports import is_import_path, resolve_import_path
from fedp13n.utils.optimizers import DEFAULT_LEARNING_RATES, OPTIMIZERS


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the fix."""


#: The largest split_seed: the legacy ``numpy.random.RandomState`` of TFF's split takes 32 bits.
MAX_SPLIT_SEED = 2**32 - 1
#: The largest ``seed`` (a TOML integer is 64-bit signed: config.toml must hold it).
MAX_SEED = 2**63 - 1
#: The largest learning rate: torch's optimizers apply one as a float32 factor.
MAX_RATE = 3.4028234663852886e38


# -- how a field describes itself ---------------------------------------------------------------
PANELS = ("Data", "Training", "Personalization", "Execution")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    panel: str,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    negative_flag: str | None = None,
    default_text: str | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field with its help, CLI panel and choices (what the CLI is generated from).

    ``flag`` overrides the option name (default ``--`` + the key with dashes);
    ``default_text`` is what ``--help`` shows as the default when it is not a plain value.
    """
    assert panel in PANELS, panel
    meta = {
        "help": help,
        "panel": panel,
        "choices": choices,
        "flag": flag,
        "negative_flag": negative_flag,
        "default_text": default_text,
    }
    return field(default=default, default_factory=default_factory, metadata=meta)


def field_flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def base_type(f: dataclasses.Field) -> Any:
    """``int`` for ``int | None`` and so on (fields hold one plain type, optionally None)."""
    tp = f.type
    if isinstance(tp, str):  # postponed annotations: evaluate in this module
        tp = eval(tp, globals())  # noqa: S307 (our own annotations, never user input)
    if get_origin(tp) is not None and type(None) in get_args(tp):
        tp = next(a for a in get_args(tp) if a is not type(None))
    return tp


# -- training: one stage's settings -------------------------------------------------------------
@dataclass
class TrainingSettings:
    """What one training stage does each round. The top level of a config holds these as
    the defaults of every stage."""

    rounds: int = setting(5, help="FedAvg rounds (of each stage).", panel="Training")
    clients_per_round: int = setting(10, help="Clients sampled per round.", panel="Training")
    local_epochs: int = setting(10, help="Local epochs per client and round.", panel="Training")
    local_steps: int | None = setting(
        None,
        help="At most this many local steps (batches) per round (Reptile's K); "
        "unset = all the steps of local_epochs.",
        panel="Training",
        default_text="all",
    )
    batch_size: int = setting(20, help="Local batch size.", panel="Training")
    client_pipeline: str = setting(
        DEFAULT_CLIENT_PIPELINE,
        help="How local batches are cut: 'tff' (TFF's repeat(E).shuffle(1000).batch(B): "
        "batches run across epoch boundaries) or 'epochs' (a shuffled pass per epoch).",
        panel="Training",
        choices=PIPELINES,
    )
    client_optimizer: str = setting(
        "sgd", help="Client optimizer.", panel="Training", choices=OPTIMIZERS
    )
    client_learning_rate: float = setting(
        0.02, help="Client learning rate.", panel="Training", flag="--client-lr"
    )
    client_momentum: float = setting(0.0, help="Client SGD momentum.", panel="Training")
    server_optimizer: str = setting(
        "sgd", help="Server optimizer (applied to the averaged delta).", panel="Training",
        choices=OPTIMIZERS,
    )  # fmt: skip
    server_learning_rate: float = setting(
        1.0, help="Server learning rate.", panel="Training", flag="--server-lr"
    )
    server_momentum: float = setting(0.9, help="Server SGD momentum.", panel="Training")
    server_beta1: float = setting(0.9, help="Server Adam beta1.", panel="Training")
    server_beta2: float = setting(0.999, help="Server Adam beta2.", panel="Training")
    server_epsilon: float = setting(1e-8, help="Server Adam epsilon.", panel="Training")
    proximal_mu: float = setting(
        0.0,
        help="FedProx's mu (Li et al. 2020): each client's loss + mu/2 ||w - w_global||^2; "
        "0 = FedAvg.",
        panel="Training",
    )
    method: str = setting(
        "fedavg",
        help="What the stage trains: 'fedavg' (one global model), 'fedper' (FedPer: a "
        "shared body averaged by FedAvg, a personal head per client kept in the run's "
        "client_state/) or 'fedrep' (FedRep: the same, the head trained alone before the "
        "body each round), 'lg_fedavg' (LG-FedAvg: a personal body per client, the head "
        "averaged) or 'ditto' (Ditto: FedAvg's global model and a whole personal model "
        "per client, pulled to it by ditto_lambda) or 'scaffold' (SCAFFOLD: local steps "
        "corrected by control variates, c_i per client and c on the server) or "
        "'per_fedavg' (Per-FedAvg: a meta-model, personalized by one step of alpha) or "
        "'pfedme' (pFedMe: a personalized model theta per client, w_local averaged) or "
        "'fedbn' (FedBN: batch-norm parameters and statistics local; needs a model with "
        "batch norms, e.g. 'conv_bn') "
        "or 'apfl' (APFL: a personal model and a learned mix alpha v + (1-alpha) w per "
        "client).",
        panel="Training",
        choices=tuple(METHODS),
    )
    personal_layers: str | None = setting(
        None,
        help="The personal layers of FedPer, FedRep and LG-FedAvg: module or parameter "
        "names, comma-separated (e.g. 'fc1,fc2'; in TOML also a list ['fc1', 'fc2']); "
        "unset = the last layer with parameters (LG-FedAvg: every layer but the last).",
        panel="Training",
        default_text="the last layer (LG-FedAvg: all but it)",
    )
    head_epochs: int | None = setting(
        None,
        help="FedRep's local epochs of the head alone (body frozen) before the body's "
        "local epochs (head frozen), each round; unset = the paper's 10.",
        panel="Training",
        default_text=str(DEFAULT_HEAD_EPOCHS),
    )

    ditto_lambda: float | None = setting(
        None,
        help="Ditto's lambda: each personal model's loss + lambda/2 ||v - w_global||^2; "
        "unset = 1.0 (FL-bench's default; the paper tunes it).",
        panel="Training",
        default_text=str(DEFAULT_DITTO_LAMBDA),
    )

    per_fedavg_variant: str | None = setting(
        None,
        help="Per-FedAvg's variant: 'fo' (first order) or 'hf' (Hessian-free, a "
        "finite-difference Hessian-vector product); unset = 'fo'. Its beta is the client "
        "learning rate.",
        panel="Training",
        default_text=per_fedavg.DEFAULT_VARIANT,
    )
    per_fedavg_alpha: float | None = setting(
        None,
        help="Per-FedAvg's inner learning rate alpha (of its meta steps and of the one "
        "personalization step before evaluation); unset = 0.01 (FL-bench's).",
        panel="Training",
        default_text=str(per_fedavg.DEFAULT_ALPHA),
    )
    pfedme_lambda: float | None = setting(
        None,
        help="pFedMe's lambda: the pull lambda/2 ||theta - w_local||^2 of the personalized "
        "model; unset = 15 (FL-bench's).",
        panel="Training",
        default_text=str(pfedme.DEFAULT_LAMBDA),
    )
    pfedme_k: int | None = setting(
        None,
        help="pFedMe's K: inner steps solving for theta per local step; unset = 5.",
        panel="Training",
        default_text=str(pfedme.DEFAULT_K),
    )
    pfedme_personal_lr: float | None = setting(
        None,
        help="pFedMe's personal learning rate of the K inner steps; unset = 0.01 "
        "(FL-bench's). Its eta is the client learning rate.",
        panel="Training",
        default_text=str(pfedme.DEFAULT_PERSONAL_LR),
    )
    pfedme_beta: float | None = setting(
        None,
        help="pFedMe's beta: the server moves w to (1 - beta) w + beta mean(w_local); "
        "unset = 1.0 (plain averaging).",
        panel="Training",
        default_text=str(pfedme.DEFAULT_BETA),
    )
    apfl_alpha: float | None = setting(
        None,
        help="APFL's initial mixing weight alpha in [0, 1] (personal model alpha v + "
        "(1 - alpha) w); unset = 0.5 (FL-bench's default).",
        panel="Training",
        default_text=str(DEFAULT_APFL_ALPHA),
    )
    apfl_adaptive: bool = setting(
        True,
        help="APFL learns each client's alpha by gradient descent (the paper's adaptive "
        "alpha); off = alpha stays apfl_alpha.",
        panel="Training",
        negative_flag="--fixed-apfl-alpha",
    )

    def __post_init__(self) -> None:
        # TOML's list form ['fc1', 'fc2'] of personal_layers: the one string 'fc1,fc2'
        self.personal_layers = _personal_layers_text(self.personal_layers)

    @property
    def keeps_state(self) -> bool:
        """Whether the stage's method keeps tensors per client (a client-state store)."""
        return keeps_state(self.method)

    def validate_training(self, where: str) -> None:
        _check_values(self, TRAINING_KEYS, where)
        if self.per_fedavg_variant is not None:
            variants = per_fedavg.VARIANTS
            _check_choice(f"{where}per_fedavg_variant", self.per_fedavg_variant, variants)
        try:
            parse_personal_layers(self.personal_layers)
        except ValueError as e:
            raise ConfigError(f"{where}{e}") from None


TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(TrainingSettings))


def _personal_layers_text(value: Any) -> Any:
    """``personal_layers`` given as a list of names (TOML's ``['fc2', 'fc1']``) as the one
    string the setting holds, ``'fc2,fc1'`` (what ``--personal-layers fc2,fc1`` gives); any
    other value as it is. A ConfigError for a list that is not of names."""
    if not isinstance(value, list | tuple):
        return value
    if value and all(isinstance(n, str) and n.strip() and "," not in n for n in value):
        return ",".join(n.strip() for n in value)
    raise ConfigError(
        "personal_layers must name layers or parameters of the model: a string 'fc1,fc2' or "
        f"a list of names ['fc1', 'fc2'], got {value!r}."
    )


#: The methods whose personal parameters ``personal_layers`` names.
PERSONAL_LAYERS_METHODS = ("fedper", "fedrep", "lg_fedavg")


#: What a training stage runs: weighted FedAvg (Reptile with ``local_steps``, server Adam,
#: ...) or centralized SGD on the pooled examples of every FedAvg client
#: (:mod:`fedp13n.algorithms.centralized`: ``clients_per_round``, ``client_pipeline`` and
#: the server settings do not apply; a round is ``local_epochs`` shuffled passes, or at
#: most ``local_steps`` batches, with the client optimizer, which keeps its state).
STAGE_KINDS = ("fedavg", "centralized")


@dataclass
class StageConfig(TrainingSettings):
    """One training stage: a name, what it runs and the training settings it runs with.

    ``kind`` is one of :data:`STAGE_KINDS`; unset, a stage named ``centralized`` is
    centralized and any other FedAvg (so ``--stage centralized:rounds=5`` and
    ``[[stages]] name = "centralized"`` need no more)."""

    name: str = "fedavg"
    kind: str | None = None

    @property
    def resolved_kind(self) -> str:
        """:data:`STAGE_KINDS` entry this stage runs (``kind``, else from the name)."""
        if self.kind is not None:
            return self.kind
        return "centralized" if self.name == "centralized" else "fedavg"

    @classmethod
    def parse(cls, spec: str, defaults: TrainingSettings) -> dict[str, Any]:
        """The CLI form ``[NAME:]KEY=VALUE,KEY=VALUE`` (e.g. ``reptile:rounds=20,local_steps=10,
        server_optimizer=adam,server_learning_rate=0.01``) as a stage table."""
        form = "[NAME:]KEY=VALUE,... (e.g. 'reptile:rounds=20,local_steps=10')"
        if not spec.strip():
            raise ConfigError(f"--stage {spec!r} is empty; give {form}.")
        name, sep, rest = spec.partition(":")
        table: dict[str, Any] = {}
        if sep and "=" not in name:
            table["name"] = name
        else:
            rest = spec
        types = {f.name: base_type(f) for f in dataclasses.fields(cls)}
        items = [s for s in (s.strip() for s in rest.split(",")) if s]
        if not items:
            raise ConfigError(f"--stage {spec!r} sets nothing; give {form}.")
        for item in items:
            key, eq, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or key not in types:
                raise ConfigError(
                    f"--stage {spec!r}: {item!r} is not KEY=VALUE with KEY one of {sorted(types)}."
                )
            if key in table:
                stage = f"stage {table['name']!r}" if "name" in table else "the stage"
                raise ConfigError(
                    f"--stage {spec!r}: {stage} sets {key} twice; give each key once."
                )
            table[key] = _parse_value(f"--stage {key}", text.strip(), types[key])
        if "name" in table:
            check_name("stage", table["name"], "reptile", where=f"--stage {spec!r}: ")
        return table


def _default_strategies() -> list[StrategyConfig]:
    """TFF's ``sgd`` and ``adam`` fine-tuning, each at its optimizer's default rate."""
    return [StrategyConfig(name, name) for name in DEFAULT_LEARNING_RATES]


#: Strategy settings that are not hyperparameters: ``tune`` cannot vary them.
UNTUNABLE_STRATEGY_KEYS = ("name", "kind", "tune", "select_epoch", "options")
#: Strategy fields ``tune`` may vary (with the kind's own parameters).
TUNABLE_STRATEGY_FIELDS = ("optimizer", "learning_rate", "batch_size", "epochs", "epochs_per_eval")


@dataclass
class StrategyConfig:
    """One personalization strategy: ``name`` is its key in ``personalize_fn_dict``.

    ``kind`` is a strategy of :mod:`fedp13n.personalization.registry` (``finetune``,
    ``head_only``, ``proximal``, ``interpolation``, ``early_stopping``, ``adam_recommended``,
    ``bias_only``) or a user's ``"module:function"``; ``options`` holds the kind's own
    parameters (in TOML: any other key of the table, e.g. ``lam = 0.1``).
    ``epochs`` / ``batch_size`` left unset take the experiment's ``p13n_epochs`` /
    ``p13n_batch_size``. ``optimizer`` / ``learning_rate`` left unset take the kind's
    (``adam_recommended``: adam at 5e-4), else the optimizer's default rate
    (:data:`fedp13n.utils.optimizers.DEFAULT_LEARNING_RATES`: sgd 0.02, adam 0.002),
    filled in here so the config, the log and the saved ``config.toml`` show the rate that
    runs; they stay unset while ``tune`` varies them, and for a ``"module:function"`` kind
    (its factory's own defaults apply).
    """

    name: str
    optimizer: str | None = field(default=None, metadata={"choices": OPTIMIZERS})
    learning_rate: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    epochs_per_eval: int = 1
    kind: str = "finetune"
    #: Parameters to tune on the validation clients: name -> candidate values.
    tune: dict = field(default_factory=dict)
    #: Also choose the evaluation epoch on the validation clients (report only that one).
    select_epoch: bool = False
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not isinstance(self.tune, dict):
            return  # a wrong type: refused by the type checks that follow construction
        from fedp13n.personalization.registry import default_learning_rate, default_optimizer

        tuned = set(self.tune)
        if "kind" in tuned:  # refused by validate()
            return
        if self.optimizer is None and "optimizer" not in tuned:
            self.optimizer = default_optimizer(self.kind)
        if (
            self.learning_rate is None
            and not tuned & {"optimizer", "learning_rate"}
            and (self.optimizer is None or self.optimizer in OPTIMIZERS)
        ):
            self.learning_rate = default_learning_rate(self.kind, self.optimizer)

    @property
    def tuned(self) -> bool:
        return bool(self.tune) or self.select_epoch

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the ``tune`` candidates (one empty dict when none)."""
        import itertools

        keys = list(self.tune)
        return [dict(zip(keys, values, strict=True)) for values in
                itertools.product(*(self.tune[k] for k in keys))]  # fmt: skip

    def with_params(self, params: dict[str, Any]) -> StrategyConfig:
        """This strategy with some parameters (fields or options) set, untuned."""
        fields = {f.name for f in dataclasses.fields(self)} - {"options", "tune"}
        changes = {k: v for k, v in params.items() if k in fields}
        options = {**self.options, **{k: v for k, v in params.items() if k not in fields}}
        return dataclasses.replace(self, **changes, options=options, tune={}, select_epoch=False)

    def builder_params(self, epochs: int, batch_size: int) -> dict[str, Any]:
        """The keyword parameters of ``build_strategy(kind, ...)``: the strategy keys this
        config holds as fields (:data:`TUNABLE_STRATEGY_FIELDS`, the kind's own keys of the
        same names), those unset left out (the kind's class applies its defaults), then
        ``options``."""
        fields = {k: getattr(self, k) for k in TUNABLE_STRATEGY_FIELDS}
        fields.update(epochs=epochs, batch_size=batch_size)
        return {**{k: v for k, v in fields.items() if v is not None}, **self.options}

    def validate(self) -> None:
        check_name("strategy", self.name, "sgd")
        if self.name in RESERVED_KEYS:
            raise ConfigError(
                f"strategy name {self.name!r} is reserved (the personalization result uses it); "
                "choose another name."
            )
        keys = ("optimizer", "learning_rate", "batch_size", "epochs", "epochs_per_eval")
        _check_values(self, keys, f"strategy {self.name!r} ")
        self._check_tunable()
        for key, values in self.tune.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"strategy {self.name!r} tune.{key} must be a non-empty list of candidate "
                    f"values, got {values!r} (e.g. tune = {{ learning_rate = [0.01, 0.02] }})."
                )

    def _check_tunable(self) -> None:
        """``tune`` varies hyperparameters only: not the name, kind, ... (a one-line error
        listing the tunable ones)."""
        untunable = [k for k in self.tune if k in UNTUNABLE_STRATEGY_KEYS]
        if not untunable:
            return
        from fedp13n.personalization.registry import strategy_parameters

        try:
            own = strategy_parameters(self.kind)
        except (ValueError, TypeError, ImportError):  # a bad kind: its own error follows
            own = []
        tunable = list(TUNABLE_STRATEGY_FIELDS)
        tunable += [k for k in own or [] if k not in tunable]
        if own is None:
            tunable.append("any parameter of its factory")
        raise ConfigError(
            f"strategy {self.name!r}: tune.{untunable[0]} is not a tunable hyperparameter; "
            f"tune any of {', '.join(tunable)} "
            "(e.g. tune = { learning_rate = [0.01, 0.02] })."
        )

    @classmethod
    def parse(cls, spec: str) -> StrategyConfig:
        """Parse the CLI form ``[NAME=]OPTIMIZER[:LR]`` (e.g. ``sgd:0.02``, ``fast=sgd:0.1``;
        ``adam``: Adam at its default rate, 0.002)."""
        name, eq, rest = spec.rpartition("=")
        if eq and not name.strip():
            raise ConfigError(
                f"--strategy {spec!r}: the name before '=' is empty; give one (e.g. "
                f"'fast={rest}') or leave out the '='."
            )
        opt, sep, lr = rest.partition(":")
        if not opt.strip():
            raise ConfigError(
                f"--strategy {spec!r}: expected [NAME=]OPTIMIZER[:LEARNING_RATE], e.g. "
                "'adam:0.002' or 'adam' (its default rate)."
            )
        rate = None
        if sep:
            try:
                rate = float(lr)
            except ValueError:
                raise ConfigError(
                    f"--strategy {spec!r}: learning rate {lr!r} is not a number."
                ) from None
        return cls(name=name or opt, optimizer=opt, learning_rate=rate)


# -- the experiment -------------------------------------------------------------------------------
@dataclass
class ExperimentConfig(TrainingSettings):
    # -- data ---------------------------------------------------------------------------------
    task: str = setting(
        DEFAULT_TASK,
        help="The task: its data sources, models, loss and accuracy (fedp13n.tasks.registry).",
        panel="Data",
        choices=TASK_NAMES,
    )
    dataset: str | None = setting(
        None,
        help="Data source: one of the task's (" + sources_text() + ") or your own "
        "'module:function' returning (train, test) client data (ClientData or "
        "{client_id: (x, y)}).",
        panel="Data",
        default_text="the task's first",
    )
    data_dir: str | None = setting(
        None,
        help="Folder with TFF's h5 files (or LEAF's train/ and test/).",
        panel="Data",
        default_text="download",
    )
    cache_dir: str | None = setting(
        None, help="Dataset cache folder.", panel="Data", default_text="$FEDP13N_CACHE"
    )
    only_digits: bool = setting(
        False, help="EMNIST-10 instead of 62.", panel="Data", negative_flag="--all-classes"
    )
    synthetic_clients: int = setting(
        160, help="Writers of the synthetic dataset (dataset 'synthetic' only).", panel="Data"
    )
    num_train_clients: int | None = setting(
        None,
        help="FedAvg clients.",
        panel="Data",
        default_text="2500 of 3400, the same share of fewer",
    )
    num_p13n_clients: int | None = setting(
        None, help="Personalization clients.", panel="Data", default_text="the rest"
    )
    num_val_clients: int = setting(
        0,
        help="Validation clients, taken from the personalization clients: tuned strategy "
        "settings are chosen on them, and they are never reported on.",
        panel="Data",
    )
    split_seed: int = setting(42, help="Seed of the client split (TFF's 42).", panel="Data")
    # -- model and training (the TrainingSettings fields above, then) ----------------------------
    model: str | None = setting(
        None,
        help="Model: one of the task's (" + models_text() + ") or your own "
        "'module:function' returning a torch.nn.Module (called with num_classes= when it "
        "takes it).",
        panel="Training",
        default_text="the task's first",
    )
    loss: str | None = setting(
        None,
        help="Loss, 'module:function' (outputs, targets) -> batch mean.",
        panel="Training",
        default_text="the task's: cross-entropy",
    )
    num_classes: int | None = setting(
        None,
        help="Classes of a model that takes num_classes, for a dataset of your own.",
        panel="Data",
        default_text="the largest integer label + 1",
    )
    stages: list[dict] = setting(
        help="Training stages, each [NAME:]KEY=VALUE,... of the training settings (repeatable; "
        "unset keys take the top-level values). A stage named 'centralized' (or with "
        "kind=centralized) trains by SGD on the pooled examples of all FedAvg clients: "
        "clients_per_round and the server settings do not apply.",
        panel="Training",
        default_factory=list,
        flag="--stage",
        default_text="one stage of the settings above",
    )
    eval_every: int = setting(
        0,
        help="Measure the global model on held-out data every N rounds (0 = only at the end).",
        panel="Training",
    )
    num_global_eval_clients: int = setting(
        100, help="Training clients whose test data measure the global model.", panel="Training"
    )
    checkpoint_every: int = setting(
        1,
        help="Checkpoint the server state every N rounds (and at the end of every stage).",
        panel="Training",
    )
    keep_checkpoints: int = setting(
        2, help="Checkpoints kept (older ones are deleted; 0 = keep all).", panel="Training"
    )
    # -- personalization ----------------------------------------------------------------------
    strategies: list[StrategyConfig] = setting(
        help="Fine-tuning strategies, [NAME=]OPTIMIZER[:LR] (repeatable; LR defaults to the "
        "optimizer's: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_LEARNING_RATES.items()) + ").",
        panel="Personalization",
        default_factory=_default_strategies,
        flag="--strategy",
        default_text=" ".join(f"{k}:{v}" for k, v in DEFAULT_LEARNING_RATES.items()),
    )
    p13n_eval_every: int = setting(
        0,
        help="Every N rounds, also personalize the global model with the first strategy on "
        "the evaluation clients (the p13n_accuracy column; rounds to reach a target).",
        panel="Personalization",
    )
    p13n_epochs: int = setting(
        3, help="Fine-tuning epochs of strategies that set none.", panel="Personalization"
    )
    p13n_batch_size: int = setting(
        20, help="Fine-tuning batch size of strategies that set none.", panel="Personalization"
    )
    num_eval_clients: int = setting(
        50, help="Personalization clients evaluated (sampled once).", panel="Personalization"
    )
    # -- execution ------------------------------------------------------------------------------
    seed: int = setting(0, help="Experiment seed.", panel="Execution")
    executor: str = setting(
        "auto", help="Where client work runs.", panel="Execution", choices=EXECUTOR_KINDS
    )
    workers: int | None = setting(
        None, help="Worker processes.", panel="Execution", default_text="one per core"
    )
    ray_address: str | None = setting(
        None,
        help="Ray cluster address ('auto', 'ray://host:10001').",
        panel="Execution",
        default_text="a local Ray",
    )
    device: str = setting(
        "auto",
        help="Where client work, global and personalization evaluation run: auto (CUDA when "
        "present, else CPU), cpu, cuda (every GPU), cuda:N (GPU N) or mps.",
        panel="Execution",
    )
    workers_per_gpu: int = setting(
        1,
        help="Worker processes sharing each GPU, for the per-client path on CUDA (Ray: each "
        "task claims 1/N of a GPU).",
        panel="Execution",
    )
    precision: str = setting(
        "fp32",
        help="Numeric precision: fp32 (the reference numbers), bf16 (autocast with float32 "
        "master weights: GPUs and CPUs with AVX512-BF16/AMX) or tf32 (CUDA only).",
        panel="Execution",
        choices=("fp32", "bf16", "tf32"),
    )
    engine: str = setting(
        "auto",
        help="The multi-client engine (many clients in lockstep as one batched computation): "
        "auto (on for a CUDA device, off on CPU, where it does not help), on or off.",
        panel="Execution",
        choices=("auto", "on", "off"),
    )
    engine_clients: int = setting(
        64, help="Clients the engine trains at once (K).", panel="Execution"
    )
    deterministic: bool = setting(
        True,
        help="Deterministic GPU kernels (same seed, same numbers run to run); off for speed.",
        panel="Execution",
        negative_flag="--nondeterministic",
    )
    task_timeout: float | None = setting(
        None,
        help="Seconds a client task may run before its worker counts as hung and the run "
        "stops with an error naming the task.",
        panel="Execution",
        default_text="no limit",
    )
    max_retries: int = setting(
        3,
        help="Times a task whose worker died (killed by the OS) is re-run on a new worker.",
        panel="Execution",
    )
    tensorboard: str | None = setting(
        None,
        help="Also log rounds and results to TensorBoard event files in this folder.",
        panel="Execution",
        default_text="off",
    )

    # -- stages ---------------------------------------------------------------------------------
    def resolved_stages(self) -> list[StageConfig]:
        """The training stages, each with every setting filled in from the top level."""
        top = {k: getattr(self, k) for k in TRAINING_KEYS}
        if not self.stages:
            return [StageConfig(**top)]
        out = []
        for i, table in enumerate(self.stages):
            unknown = sorted(set(table) - {*TRAINING_KEYS, "name", "kind"})
            if unknown:
                raise ConfigError(
                    f"stages[{i}]: unknown key(s) {unknown}; a stage takes 'name', 'kind' and "
                    f"{list(TRAINING_KEYS)}."
                )
            try:
                out.append(StageConfig(**{**top, "name": f"stage{i + 1}", **table}))
            except ConfigError as e:
                raise ConfigError(f"stages[{i}]: {e}") from None
        return out

    def unused_settings(self) -> list[str]:
        """A note for each method setting set (not its default) that no FedAvg stage's
        method uses (``ditto_lambda`` with ``method = 'fedavg'``), and for
        ``synthetic_clients`` with another dataset, for optimizer settings the chosen
        optimizer does not read and for ``p13n_epochs`` / ``p13n_batch_size`` when every
        strategy sets its own, and for a top-level training setting that every stage
        replaces: the run says it ignores them (not an
        error: a top-level setting is every stage's default, and a sweep may vary the
        method under it); and a warning for pFedMe rates that make its local models
        diverge (:func:`fedp13n.algorithms.pfedme.unstable_note`)."""
        users = {k: (m,) for m, keys in METHOD_SETTINGS.items() for k in keys}
        users["personal_layers"] = PERSONAL_LAYERS_METHODS
        stages = self.resolved_stages()
        notes = []
        for key, methods in users.items():
            set_in = [s for s in stages if getattr(s, key) != _default(key)]
            used = [s for s in set_in if s.method in methods and s.resolved_kind == "fedavg"]
            if set_in and not used:
                runs = sorted({s.method if s.resolved_kind == "fedavg" else "centralized"
                               for s in stages})  # fmt: skip
                notes.append(
                    f"{key} = {getattr(set_in[0], key)!r} applies to method "
                    f"{' or '.join(map(repr, methods))} only: ignored (this run trains "
                    f"{', '.join(runs)})"
                )
        notes += _optimizer_notes(stages)
        for key in TRAINING_KEYS if self.stages else ():  # a default every stage replaces
            if getattr(self, key) != _default(key) and all(key in t for t in self.stages):
                notes.append(
                    f"{key} = {getattr(self, key)!r} at the top level is every stage's "
                    "default, but every stage sets its own: ignored"
                )
        for key, field_name in (("p13n_epochs", "epochs"), ("p13n_batch_size", "batch_size")):
            unset = [t for t in self.strategies
                     if getattr(t, field_name) is None and field_name not in t.tune]  # fmt: skip
            if getattr(self, key) != _default(key) and not unset:
                notes.append(
                    f"{key} = {getattr(self, key)} applies to strategies that set no "
                    f"{field_name}: ignored (every strategy here sets or tunes its own)"
                )
        for s in stages:
            if s.method == "pfedme" and s.resolved_kind == "fedavg":
                note = pfedme.unstable_note(
                    s.client_learning_rate, s.pfedme_lambda, s.pfedme_personal_lr,
                    s.client_optimizer,
                )  # fmt: skip
                if note and f"warning: {note}" not in notes:
                    notes.append(f"warning: {note}")
        if self.data_dir is not None and self.dataset == "synthetic":
            notes.append(
                f"data_dir = {self.data_dir!r} reads a data set's files: ignored (dataset "
                "'synthetic' is generated; read your files with --dataset emnist)"
            )
        if self.cache_dir is not None and (self.dataset == "synthetic" or self.own_data):
            what = "is generated" if self.dataset == "synthetic" else "loads its own data"
            notes.append(
                f"cache_dir = {self.cache_dir!r} is where fedp13n caches the data sets it "
                f"reads: ignored (dataset {self.dataset!r} {what}, uncached)"
            )
        if self.synthetic_clients != _default("synthetic_clients") and self.dataset != "synthetic":
            notes.append(
                f"synthetic_clients = {self.synthetic_clients} applies to dataset 'synthetic' "
                f"only: ignored (this run reads {self.dataset!r})"
            )
        return notes

    @property
    def total_rounds(self) -> int:
        return sum(s.rounds for s in self.resolved_stages())

    def validate(self) -> None:
        """Every setting checked on its own and against the others (a one-line
        :class:`ConfigError`); those that depend on the number of clients are checked by
        :meth:`validate_against` once the data has loaded."""
        for f in dataclasses.fields(self):
            _check_type(f, getattr(self, f.name))
        if not -MAX_SEED - 1 <= self.seed <= MAX_SEED:
            raise ConfigError(
                f"seed must be an integer in {-MAX_SEED - 1}..{MAX_SEED} (what a TOML config "
                f"holds), got {self.seed}."
            )
        if not 0 <= self.split_seed <= MAX_SPLIT_SEED:  # numpy's RandomState takes no other
            raise ConfigError(
                f"split_seed must be an integer in 0..{MAX_SPLIT_SEED}, got {self.split_seed}."
            )
        for key in FOLDER_KEYS:  # "" would silently mean "none" (or the current folder)
            if isinstance(getattr(self, key), str) and not getattr(self, key).strip():
                flag = field_flag(next(f for f in dataclasses.fields(self) if f.name == key))
                raise ConfigError(f"{key} is empty; give a folder ({flag} DIR) or leave {key} out.")
        self._validate_task()
        if self.dataset in ("leaf", "shakespeare-leaf") and not self.data_dir:
            raise ConfigError(
                f"dataset {self.dataset!r} needs data_dir (a folder with train/ and test/)."
            )
        _check_values(self, EXPERIMENT_KEYS)
        self.validate_training("")
        self._validate_stages()
        self._validate_execution()
        self._validate_strategies()
        if self.dataset == "synthetic":  # its size is known: a split that cannot fit fails now
            if self.synthetic_clients < MIN_CLIENTS:
                raise ConfigError(
                    f"synthetic_clients is {self.synthetic_clients}, too few for a split: it "
                    f"needs at least {MIN_CLIENTS} (1 training and 1 personalization client); "
                    f"set --synthetic-clients {MIN_CLIENTS} or more."
                )
            resolve_split(self, self.synthetic_clients)
        tuned = [s.name for s in self.strategies if s.tuned]
        if tuned and not self.num_val_clients:
            raise ConfigError(
                f"strategies {tuned} tune settings, which must be chosen on validation clients "
                "that are not reported on: set num_val_clients (e.g. --num-val-clients 20)."
            )

    def _validate_task(self) -> None:
        """The task, its data source and model (unset: the task's first, filled in here so
        the saved config shows what runs) and a researcher's own ``"module:function"``
        (imported now: a missing module or function fails before anything runs)."""
        try:
            spec = get_task(self.task)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.dataset = spec.datasets[0] if self.dataset is None else self.dataset
        self.model = spec.models[0] if self.model is None else self.model
        for key, known, what in (
            ("dataset", spec.datasets, "data source"),
            ("model", spec.models, "model"),
        ):
            value = getattr(self, key)
            if not is_import_path(value) and value not in known:
                raise ConfigError(
                    f"{key} {value!r} is not a {what} of task {self.task!r} "
                    f"({', '.join(known)}); or "
                    f"give your own as 'module:function' (e.g. --{key} my_task:"
                    f"{'load' if key == 'dataset' else 'build'})."
                )
        for key in ("dataset", "model", "loss"):
            value = getattr(self, key)
            if value is not None and (key == "loss" or is_import_path(value)):
                try:
                    fn = resolve_import_path(value, key)
                except ValueError as e:
                    raise ConfigError(str(e)) from None
                if not callable(fn):
                    what = type(fn).__name__
                    raise ConfigError(
                        f"{key} {value!r} is {'an' if what[0] in 'aeiou' else 'a'} {what}, not a "
                        "function; name a function of the module."
                    )
        if is_import_path(self.dataset):
            if self.data_dir is not None:
                raise ConfigError(
                    f"data_dir is where fedp13n's own data sources read files; your dataset "
                    f"{self.dataset!r} loads its own (drop data_dir / --data-dir, and have "
                    "the function read the folder)."
                )
            if self.only_digits:
                raise ConfigError(
                    "only_digits selects EMNIST's digits; it does not apply to your own "
                    f"dataset {self.dataset!r} (drop it)."
                )
        elif self.only_digits and not _takes_setting(spec.loader, "only_digits"):
            raise ConfigError(
                f"only_digits selects EMNIST's digits; task {self.task!r} has no such "
                "option (drop only_digits / --only-digits)."
            )
        elif self.num_classes is not None:
            raise ConfigError(
                f"num_classes is for a dataset of your own; task {self.task!r} sets its "
                f"data's own (drop num_classes, or give dataset as 'module:function')."
            )

    @property
    def own_data(self) -> bool:
        """Whether the data set is a researcher's own ``"module:function"``."""
        return is_import_path(self.dataset)

    def task_loss(self) -> Any:
        """The run's :class:`~fedp13n.models.objectives.TaskLoss`: the task's loss (or
        ``loss``) with its accuracy."""
        from fedp13n.tasks.build import task_loss

        try:
            return task_loss(get_task(self.task), self.loss)
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e)) from None

    def _validate_stages(self) -> None:
        stages = self.resolved_stages()
        for s in stages:
            check_name("stage", s.name, "fedavg")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique, got {names}.")
        for s in stages:
            s.validate_training(f"stage {s.name!r} " if self.stages else "")
            if s.kind is not None:
                _check_choice(f"stage {s.name!r} kind", s.kind, STAGE_KINDS)
            if s.resolved_kind == "centralized" and s.method != "fedavg":
                raise ConfigError(
                    f"stage {s.name!r} is centralized (SGD on pooled examples): method "
                    f"{s.method!r} needs clients; set method = 'fedavg' there, or another kind."
                )
            if s.method in BATCH_NORM_LOCAL:
                self._check_batch_norm_model(f"stage {s.name!r} " if self.stages else "", s)
        stateful = [s for s in stages if s.keeps_state]
        if len({(state_kind(s.method), s.personal_layers) for s in stateful}) > 1:
            kept = ", ".join(f"stage {s.name!r} keeps {_state_text(s)}" for s in stateful)
            raise ConfigError(
                f"the stages keep different personal_layers or kinds of client state: {kept}; "
                "a run keeps one client state: give every stateful stage the same layers and "
                "a method that keeps the same kind."
            )

    def _check_batch_norm_model(self, where: str, stage: StageConfig) -> None:
        """A one-line ConfigError, before any data loads, when ``stage``'s method keeps the
        batch-norm layers local (FedBN) and the task's registered model has none (one's
        own ``"module:function"`` model is checked when it is built)."""
        if is_import_path(self.model) or self.model in BATCH_NORM_MODELS:
            return
        problem = (
            f"{where}method {stage.method!r} keeps the batch-norm layers local, but model "
            f"{self.model!r} has none"
        )
        with_bn = [m for m in get_task(self.task).models if m in BATCH_NORM_MODELS]
        if with_bn:
            raise ConfigError(
                f"{problem}; use a model with batch norms: --model {with_bn[0]} "
                f"(model = {with_bn[0]!r})."
            )
        raise ConfigError(
            f"{problem}, nor has any model of task {self.task!r}; use a model with batch "
            "norms of your own (--model my_task:build), or another method (e.g. --method "
            "fedper)."
        )

    def _validate_execution(self) -> None:
        device = self.device.split(":")[0] if isinstance(self.device, str) else None
        if device not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps.")
        if self.executor == "in-process" and self.workers not in (None, 1):
            raise ConfigError(
                f"executor 'in-process' runs one task at a time, so workers must be 1, got "
                f"{self.workers}; use executor 'processes' for more workers."
            )
        if self.executor == "in-process" and self.max_retries != _default("max_retries"):
            raise ConfigError(
                f"max_retries re-runs the tasks of a worker process that died; executor "
                f"'in-process' has none, so max_retries = {self.max_retries} would be ignored: "
                "choose executor 'processes' or 'ray', or drop max_retries."
            )
        if self.ray_address is not None and self.executor != "ray":
            raise ConfigError(
                f"ray_address only applies to executor 'ray', not {self.executor!r}; add "
                "--executor ray."
            )

    def _validate_strategies(self) -> None:
        if not self.strategies:
            raise ConfigError("at least one personalization strategy is needed.")
        for i, s in enumerate(self.strategies):
            if not isinstance(s, StrategyConfig):
                raise ConfigError(
                    f"strategies[{i}] is a {type(s).__name__} ({s!r}), not a StrategyConfig: "
                    "give StrategyConfig(name='sgd', optimizer='sgd', learning_rate=0.02), or "
                    "tables through ExperimentConfig.from_dict({'strategies': [{'name': "
                    "'sgd'}]})."
                )
        names = [s.name for s in self.strategies]
        if len(set(names)) != len(names):
            raise ConfigError(f"strategy names must be unique, got {names}.")
        for s in self.strategies:
            s.validate()
            for params in s.grid():  # a bad kind or parameter fails now, naming the strategy
                self.strategy_builder(s.with_params(params))

    def validate_against(self, num_clients: int) -> tuple[int, int]:
        """The split sizes for a dataset of ``num_clients`` clients (:func:`resolve_split`)
        and the one check of the settings that depend on them, made when the data has
        loaded, before any training: every stage's ``clients_per_round`` against the
        FedAvg clients, ``num_val_clients`` against the personalization clients (a
        one-line :class:`ConfigError`). The run's later steps trust them."""
        n_train, n_p13n = resolve_split(self, num_clients)
        for stage in self.resolved_stages():
            if stage.resolved_kind == "fedavg" and stage.clients_per_round > n_train:
                raise ConfigError(
                    f"clients_per_round is {stage.clients_per_round} but there are only "
                    f"{n_train} FedAvg clients; choose at most {n_train} "
                    "(or more FedAvg clients, --num-train-clients)."
                )
        if self.num_val_clients >= n_p13n:
            raise ConfigError(
                f"num_val_clients is {self.num_val_clients} but there are only {n_p13n} "
                "personalization clients to take them from; choose fewer."
            )
        return n_train, n_p13n

    def with_absolute_paths(self) -> ExperimentConfig:
        """This config with its folders (:data:`FOLDER_KEYS`) absolute and normalised (no
        ``..``, no trailing slash, ``~`` expanded): what a run saves, so that
        ``config.toml`` (and ``--resume``) finds them wherever it is run from."""
        changes = {
            key: normalised_folder(value)
            for key in FOLDER_KEYS
            if isinstance(value := getattr(self, key), str) and value.strip()
        }
        return dataclasses.replace(self, **changes) if changes else self

    def strategy_builder(self, s: StrategyConfig) -> Any:
        """The no-argument builder of strategy ``s`` (a ``personalize_fn_dict`` value)."""
        from fedp13n.personalization.registry import build_strategy

        params = s.builder_params(self.strategy_epochs(s), self.strategy_batch_size(s))
        try:
            builder = build_strategy(s.kind, **params)
        except (ValueError, TypeError, ImportError) as e:
            raise ConfigError(f"strategy {s.name!r}: {e}") from None
        return with_loss(builder, self.task_loss())

    def differences(self, other: ExperimentConfig) -> list[str]:
        """The keys whose values differ between two configs."""
        a, b = self.to_dict(), other.to_dict()
        return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))

    def strategy_epochs(self, s: StrategyConfig) -> int:
        return s.epochs if s.epochs is not None else self.p13n_epochs

    def strategy_batch_size(self, s: StrategyConfig) -> int:
        return s.batch_size if s.batch_size is not None else self.p13n_batch_size

    # -- (de)serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["strategies"] = [
            {
                k: v
                for k, v in s.items()
                if v is not None and k != "options" and (v or k not in ("tune", "select_epoch"))
            }
            | s["options"]
            for s in d["strategies"]
        ]
        # TOML has no null: leave unset optional values out (they mean "default").
        return {k: v for k, v in d.items() if v is not None and v != []}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hint = (
                " ('max_num_samples' is now 'num_eval_clients': the clients are sampled once)"
                if "max_num_samples" in unknown
                else ""
            )
            raise ConfigError(
                f"{source}: unknown key(s) {unknown}{hint}; valid keys are {sorted(known)}."
            )
        data = dict(data)
        if "strategies" in data:
            data["strategies"] = _strategies_from_toml(data["strategies"], source)
        if "stages" in data:
            stages = data["stages"]
            if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
                raise ConfigError(
                    f"{source}: stages must be an array of tables ([[stages]] name = 'fedavg' "
                    "rounds = 50 ...)."
                )
            data["stages"] = [_stage_from_toml(s, f"{source}: stages[{i}]")
                              for i, s in enumerate(stages)]  # fmt: skip
        try:
            config = cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        for f in dataclasses.fields(config):
            _check_type(f, getattr(config, f.name), source)
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        path = Path(path)
        data = read_toml(path, "config file")
        if isinstance(data.get("sweep"), dict):
            raise ConfigError(
                f"{path} is a sweep file (it has a [sweep] table): run it with "
                f"'fedp13n sweep {path} --output-dir DIR'."
            )
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


#: The experiment's own settings (not a stage's) checked by :func:`_check_values` (the
#: task by ``get_task``).
EXPERIMENT_KEYS = tuple(
    f.name for f in dataclasses.fields(ExperimentConfig) if f.name not in (*TRAINING_KEYS, "task")
)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML file ``path`` as a dict; what keeps it from being read is a one-line
    ConfigError naming it as ``what`` (``"config file"``)."""
    try:
        # utf-8-sig: a byte-order mark (Windows Notepad writes one) is not part of the TOML
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a TOML file.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not text (not UTF-8).") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(
            f"{what} {path} cannot be read: {e.strerror or e}; give a readable TOML file."
        ) from None


#: What each kind of client state (:func:`fedp13n.algorithms.fedper.state_kind`) is, in words.
_STATE_WORDS = {
    "model": "whole model",
    "controls": "control variates",
    "batch_norm": "batch-norm layers",
    "mixture": "whole model and alpha",
}


def _state_text(stage: StageConfig) -> str:
    """What ``stage`` keeps per client, in words: "fedper's head 'fc2'", "lg_fedavg's body
    (the default: all but the last layer)", "ditto's whole model"."""
    kind = state_kind(stage.method)
    if kind not in ("head", "body"):
        return f"{stage.method}'s {_STATE_WORDS[kind]}"
    layers = stage.personal_layers
    if layers is None:
        default = "the last layer" if kind == "head" else "all but the last layer"
        return f"{stage.method}'s {kind} (the default: {default})"
    return f"{stage.method}'s {kind} " + (repr(layers) if layers else "(the whole model: '')")


def _stage_from_toml(table: dict[str, Any], where: str) -> dict[str, Any]:
    """A stage table with its ``personal_layers`` list (if any) as the one string."""
    if "personal_layers" not in table:
        return table
    try:
        return {**table, "personal_layers": _personal_layers_text(table["personal_layers"])}
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _takes_setting(path: str, name: str) -> bool:
    """Whether the function at ``path`` (a task's loader) takes the setting ``name``."""
    import inspect

    params = inspect.signature(resolve_import_path(path, "task loader")).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def with_loss(builder: Any, loss_fn: Any) -> Any:
    """A strategy builder training and evaluating with the task's ``loss_fn`` (and so its
    accuracy): a strategy class's instance gets it as its ``loss_fn``; a researcher's
    factory (``"module:function"`` kind) keeps its own loss."""
    from fedp13n.models.objectives import is_cross_entropy
    from fedp13n.personalization.strategies import FineTune

    if not isinstance(builder, FineTune) or builder.loss_fn == loss_fn:
        return builder
    if is_cross_entropy(builder.loss_fn) and is_cross_entropy(loss_fn):
        return builder  # the same loss and accuracy: the builder as built
    return dataclasses.replace(builder, loss_fn=loss_fn)


def _strategies_from_toml(items: Any, source: str) -> list[StrategyConfig]:
    if not isinstance(items, list):
        raise ConfigError(f"{source}: strategies must be an array of tables ([[strategies]]).")
    out = []
    for i, s in enumerate(items):
        if not isinstance(s, dict) or "name" not in s:
            raise ConfigError(
                f"{source}: strategies[{i}] must be a table with at least 'name' "
                "(e.g. [[strategies]] name = 'sgd' optimizer = 'sgd' learning_rate = 0.02)."
            )
        known = {f.name for f in dataclasses.fields(StrategyConfig)} - {"options"}
        fields = {k: v for k, v in s.items() if k in known}
        options = {k: v for k, v in s.items() if k not in known}  # the kind's own parameters
        strategy = StrategyConfig(**fields, options=options)
        for f in dataclasses.fields(strategy):
            _check_type(f, getattr(strategy, f.name), f"{source}: strategies[{i}]")
        out.append(strategy)
    return out


#: The settings that name folders.
FOLDER_KEYS = ("data_dir", "cache_dir", "tensorboard")


def normalised_folder(path: str) -> str:
    """``path`` absolute and normalised: ``~`` expanded, no ``.``/``..``, no trailing slash
    (``..`` taken lexically, as the shell's ``cd`` does: symlinks are kept)."""
    return os.path.abspath(os.path.expanduser(path))


def resolve_split(config: ExperimentConfig, num_clients: int) -> tuple[int, int]:
    """FedAvg / personalization split sizes for a dataset of ``num_clients`` clients
    (:func:`fedp13n.data.split.split_sizes`), with config errors naming the keys."""
    try:
        return split_sizes(num_clients, config.num_train_clients, config.num_p13n_clients)
    except ValueError as e:
        raise ConfigError(
            str(e)
            .replace("num_train=", "--num-train-clients ")
            .replace("num_personalization=", "--num-p13n-clients ")
        ) from None


# -- value checks ---------------------------------------------------------------------------
def check_name(kind: str, name: Any, example: str, where: str = "") -> None:
    """Strategy and stage names: non-empty, letters, digits, '_' or '-' (names that read
    the same in results, tables, logs and on the command line)."""
    if isinstance(name, str) and name and name.replace("_", "").replace("-", "").isalnum():
        return
    rule = f"letters, digits, '_' or '-' (e.g. {example!r})"
    if name == "":
        raise ConfigError(f"{where}{kind} name is empty; give a name of {rule}.")
    raise ConfigError(f"{where}{kind} name {name!r} must be {rule}.")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} {value!r} is not one of {choices}.")


def _check_rate(name: str, value: Any, error: type[Exception] = ConfigError) -> None:
    """A positive step size that torch's optimizers can apply (a float32 ``alpha``)."""
    check_positive_number(name, value, error)
    if value > MAX_RATE:
        raise error(
            f"{name} is {value!r}, beyond float32's largest number ({MAX_RATE:.4g}): the "
            "optimizer cannot apply it; give a rate a model can learn with (e.g. 0.02)."
        )


#: The range of each numeric setting, and of a strategy's (its type is checked by
#: :func:`_check_type`).
_RANGES: dict[str, Any] = {
    **dict.fromkeys(
        ("rounds", "eval_every", "checkpoint_every", "keep_checkpoints", "num_val_clients",
         "p13n_eval_every", "max_retries"),
        check_non_negative_int,
    ),
    **dict.fromkeys(
        ("clients_per_round", "local_epochs", "local_steps", "batch_size", "epochs",
         "epochs_per_eval", "head_epochs",
         "pfedme_k", "num_classes", "num_eval_clients", "synthetic_clients",
         "num_global_eval_clients", "p13n_epochs", "p13n_batch_size", "num_train_clients",
         "num_p13n_clients", "workers", "engine_clients", "workers_per_gpu"),
        check_positive_int,
    ),
    **dict.fromkeys(
        ("server_epsilon", "pfedme_lambda", "pfedme_beta", "task_timeout"),
        check_positive_number,
    ),
    **dict.fromkeys(
        ("client_learning_rate", "server_learning_rate", "learning_rate", "per_fedavg_alpha",
         "pfedme_personal_lr"),
        _check_rate,
    ),
    **dict.fromkeys(
        ("client_momentum", "server_momentum", "server_beta1", "server_beta2"), check_fraction
    ),
    "proximal_mu": functools.partial(
        check_non_negative_number, hint=" (FedProx's mu; 0 = FedAvg)"
    ),
    "ditto_lambda": check_non_negative_number,
    "apfl_alpha": functools.partial(check_fraction, closed_right=True),
}  # fmt: skip


def _check_values(config: Any, keys: tuple[str, ...], where: str = "") -> None:
    """Each of ``keys`` of ``config`` in its range (:data:`_RANGES`) or one of its field's
    choices (unset optional values, None, are their defaults: not checked)."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    for key in keys:
        value = getattr(config, key)
        if value is None:
            continue
        if key in _RANGES:
            _RANGES[key](f"{where}{key}", value, error=ConfigError)
        elif fields[key].metadata.get("choices"):
            _check_choice(f"{where}{key}", value, fields[key].metadata["choices"])


#: Optimizer settings that only one optimizer reads: key -> (the setting that names the
#: optimizer, the optimizer that reads it). The other optimizer drops them.
OPTIMIZER_SETTINGS = {
    "client_momentum": ("client_optimizer", "sgd"),
    "server_momentum": ("server_optimizer", "sgd"),
    "server_beta1": ("server_optimizer", "adam"),
    "server_beta2": ("server_optimizer", "adam"),
    "server_epsilon": ("server_optimizer", "adam"),
}


def _optimizer_notes(stages: list[StageConfig]) -> list[str]:
    """A note for each optimizer setting set (not its default) that no stage's optimizer
    reads (``client_momentum`` with ``client_optimizer = 'adam'``, ``server_beta1`` with a
    server SGD): the run says it ignores them. A centralized stage has no server."""
    notes = []
    for key, (which, reader) in OPTIMIZER_SETTINGS.items():
        server = which.startswith("server")
        set_in = [s for s in stages if getattr(s, key) != _default(key)]
        set_in = [s for s in set_in if not server or s.resolved_kind == "fedavg"]
        if set_in and not [s for s in set_in if getattr(s, which) == reader]:
            notes.append(
                f"{key} = {getattr(set_in[0], key)!r} applies to {which} {reader!r} only: "
                f"ignored (this run's {which} is {getattr(set_in[0], which)!r}; set "
                f"{which} = {reader!r} or leave {key} out)"
            )
    return notes


def _default(key: str) -> Any:
    """The default of setting ``key``."""
    return next(f.default for f in dataclasses.fields(ExperimentConfig) if f.name == key)


def _check_type(f: dataclasses.Field, value: Any, source: str = "config") -> None:
    """Refuse a value of the wrong type (a string seed, a boolean given as "no")."""
    if value is None:
        if f.default is None:
            return
        raise ConfigError(f"{source}: {f.name} cannot be empty.")
    tp = base_type(f)
    if tp is list or get_origin(tp) is list:
        ok = isinstance(value, list)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ConfigError(f"{source}: {f.name} must be a finite number, got {value!r}.")
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ConfigError(
            f"{source}: {f.name} must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
            + (" (write true or false, unquoted)." if tp is bool else ".")
        )


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, "a list"
    )


def _parse_value(key: str, text: str, tp: type) -> Any:
    try:
        if tp is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        return tp(text)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not {_type_name(tp)}.") from None
