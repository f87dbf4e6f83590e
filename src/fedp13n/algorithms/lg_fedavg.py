"""LG-FedAvg: local representations (a personal body per client), a global head averaged
by FedAvg: the mirror of FedPer.

Source: Liang, Liu, Ziyin, Allen, Auerbach, Brent, Salakhutdinov and Morency, "Think
Locally, Act Globally: Federated Learning with Local and Global Representations", 2020
(arXiv:2001.01523), Section 3 and Algorithm 1: each device m keeps local parameters
``theta_m^l`` (the lower layers, which learn a representation of its own data) and shares
the global parameters ``theta^g`` (the top layers). In round t a selected device starts
from the server's ``theta^g`` and its own ``theta_m^l``, updates both on its data for E
local epochs, keeps ``theta_m^l`` and sends back ``theta_m^g``; the server averages the
global parameters. Here the mean is FedAvg's, weighted by the devices' numbers of examples;
the authors' code (pliang279/LG-FedAvg, ``main_lg.py``) takes the plain mean over devices,
keeps 1 global layer by default (its scripts: 3 for the MNIST MLP, 2 for the CIFAR CNN)
and starts from a FedAvg-trained model; here from the initial one.

Here: FedPer's machinery (:mod:`fedp13n.algorithms.fedper`: the client-state store, the
global model's value for a client's first round, the shared part averaged with FedAvg's
server optimizer) with the other default for ``personal_layers``: unset, every trainable
parameter but the head (the last layer with parameters,
:func:`fedp13n.models.heads.default_head`) is personal
(:data:`~fedp13n.algorithms.fedper.BODY_PERSONAL`). A first-round client's body is the
global model's initial body (the server never changes it). The paper's optional
auxiliary local objectives (its Section 3.2, e.g. reconstruction) are not part of it.
With ``proximal_mu > 0`` FedProx's term pulls the head towards the global head.
"""

from __future__ import annotations

from fedp13n.algorithms.fedper import method_builder

build_lg_fedavg = method_builder(
    "lg_fedavg",
    """LG-FedAvg: :func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` with
    ``method="lg_fedavg"``: ``personal_layers`` (default: all but the head) of each
    client kept in ``client_state`` (a :class:`~fedp13n.state.ClientStateStore` made with
    ``fedper_state_spec(model_fn, personal_layers, "lg_fedavg")``), the rest averaged.
    Commit the store after each round.""",
)
