"""Kind ``"bias_only"``: fine-tune only the biases (BitFit).

Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based
Masked Language-models": training only the bias terms adapts a pretrained model nearly as
well as full fine-tuning while changing a tiny fraction of its parameters. Here the
personalized model shares every weight with the global one and differs in its biases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from fedp13n.personalization.strategies.finetune import FineTune


def bias_parameter_names(model: nn.Module) -> list[str]:
    """Names of ``model``'s parameters called ``bias`` (of any module), in model order; a
    ``ValueError`` when there is none."""
    names = [n for n, _ in model.named_parameters() if n == "bias" or n.endswith(".bias")]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no bias parameter, so bias_only has nothing to "
            "fine-tune; use kind 'head_only' or 'finetune'."
        )
    return names


@dataclass(frozen=True, kw_only=True)
class BiasOnly(FineTune):
    """:class:`FineTune` restricted to the parameters named ``bias`` (linear,
    convolution and normalization layers' alike): every other parameter has
    ``requires_grad`` off during the call and is not given to the optimizer, so it stays
    bit-for-bit the global weight. Buffers (batch-norm running statistics) update as in
    :class:`FineTune`. Same fields, evaluation keys and seeding as :class:`FineTune`."""

    def hooks(self, model: nn.Module) -> dict[str, Any]:
        return dict(trainable=bias_parameter_names(model))
