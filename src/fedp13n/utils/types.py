"""The callable types of the public API, defined once.

``ModelFn`` builds a fresh ``nn.Module``; ``OptimizerFn`` takes an iterable of parameters
and returns a ``torch.optim.Optimizer`` (e.g. ``functools.partial(torch.optim.SGD,
lr=0.02)``); ``LossFn`` and ``MetricFn`` map ``(outputs, targets)`` to the batch mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

ModelFn = Callable[[], "nn.Module"]
OptimizerFn = Callable[[Iterable["torch.nn.Parameter"]], "torch.optim.Optimizer"]
LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
MetricFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
#: A personalization strategy: ``personalize_fn(model, train_data, test_data[, context])``.
PersonalizeFn = Callable[..., Any]
