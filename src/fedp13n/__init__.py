"""fedp13n: federated personalization in PyTorch.

Train a global model with weighted Federated Averaging (McMahan et al. 2017), then measure
client by client how well personalization strategies adapt it: TFF's personalization
experiment on EMNIST-62 (Jiang et al. 2019, "Improving Federated Learning Personalization
via Model Agnostic Meta Learning"), with TFF's vocabulary.

Data flows one way: dataset (:mod:`fedp13n.data`) -> process (:mod:`fedp13n.algorithms`,
:mod:`fedp13n.personalization`, run by :mod:`fedp13n.execution`) -> metrics ->
report (:mod:`fedp13n.reporting`).
"""

from fedp13n.algorithms import (
    ClientSelection,
    RoundMetrics,
    ServerState,
    WeightedFedAvg,
    build_weighted_fed_avg,
    latest_checkpoint,
    load_checkpoint,
    sample_clients,
    save_checkpoint,
)
from fedp13n.data import (
    ClientData,
    ClientDataset,
    load_dataset,
    make_synthetic_emnist,
    split_clients,
)
from fedp13n.execution import Executor, InProcessExecutor
from fedp13n.models import emnist_conv_dropout, fedavg_cnn
from fedp13n.personalization import (
    PersonalizationResult,
    build_evaluate_fn,
    build_personalization_eval,
    build_personalize_fn,
    evaluate_fn,
)

__version__ = "0.1.0"

__all__ = [
    "ClientData",
    "ClientDataset",
    "ClientSelection",
    "Executor",
    "InProcessExecutor",
    "PersonalizationResult",
    "RoundMetrics",
    "ServerState",
    "WeightedFedAvg",
    "__version__",
    "build_evaluate_fn",
    "build_personalization_eval",
    "build_personalize_fn",
    "build_weighted_fed_avg",
    "emnist_conv_dropout",
    "evaluate_fn",
    "fedavg_cnn",
    "latest_checkpoint",
    "load_checkpoint",
    "load_dataset",
    "make_synthetic_emnist",
    "sample_clients",
    "save_checkpoint",
    "split_clients",
]
