"""Proximal fine-tuning: Ditto's local objective.

Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization":
the personalized model minimizes ``loss(w) + lam / 2 * ||w - w_global||^2``, which keeps
it near the global model; ``lam = 0`` is plain fine-tuning, ``lam -> inf`` the global
model. Here ``w_global`` is the weights the model holds when the strategy is called
(the global model in :func:`~fedp13n.build_personalization_eval`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from fedp13n.client.program import proximal_penalty
from fedp13n.personalization.strategies.finetune import FineTune, tff_builder
from fedp13n.utils.checks import check_non_negative_number


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
        object.__setattr__(self, "lam", check_non_negative_number("lam", self.lam))

    def hooks(self, model: nn.Module) -> dict[str, Any]:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not (self.lam > 0 and names):
            return {}
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return dict(penalty=proximal_penalty(model, anchor, self.lam, names))


build_proximal_personalize_fn = tff_builder(Proximal)
