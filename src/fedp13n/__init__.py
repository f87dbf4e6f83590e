"""fedp13n: federated personalization in PyTorch.

Train a global model with weighted Federated Averaging (McMahan et al. 2017), then measure
client by client how well personalization strategies adapt it: TFF's personalization
experiment on EMNIST-62 (Jiang et al. 2019, "Improving Federated Learning Personalization
via Model Agnostic Meta Learning"), with TFF's vocabulary.

Data flows one way: dataset (:mod:`fedp13n.data`) -> process (:mod:`fedp13n.algorithms`,
:mod:`fedp13n.personalization`, run by :mod:`fedp13n.execution`) -> metrics ->
report (:mod:`fedp13n.reporting`).
"""

from typing import TYPE_CHECKING

from fedp13n.utils.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "build_centralized": "fedp13n.algorithms.centralized",
    "ClientSelection": "fedp13n.algorithms.fed_avg",
    "RoundMetrics": "fedp13n.algorithms.fed_avg",
    "ServerState": "fedp13n.algorithms.fed_avg",
    "WeightedFedAvg": "fedp13n.algorithms.fed_avg",
    "build_weighted_fed_avg": "fedp13n.algorithms.fed_avg",
    "sample_clients": "fedp13n.algorithms.fed_avg",
    "latest_checkpoint": "fedp13n.algorithms.checkpoint",
    "load_checkpoint": "fedp13n.algorithms.checkpoint",
    "save_checkpoint": "fedp13n.algorithms.checkpoint",
    "ClientData": "fedp13n.data.client_data",
    "ClientDataset": "fedp13n.data.client_data",
    "load_dataset": "fedp13n.data.datasets",
    "make_synthetic_emnist": "fedp13n.data.synthetic",
    "partition": "fedp13n.data.partition",
    "split_clients": "fedp13n.data.split",
    "Executor": "fedp13n.execution.base",
    "InProcessExecutor": "fedp13n.execution.in_process",
    "emnist_conv_dropout": "fedp13n.models.emnist",
    "fedavg_cnn": "fedp13n.models.emnist",
    "PersonalizationResult": "fedp13n.personalization.result",
    "build_personalization_eval": "fedp13n.personalization.eval",
    "build_personalization_eval_computation": "fedp13n.personalization.eval",
    "build_evaluate_fn": "fedp13n.personalization.p13n_utils",
    "build_personalize_fn": "fedp13n.personalization.p13n_utils",
    "evaluate_fn": "fedp13n.personalization.p13n_utils",
    "write_personalization_report": "fedp13n.reporting.result_report",
    "ClientStateStore": "fedp13n.state.store",
}

__all__ = [
    "ClientData",
    "ClientDataset",
    "ClientSelection",
    "ClientStateStore",
    "Executor",
    "InProcessExecutor",
    "PersonalizationResult",
    "RoundMetrics",
    "ServerState",
    "WeightedFedAvg",
    "__version__",
    "build_centralized",
    "build_evaluate_fn",
    "build_personalization_eval",
    "build_personalization_eval_computation",
    "build_personalize_fn",
    "build_weighted_fed_avg",
    "emnist_conv_dropout",
    "evaluate_fn",
    "fedavg_cnn",
    "latest_checkpoint",
    "load_checkpoint",
    "load_dataset",
    "make_synthetic_emnist",
    "partition",
    "sample_clients",
    "save_checkpoint",
    "split_clients",
    "write_personalization_report",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; nothing is imported at run time
    from fedp13n.algorithms.centralized import build_centralized
    from fedp13n.algorithms.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from fedp13n.algorithms.fed_avg import (
        ClientSelection,
        RoundMetrics,
        ServerState,
        WeightedFedAvg,
        build_weighted_fed_avg,
        sample_clients,
    )
    from fedp13n.data.client_data import ClientData, ClientDataset
    from fedp13n.data.datasets import load_dataset
    from fedp13n.data.partition import partition
    from fedp13n.data.split import split_clients
    from fedp13n.data.synthetic import make_synthetic_emnist
    from fedp13n.execution.base import Executor
    from fedp13n.execution.in_process import InProcessExecutor
    from fedp13n.models.emnist import emnist_conv_dropout, fedavg_cnn
    from fedp13n.personalization.eval import (
        build_personalization_eval,
        build_personalization_eval_computation,
    )
    from fedp13n.personalization.p13n_utils import (
        build_evaluate_fn,
        build_personalize_fn,
        evaluate_fn,
    )
    from fedp13n.personalization.result import PersonalizationResult
    from fedp13n.reporting.result_report import write_personalization_report
    from fedp13n.state.store import ClientStateStore
