"""Training algorithms: weighted FedAvg (McMahan et al. 2017), FedProx (Li et al. 2020,
its ``proximal_mu``), FedPer (Arivazhagan et al. 2019, a personal head per client), FedRep
(Collins et al. 2021, the head trained before the body), LG-FedAvg (Liang et al. 2020, a
personal body per client), Ditto (Li et al. 2021, a personal model per client), SCAFFOLD
(Karimireddy et al. 2020, control variates), Per-FedAvg (Fallah et al. 2020, a MAML
meta-model), pFedMe (Dinh et al. 2020, Moreau envelopes), their checkpoints, and the
centralized baseline (SGD on the pooled examples of the clients).

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import lazy_exports

_EXPORTS = {
    "CentralizedTraining": "fedp13n.algorithms.centralized",
    "ClientOutput": "fedp13n.algorithms.client_update",
    "ClientSelection": "fedp13n.algorithms.fed_avg",
    "ClientTask": "fedp13n.algorithms.client_update",
    "ClientWork": "fedp13n.algorithms.client_update",
    "DEFAULT_CLIENT_OPTIMIZER": "fedp13n.algorithms.fed_avg",
    "DEFAULT_SERVER_OPTIMIZER": "fedp13n.algorithms.fed_avg",
    "RoundMetrics": "fedp13n.algorithms.fed_avg",
    "ServerState": "fedp13n.algorithms.fed_avg",
    "WeightedFedAvg": "fedp13n.algorithms.fed_avg",
    "METHODS": "fedp13n.algorithms.fedper",
    "accuracy": "fedp13n.algorithms.client_update",
    "build_apfl": "fedp13n.algorithms.apfl",
    "build_fedper": "fedp13n.algorithms.fedper",
    "build_ditto": "fedp13n.algorithms.ditto",
    "build_fedbn": "fedp13n.algorithms.fedbn",
    "build_fedrep": "fedp13n.algorithms.fedrep",
    "build_lg_fedavg": "fedp13n.algorithms.lg_fedavg",
    "build_per_fedavg": "fedp13n.algorithms.per_fedavg",
    "build_pfedme": "fedp13n.algorithms.pfedme",
    "build_scaffold": "fedp13n.algorithms.scaffold",
    "fedper_state_spec": "fedp13n.algorithms.fedper",
    "build_centralized": "fedp13n.algorithms.centralized",
    "build_weighted_fed_avg": "fedp13n.algorithms.fed_avg",
    "latest_checkpoint": "fedp13n.algorithms.checkpoint",
    "load_checkpoint": "fedp13n.algorithms.checkpoint",
    "proximal_penalty": "fedp13n.algorithms.fedprox",
    "sample_clients": "fedp13n.algorithms.fed_avg",
    "save_checkpoint": "fedp13n.algorithms.checkpoint",
}
__all__ = [
    "CentralizedTraining",
    "ClientOutput",
    "ClientSelection",
    "ClientTask",
    "ClientWork",
    "DEFAULT_CLIENT_OPTIMIZER",
    "DEFAULT_SERVER_OPTIMIZER",
    "RoundMetrics",
    "ServerState",
    "WeightedFedAvg",
    "METHODS",
    "accuracy",
    "build_apfl",
    "build_centralized",
    "build_fedper",
    "build_ditto",
    "build_fedbn",
    "build_fedrep",
    "build_lg_fedavg",
    "build_per_fedavg",
    "build_pfedme",
    "build_scaffold",
    "build_weighted_fed_avg",
    "fedper_state_spec",
    "latest_checkpoint",
    "load_checkpoint",
    "proximal_penalty",
    "sample_clients",
    "save_checkpoint",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
