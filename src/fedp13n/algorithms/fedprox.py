"""FedProx's client objective: FedAvg whose clients add a proximal term.

Source: Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020 (arXiv:1812.06127), Algorithm 2 and Eq. (2): in round
t each client k minimises ``h_k(w; w^t) = F_k(w) + mu/2 * ||w - w^t||^2`` from the global
weights ``w^t``. With SGD a local step is therefore

    w <- w - lr * (grad F_k(w) + mu * (w - w^t))

(the first step, at ``w = w^t``, is FedAvg's). The server side is FedAvg's unchanged;
``mu = 0`` *is* FedAvg (no term is added, so the numbers are bit-identical). Only the
trainable parameters are pulled towards the global weights (buffers are not parameters
of ``F_k``). The paper's "inexact local solvers" (a varying number of local steps per
client) are not part of it here: every client runs the stage's local steps.

Wiring: :func:`proximal_penalty` is the client program's ``penalty`` hook
(:class:`fedp13n.client.program.LocalTraining`); ``proximal_mu`` of
:func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` and of a training stage
(``fedp13n run --proximal-mu 0.01`` or ``--stage fedavg:proximal_mu=0.01``) sets it.
"""

from __future__ import annotations

from typing import Any

from fedp13n.client.program import proximal_penalty  # noqa: F401 (FedProx's term)
from fedp13n.utils.checks import check_non_negative_number

#: How an error names FedProx's mu (the library's and the configuration's name).
MU_HINT = " (FedProx's mu; 0 = FedAvg)"


def check_proximal_mu(value: Any, error: type[Exception] = ValueError) -> float:
    """``value`` as a finite float >= 0 (0: FedAvg)."""
    return check_non_negative_number("proximal_mu", value, error, MU_HINT)
