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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fedp13n.utils.checks import check_non_negative_number

#: How an error names FedProx's mu (the library's and the configuration's name).
MU_HINT = " (FedProx's mu; 0 = FedAvg)"


def check_proximal_mu(value: Any, error: type[Exception] = ValueError) -> float:
    """``value`` as a finite float >= 0 (0: FedAvg)."""
    return check_non_negative_number("proximal_mu", value, error, MU_HINT)


def proximal_penalty(
    model: nn.Module, anchor: Mapping[str, torch.Tensor], mu: float, names: Sequence[str]
) -> Callable[[], torch.Tensor]:
    """``() -> mu/2 * sum_n ||p_n - anchor_n||^2`` over the parameters ``names`` of
    ``model`` (the anchor, the round's global weights, is copied to each parameter's
    device and dtype once, here; it carries no gradient)."""
    params = dict(model.named_parameters())
    pairs = [(params[n], anchor[n].detach().to(params[n].device, params[n].dtype)) for n in names]
    half_mu = mu / 2.0

    def penalty() -> torch.Tensor:
        return half_mu * sum((p - a).pow(2).sum() for p, a in pairs)

    return penalty
