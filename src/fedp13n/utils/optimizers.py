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
from typing import Any

from fedp13n.utils.checks import check_fraction, check_non_negative_number, check_positive_number

#: Each optimizer's learning rate where a configuration gives none (a personalization
#: strategy's fine-tuning): TFF's personalization example's rates. The one place these
#: defaults are declared (the registry's kinds, ``fedp13n run``'s strategies use them).
DEFAULT_LEARNING_RATES = {"sgd": 0.02, "adam": 0.002}
OPTIMIZERS = tuple(DEFAULT_LEARNING_RATES)


def make_optimizer_fn(
    name: str,
    learning_rate: float,
    *,
    momentum: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
) -> Any:
    """A picklable ``params -> torch.optim.Optimizer`` for optimizer ``name``; a one-line
    ``ValueError`` for a setting that would train on NaN (an infinite learning rate, a
    momentum or beta outside [0, 1), a non-positive epsilon)."""
    import torch

    check_non_negative_number("learning rate", learning_rate)
    check_fraction("momentum", momentum)
    check_fraction("beta1", beta1)
    check_fraction("beta2", beta2)
    check_positive_number("epsilon", epsilon)

    if name == "sgd":
        return functools.partial(torch.optim.SGD, lr=learning_rate, momentum=momentum)
    if name == "adam":
        return functools.partial(
            torch.optim.Adam, lr=learning_rate, betas=(beta1, beta2), eps=epsilon
        )
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")
