"""Ditto: a global model trained by FedAvg and, beside it, a whole personal model per client
pulled towards the global one.

Source: Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021 (arXiv:2012.04221), Eq. (2) and Algorithm 1: client k solves
``min_v F_k(v) + lambda/2 * ||v - w*||^2``. In round t a selected client k (1) updates the
global model from ``w^t`` with the global solver (here FedAvg's local steps; its result
goes to the server, which averages as FedAvg does) and (2) updates its personal model for
the same local steps:

    v_k <- v_k - lr * (grad F_k(v_k) + lambda * (v_k - w^t))

with ``w^t`` the round's global model (as received, not the client's update of it). The
personal model never leaves the client. The paper tunes lambda per data set from a grid
(its Appendix); :data:`DEFAULT_DITTO_LAMBDA` is FL-bench's default (KarhouTam/FL-bench,
``src/server/ditto.py``, ``--lamda`` 1).

Here: ``v_k`` (every trainable parameter) is the client's state in a
:class:`fedp13n.state.ClientStateStore` (spec: ``fedper_state_spec(model_fn, None,
"ditto")``); a client's first ``v_k`` is ``w^t`` of its first round. Each round it takes
part, the client program (:class:`fedp13n.client.program.LocalTraining`) runs the global
phase (FedAvg's, with FedProx's term when ``proximal_mu > 0``), then the personal phase
(its ``penalty`` hook: :func:`fedp13n.algorithms.fedprox.proximal_penalty` with
``mu = lambda`` and anchor ``w^t``), a fresh client optimizer for each, one example-order
generator for both (global first). The round's weight, metrics and buffers are the global
phase's; ``v_k``'s buffers are the global model's. The own-state protocol evaluates
``v_k`` (:func:`fedp13n.algorithms.fedper.client_model_weights`); a new client runs both
phases from ``w`` and is evaluated with its ``v``.
"""

from __future__ import annotations

from typing import Any

from fedp13n.algorithms.fedper import method_builder
from fedp13n.utils.checks import check_non_negative_number

#: Ditto's lambda when unset: FL-bench's default (the paper tunes it per data set).
DEFAULT_DITTO_LAMBDA = 1.0


def check_ditto_lambda(value: Any, error: type[Exception] = ValueError) -> float:
    """``value`` as a finite float >= 0 (0: each personal model trains on its own)."""
    return check_non_negative_number(
        "ditto_lambda", value, error, " (Ditto's pull of the personal model to the global one)"
    )


build_ditto = method_builder(
    "ditto",
    """Ditto: :func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` with
    ``method="ditto"``: the global model is FedAvg's; each client's personal model is kept
    in ``client_state`` (a :class:`~fedp13n.state.ClientStateStore` made with
    ``fedper_state_spec(model_fn, None, "ditto")``), pulled by ``ditto_lambda`` (default
    :data:`DEFAULT_DITTO_LAMBDA`). Commit the store after each round.""",
)
