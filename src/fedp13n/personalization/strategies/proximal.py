"""Proximal fine-tuning: Ditto's local objective.

Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization":
the personalized model minimizes ``loss(w) + lam / 2 * ||w - w_global||^2``, which keeps
it near the global model; ``lam = 0`` is plain fine-tuning, ``lam -> inf`` the global
model. Here ``w_global`` is the weights the model holds when the strategy is called
(the global model in :func:`~fedp13n.build_personalization_eval`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.client.program import EVAL_BATCH_SIZE
from fedp13n.personalization.strategies.finetune import FineTune
from fedp13n.utils.types import LossFn, OptimizerFn, PersonalizeFn


@dataclass(frozen=True, kw_only=True)
class Proximal(FineTune):
    """Kind ``"proximal"``: :class:`FineTune` on Ditto's objective.

    Every batch minimizes ``loss_fn(model(x), y) + lam / 2 * sum_p ||p - p_global||^2``
    over all trainable parameters (``p_global``: their values at the call; buffers are
    not penalized). ``lam >= 0`` (required); with ``lam = 0`` the penalty is skipped and
    the strategy is bit-for-bit :class:`FineTune`. The reported metrics (``loss_fn``
    alone, no penalty) and the seeding are :class:`FineTune`'s.
    """

    lam: float

    def __post_init__(self) -> None:
        super().__post_init__()
        lam = self.lam
        if (
            isinstance(lam, bool)
            or not isinstance(lam, numbers.Real)
            or not math.isfinite(lam)
            or lam < 0
        ):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}.")
        object.__setattr__(self, "lam", float(lam))

    def hooks(self, model: nn.Module) -> dict[str, Any]:
        params = [p for p in model.parameters() if p.requires_grad]
        if not (self.lam > 0 and params):
            return {}
        anchors = [p.detach().clone() for p in params]
        lam = self.lam

        def penalty() -> torch.Tensor:
            total = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
            return (lam / 2.0) * total

        return dict(penalty=penalty)


def build_proximal_personalize_fn(
    optimizer_fn: OptimizerFn,
    batch_size: int,
    num_epochs: int,
    num_epochs_per_eval: int,
    shuffle: bool = True,
    *,
    lam: float,
    loss_fn: LossFn = F.cross_entropy,
    eval_batch_size: int = EVAL_BATCH_SIZE,
) -> PersonalizeFn:
    """:class:`Proximal` with TFF's ``build_personalize_fn`` arguments."""
    return Proximal.from_tff(
        optimizer_fn, batch_size, num_epochs, num_epochs_per_eval, shuffle,
        lam=lam, loss_fn=loss_fn, eval_batch_size=eval_batch_size,
    )()  # fmt: skip
