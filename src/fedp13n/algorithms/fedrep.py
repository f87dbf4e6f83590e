"""FedRep: a shared representation (body) averaged by FedAvg, a personal head per client
trained to convergence first, then the body.

Source: Collins, Hassani, Mokhtari and Shakkottai, "Exploiting Shared Representations for
Personalized Federated Learning", ICML 2021 (arXiv:2102.07078), Algorithm 1: in round t a
selected client i starts from the global representation ``phi^t`` and its own head
``h_i``; it first updates the head for ``tau_h`` local updates with the representation
fixed, then the representation for ``tau`` local updates with the new head fixed, sends
back the representation and keeps its head. The server averages the representations.
The paper's experiments (Section 5) run 10 local epochs for the head, then the
representation's (the authors' code, lgcollins/FedRep: ``--local_ep`` epochs in all, the
last ``--local_rep_ep`` of them for the representation: 1 in its CIFAR-10 scripts, 5 in
its FEMNIST and CIFAR-100 ones): :data:`DEFAULT_HEAD_EPOCHS` for the head, the stage's
local epochs for the body. FL-bench's default is 4 + 1.

Here: FedPer's machinery (:mod:`fedp13n.algorithms.fedper`: ``personal_layers``, the
client-state store, the initial head for a client's first round, the body averaged with
FedAvg's server optimizer), with the client's local training cut in two phases of the
client program (:class:`fedp13n.client.program.LocalTraining`, its ``trainable`` hook): the
head for ``head_epochs`` epochs (body frozen), then the body for the stage's local epochs
(or ``max_steps``; head frozen), each phase with a fresh client optimizer, one example
order generator for both (head first). The round's weight and training metrics are the body
phase's. With ``proximal_mu > 0`` FedProx's term pulls the body towards the global body.

A new client (the "new clients" protocol, :mod:`fedp13n.algorithms.own_state`) learns its
head alone, for ``head_epochs`` epochs on the global body, which it does not change: the
paper's generalisation to new clients (Section 5, "only the head is learned") and the
authors' last round (every user trains its head, representation fixed, before the final
evaluation); FL-bench's FedRep also fine-tunes the classifier only.
"""

from __future__ import annotations

from fedp13n.algorithms.fedper import method_builder

#: Local epochs of the head before the body in each of a FedRep client's rounds: the
#: paper's experiments' 10 (Collins et al. 2021, Section 5).
DEFAULT_HEAD_EPOCHS = 10


build_fedrep = method_builder(
    "fedrep",
    """FedRep: :func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` with
    ``method="fedrep"``: ``personal_layers`` of each client kept in ``client_state`` (a
    :class:`~fedp13n.state.ClientStateStore` made with
    :func:`~fedp13n.algorithms.fedper.fedper_state_spec`), trained ``head_epochs`` epochs
    before the body's ``client_epochs``. Commit the store after each round.""",
)
