"""Federated training algorithms: weighted FedAvg (McMahan et al. 2017) and its checkpoints."""

from fedp13n.algorithms.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fedp13n.algorithms.client_update import ClientOutput, ClientTask, ClientWork, accuracy
from fedp13n.algorithms.fed_avg import (
    DEFAULT_CLIENT_OPTIMIZER,
    DEFAULT_SERVER_OPTIMIZER,
    ClientSelection,
    RoundMetrics,
    ServerState,
    WeightedFedAvg,
    build_weighted_fed_avg,
    sample_clients,
)

__all__ = [
    "DEFAULT_CLIENT_OPTIMIZER",
    "DEFAULT_SERVER_OPTIMIZER",
    "ClientOutput",
    "ClientSelection",
    "ClientTask",
    "ClientWork",
    "RoundMetrics",
    "ServerState",
    "WeightedFedAvg",
    "accuracy",
    "build_weighted_fed_avg",
    "latest_checkpoint",
    "load_checkpoint",
    "sample_clients",
    "save_checkpoint",
]
