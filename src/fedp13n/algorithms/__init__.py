"""Training algorithms: weighted FedAvg (McMahan et al. 2017), FedProx (Li et al. 2020,
its ``proximal_mu``), FedPer (Arivazhagan et al. 2019, a personal head per client), FedRep
(Collins et al. 2021, the head trained before the body), LG-FedAvg (Liang et al. 2020, a
personal body per client), Ditto (Li et al. 2021, a personal model per client), SCAFFOLD
(Karimireddy et al. 2020, control variates), Per-FedAvg (Fallah et al. 2020, a MAML
meta-model), pFedMe (Dinh et al. 2020, Moreau envelopes), their checkpoints, and the
centralized baseline (SGD on the pooled examples of the clients).

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import by_module, lazy_exports

_EXPORTS = by_module(
    {
        "fedp13n.algorithms.centralized": "CentralizedTraining build_centralized",
        "fedp13n.algorithms.client_update": "ClientOutput ClientTask ClientWork accuracy",
        "fedp13n.algorithms.fed_avg": "ClientSelection DEFAULT_CLIENT_OPTIMIZER "
        "DEFAULT_SERVER_OPTIMIZER RoundMetrics ServerState WeightedFedAvg build_weighted_fed_avg "
        "sample_clients",
        "fedp13n.algorithms.fedper": "METHODS build_fedper fedper_state_spec",
        "fedp13n.algorithms.apfl": "build_apfl",
        "fedp13n.algorithms.ditto": "build_ditto",
        "fedp13n.algorithms.fedbn": "build_fedbn",
        "fedp13n.algorithms.fedrep": "build_fedrep",
        "fedp13n.algorithms.lg_fedavg": "build_lg_fedavg",
        "fedp13n.algorithms.per_fedavg": "build_per_fedavg",
        "fedp13n.algorithms.pfedme": "build_pfedme",
        "fedp13n.algorithms.scaffold": "build_scaffold",
        "fedp13n.algorithms.checkpoint": "latest_checkpoint load_checkpoint save_checkpoint",
        "fedp13n.algorithms.fedprox": "proximal_penalty",
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
