"""Models by name: what configs and the CLI call ``model`` (torch is imported on use).

Each name maps to the builder ``(num_classes) -> nn.Module`` that
:func:`get_model_fn` returns; :func:`model_fn_for` gives the picklable no-argument
``model_fn`` the algorithms want.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

#: Model name -> "module:builder".
MODELS = {
    "conv_dropout": "fedp13n.models.emnist:emnist_conv_dropout",
    "conv_bn": "fedp13n.models.emnist:emnist_conv_bn",
    "fedavg_cnn": "fedp13n.models.emnist:fedavg_cnn",
    "dnn": "fedp13n.models.emnist:emnist_dnn",
    "dnn_bn": "fedp13n.models.emnist:emnist_dnn_bn",
    "shakespeare_rnn": "fedp13n.models.shakespeare:shakespeare_rnn",
    "shakespeare_rnn_bn": "fedp13n.models.shakespeare:shakespeare_rnn_bn",
}
MODEL_NAMES = tuple(MODELS)
#: The registered models with batch-norm layers, which FedBN keeps local to each client
#: (:mod:`fedp13n.algorithms.fedbn`): what a configuration checks before anything loads.
BATCH_NORM_MODELS = ("conv_bn", "dnn_bn", "shakespeare_rnn_bn")


def get_model_fn(name: str) -> Callable[..., Any]:
    """The builder registered under ``name`` (see :data:`MODELS`)."""
    try:
        module, attr = MODELS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}.") from None
    return getattr(importlib.import_module(module), attr)


def model_fn_for(name: str, num_classes: int) -> Callable[[], Any]:
    """A picklable no-argument ``model_fn`` building model ``name`` for ``num_classes``."""
    return functools.partial(get_model_fn(name), num_classes=num_classes)
