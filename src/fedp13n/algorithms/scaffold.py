"""SCAFFOLD: FedAvg whose local steps are corrected by control variates (Option II).

Source: Karimireddy, Kale, Mohri, Reddi, Stich and Suresh, "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning", ICML 2020 (arXiv:1910.06378), Algorithm 1:
the server keeps a control variate ``c``, each client i its own ``c_i`` (both start at 0).
In a round a sampled client starts from the server's ``x`` (its ``y_i = x``), takes K local
steps

    y_i <- y_i - lr * (g_i(y_i) - c_i + c)

then (Option II) ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` and sends ``(delta y_i, delta
c_i) = (y_i - x, c_i+ - c_i)``. The server: ``x <- x + eta_g * mean_S(delta y_i)`` and
``c <- c + (|S| / N) * mean_S(delta c_i)``, i.e. ``c + sum_S(delta c_i) / N`` with N the
number of clients.

Here: ``c_i`` (one tensor per trainable parameter, named as it) is the client's state in a
:class:`fedp13n.state.ClientStateStore` (spec ``fedper_state_spec(model_fn, None,
"scaffold")``; a client without one: zeros); ``c`` is ``ServerState.method_state`` (saved
with every checkpoint, so ``--resume`` is bit-identical), sent to the clients with the
round's task. The correction is the client program's ``penalty`` hook
(:class:`fedp13n.client.program.LocalTraining`): ``sum_n <p_n, c_n - c_i,n>``, whose
gradient ``c - c_i`` plain SGD turns into the step above. K is the number of local steps
the client took, lr its client optimizer's learning rate. The model update is FedAvg's
(server optimizer on the example-weighted mean delta; the paper's uniform mean when the
clients hold equal numbers of examples; server SGD lr 1.0 is the paper's ``eta_g = 1``);
``c``'s update is the paper's, over the finite clients, with N the store's clients. The
own-state protocol evaluates the global model (SCAFFOLD is not personalized).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from fedp13n.algorithms.fedper import method_builder


def control_penalty(
    model: nn.Module,
    c: Mapping[str, torch.Tensor],
    c_i: Mapping[str, torch.Tensor] | None,
    names: Sequence[str],
) -> Callable[[], torch.Tensor]:
    """``() -> sum_n <p_n, c_n - c_i,n>`` over the parameters ``names`` (``c_i`` None:
    zeros): its gradient, ``c - c_i``, is SCAFFOLD's correction of every local step."""
    params = dict(model.named_parameters())
    pairs = []
    for n in names:
        p = params[n]
        d = c[n] if c_i is None else c[n] - c_i[n]
        pairs.append((p, d.detach().to(p.device, p.dtype)))

    def penalty() -> torch.Tensor:
        return sum((p * d).sum() for p, d in pairs)

    return penalty


def next_control(
    c_i: Mapping[str, torch.Tensor] | None,
    c: Mapping[str, torch.Tensor],
    delta: Mapping[str, torch.Tensor],
    steps: int,
    lr: float,
) -> dict[str, torch.Tensor]:
    """Option II: ``c_i+ = c_i - c + delta / (K * lr)``, ``delta = x - y_i`` (the client's
    FedAvg delta), K = ``steps``; ``c_i`` None: zeros."""
    out = {}
    for n, d in delta.items():
        old = torch.zeros_like(d) if c_i is None else c_i[n]
        out[n] = old - c[n] + d / (steps * lr)
    return out


def learning_rate(optimizer_fn: Callable) -> float:
    """The learning rate of the optimizers ``optimizer_fn`` builds (its first group's)."""
    return float(optimizer_fn([nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"])


build_scaffold = method_builder(
    "scaffold",
    """SCAFFOLD: :func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` with
    ``method="scaffold"``: each client's control variate in ``client_state`` (a
    :class:`~fedp13n.state.ClientStateStore` made with ``fedper_state_spec(model_fn, None,
    "scaffold")``), the server's in ``ServerState.method_state``. Commit the store after
    each round.""",
)
