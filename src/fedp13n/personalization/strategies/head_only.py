"""Head-only fine-tuning: personalize only the last layer (or named layers).

The local adaptation that FedPer (Arivazhagan et al. 2019, "Federated Learning with
Personalization Layers") and FedRep (Collins et al. 2021, "Exploiting Shared
Representations for Personalized Federated Learning") evaluate: the shared body keeps the
global weights and only the head is fitted to the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedp13n.models.heads import default_head, head_parameter_names
from fedp13n.personalization.strategies.finetune import FineTune, tff_builder


@dataclass(frozen=True, kw_only=True)
class HeadOnly(FineTune):
    """Kind ``"head_only"``: :class:`FineTune` restricted to the ``head``.

    ``head``: a module or parameter name (``""`` is the whole model), or a sequence of
    them (see :func:`head_parameter_names`); None = the last module owning parameters
    (:func:`default_head`), e.g. ``"fc2"`` for the EMNIST models. A name that matches no
    parameter raises a ``ValueError`` listing the valid names at the call.

    Every other parameter has ``requires_grad`` off during the call (restored afterwards)
    and is not given to the optimizer, so it stays bit-for-bit the global weight (weight
    decay, momentum cannot touch it). Modules outside the head that hold buffers (batch
    norm) run in eval mode while training, so their running statistics do not change
    either (they normalize with the global statistics, as at evaluation). Dropout in the
    body still runs in train mode (it has no state). Same training, evaluation keys,
    seeding as :class:`FineTune`.
    """

    head: str | Sequence[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        head = self.head
        if head is not None and (
            not isinstance(head, str | Sequence)
            or (not isinstance(head, str) and not all(isinstance(h, str) for h in head))
        ):
            raise TypeError(f"head must be a name, a sequence of names or None, got {head!r}.")
        if head is not None and not isinstance(head, str):
            if len(head) == 0:
                raise ValueError(
                    "head is an empty list: it names no layer to fine-tune; name at least one "
                    "(e.g. head = ['fc2']) or leave head out for the last layer with parameters."
                )
            object.__setattr__(self, "head", tuple(head))

    def hooks(self, model: nn.Module) -> dict[str, Any]:
        in_head = set(head_parameter_names(model, self.head))
        frozen_modules = _frozen_stateful_modules(model, self.head, in_head)

        def freeze_modules() -> None:
            for m in frozen_modules:
                m.eval()

        return dict(
            trainable=[n for n, _ in model.named_parameters() if n in in_head],
            after_train_mode=freeze_modules,
        )


build_head_only_personalize_fn = tff_builder(HeadOnly)


def _frozen_stateful_modules(
    model: nn.Module, head: str | Sequence[str] | None, in_head: set[str]
) -> list[nn.Module]:
    """Modules outside the head that hold buffers: they run in eval mode while training.

    A module is in the head when its name is under one of the head's names or when it
    owns a head parameter."""
    prefixes = [default_head(model)] if head is None else [head] if isinstance(head, str) else head

    def under_head(name: str) -> bool:
        return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)

    out = []
    for name, m in model.named_modules():
        if not any(True for _ in m.buffers(recurse=False)) or under_head(name):
            continue
        own = (f"{name}.{pn}" if name else pn for pn, _ in m.named_parameters(recurse=False))
        if not any(n in in_head for n in own):
            out.append(m)
    return out
