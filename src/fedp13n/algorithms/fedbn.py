"""FedBN: FedAvg that leaves every batch-norm layer local to its client.

Source: Li, Jiang, Zhang, Kamp and Dou, "FedBN: Federated Learning on Non-IID Features via
Local Batch Normalization", ICLR 2021 (arXiv:2102.07623), Algorithm 1: each client trains
the whole model locally; the server averages every parameter *except* those of the
batch-normalization layers, which each client keeps (its BN weight and bias, and the
running mean and variance it normalizes with at test time).

Here: a client's batch-norm state (every ``state_dict`` entry of its ``nn.BatchNorm*``
layers: ``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``)
is its state in a :class:`fedp13n.state.ClientStateStore` (spec ``fedper_state_spec(
model_fn, None, "fedbn")``): FedPer's machinery (:mod:`fedp13n.algorithms.fedper`) with
the BN entries as the personal part, buffers included; the rest is FedAvg's (the
server's BN entries are never averaged, whatever ``buffer_aggregation`` says). A client's
first BN state is the global model's, i.e. the initial one (weight 1, bias 0, mean 0,
variance 1): the server never changes it. The own-state protocol evaluates the global
non-BN weights with the client's BN parameters and statistics
(:func:`fedp13n.algorithms.fedper.client_model_weights`); a new client (and TFF's
protocol, and the global model's evaluation) starts from the global, i.e. initial, BN.
Needs a model with batch norms, e.g. ``model = "conv_bn"``
(:func:`fedp13n.models.emnist.emnist_conv_bn`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedp13n.algorithms.fedper import method_builder

if TYPE_CHECKING:  # torch is imported where it is used: the configuration reads fedper
    from torch import nn


def batch_norm_names(model: nn.Module) -> tuple[str, ...]:
    """The ``state_dict`` names of ``model``'s batch-norm layers (parameters and running
    statistics), in state-dict order; a one-line ValueError when it has none."""
    from torch.nn.modules.batchnorm import _NormBase

    prefixes = [f"{m}." for m, mod in model.named_modules() if isinstance(mod, _NormBase)]
    names = tuple(n for n in model.state_dict() if any(n.startswith(p) for p in prefixes))
    if not names:
        raise ValueError(
            f"method='fedbn' keeps the batch-norm layers local, but {type(model).__name__} "
            "has none; use a model with batch norms (EMNIST's model = 'conv_bn', or your own "
            "'module:function'), or another method."
        )
    return names


build_fedbn = method_builder(
    "fedbn",
    """FedBN: :func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` with
    ``method="fedbn"``: each client's batch-norm parameters and statistics in
    ``client_state`` (a :class:`~fedp13n.state.ClientStateStore` made with
    ``fedper_state_spec(model_fn, None, "fedbn")``), everything else averaged. Commit the
    store after each round.""",
)
