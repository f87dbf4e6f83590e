"""Optimizers by name, for configurations: ``make_optimizer_fn("adam", 0.01, betas=...)``.

The library API takes any ``params -> torch.optim.Optimizer`` callable; configurations
(TOML, the CLI) name one of :data:`OPTIMIZERS` with its hyperparameters instead, and this
module turns that into a picklable ``functools.partial`` (worker processes rebuild it).

* ``"sgd"``: ``torch.optim.SGD(lr, momentum)`` (momentum 0 is plain SGD; with a server
  learning rate of 1.0 and momentum 0.9 it is TFF's FedAvgM server);
* ``"adam"``: ``torch.optim.Adam(lr, betas=(beta1, beta2), eps)`` with torch's defaults
  (0.9, 0.999, 1e-8): the server optimizer of Reptile / FedAdam stages.
"""

from __future__ import annotations

import functools

from fedp13n.utils.checks import check_fraction, check_positive_number
from fedp13n.utils.types import OptimizerFn

#: Each optimizer's learning rate where a configuration gives none (a personalization
#: strategy's fine-tuning): TFF's personalization example's rates. The one place these
#: defaults are declared (the registry's kinds, ``fedp13n run``'s strategies use them).
DEFAULT_LEARNING_RATES = {"sgd": 0.02, "adam": 0.002}
OPTIMIZERS = tuple(DEFAULT_LEARNING_RATES)


def make_optimizer_fn(
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    momentum: float = 0.0,
    *,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
) -> OptimizerFn:
    """A picklable ``params -> torch.optim.Optimizer`` for ``optimizer`` at ``learning_rate``
    (None: the optimizer's :data:`DEFAULT_LEARNING_RATES`). A one-line ``ValueError`` for a
    setting that would train on NaN or not at all (a learning rate that is not finite and
    > 0, a momentum or beta outside [0, 1), a non-positive epsilon) and for a momentum
    with adam (SGD's only; Adam has its betas)."""
    import torch

    if optimizer not in DEFAULT_LEARNING_RATES:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}.")
    lr = DEFAULT_LEARNING_RATES[optimizer] if learning_rate is None else learning_rate
    lr = check_positive_number("learning_rate", lr)
    momentum = check_fraction("momentum", momentum)
    check_fraction("beta1", beta1)
    check_fraction("beta2", beta2)
    check_positive_number("epsilon", epsilon)
    if optimizer == "adam" and momentum:
        raise ValueError(
            f"momentum={momentum!r} applies to sgd only; Adam has its own betas (use 0)."
        )
    if optimizer == "sgd":
        return functools.partial(torch.optim.SGD, lr=lr, momentum=momentum)
    return functools.partial(torch.optim.Adam, lr=lr, betas=(beta1, beta2), eps=epsilon)
