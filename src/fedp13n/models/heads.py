"""A model's head: the last layer(s), by name.

What head-only fine-tuning (:mod:`fedp13n.personalization.strategies.head_only`) trains and
what FedPer (:mod:`fedp13n.algorithms.fedper`) keeps personal: by default the last module
(in registration order) that owns parameters, the final ``Linear`` of fedp13n's models."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def default_head(model: nn.Module) -> str:
    """The name of the last module (in registration order) that owns parameters itself:
    the final ``Linear`` of fedp13n's EMNIST models (``"fc2"``). ``""`` (the whole model)
    when only the root owns parameters (e.g. a bare ``nn.Linear``)."""
    last = None
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = name
    if last is None:
        raise ValueError("the model has no parameters: there is no head to fine-tune.")
    return last


def head_parameter_names(model: nn.Module, head: str | Sequence[str] | None) -> list[str]:
    """Names of the parameters in ``head``: a module or parameter name (every parameter
    whose name is it or starts with it plus ``.``), a sequence of them, or None for
    :func:`default_head`. A name matching no parameter is a ``ValueError`` listing the
    valid names."""
    names = [default_head(model)] if head is None else [head] if isinstance(head, str) else head
    params = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for prefix in names:
        if not isinstance(prefix, str):
            raise TypeError(f"head names must be strings, got {prefix!r}.")
        match = [n for n in params if prefix == "" or n == prefix or n.startswith(prefix + ".")]
        if not match:
            modules = [
                n for n, m in model.named_modules() if n and any(True for _ in m.parameters())
            ]
            raise ValueError(
                f"head {prefix!r} names no layer of {type(model).__name__}; valid module "
                f"names: {modules}, parameter names: {params}."
            )
        chosen.update(match)
    return [n for n in params if n in chosen]  # model order
