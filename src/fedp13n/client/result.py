"""What a FedAvg client sends back: :class:`ClientOutput`, one dataclass for every backend
(the per-client :class:`~fedp13n.algorithms.client_update.ClientWork` and the multi-client
engine, :meth:`~fedp13n.engine.batched.MultiClientEngine.fedavg_clients`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClientOutput:
    """What a client sends back. ``delta`` (trainable parameters) is initial - trained, TFF's
    sign convention, so that the server can apply it as a gradient; ``buffers`` are the
    trained values of the model's buffers (none from the engine). Both are ``None`` for a
    non-finite update. ``state``: the client's new per-client tensors, for methods that
    keep state across rounds (the lead process puts them in its
    :class:`fedp13n.state.ClientStateStore`); ``None`` for none."""

    delta: dict[str, torch.Tensor] | None
    buffers: dict[str, torch.Tensor] | None
    # the client's weight in the average: its dataset size under the "epochs" pipeline,
    # the examples it processed under "tff" (TFF's NUM_EXAMPLES client weighting)
    num_examples: int
    num_trained: int  # examples processed over all epochs (for metrics)
    loss_sum: float  # sum over processed examples of the loss
    metric_sum: float  # sum over processed examples of the metric
    finite: bool
    state: dict[str, torch.Tensor] | None = None
