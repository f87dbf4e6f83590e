"""Checking what users hand to personalization: unbatched client datasets and client inputs.

TFF's personalization evaluation takes *unbatched* datasets because batching is each
strategy's own choice (one strategy may fine-tune with batch size 5, another with 20).
The most common mistake is to pass data that is already batched (a ``DataLoader``, a list
of ``(x, y)`` batches); it would silently train on the wrong examples, so it is refused
here with a message that says what to pass instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedp13n.data.client_data import ClientDataset

#: Keys a client input may have. ``train_data``/``test_data`` are required (TFF's names);
#: ``context`` is handed to every strategy (TFF's optional context); ``client_id`` names
#: the client in the result.
REQUIRED_KEYS = ("train_data", "test_data")
OPTIONAL_KEYS = ("context", "client_id")

_UNBATCHED_HINT = (
    "pass the client's unbatched examples: a fedp13n.data.ClientDataset "
    "(e.g. client_data.create_dataset(client_id)) or an (x, y) tuple of numpy arrays / "
    "torch tensors with one row per example. Batching is the strategy's business."
)


def as_client_dataset(data: Any, what: str = "dataset") -> ClientDataset:
    """``data`` as a :class:`ClientDataset`, or a ``TypeError``/``ValueError`` naming ``what``.

    Accepts a ``ClientDataset`` (returned as is) or an ``(x, y)`` tuple/list whose two
    elements are numpy arrays or torch tensors of the same length. Anything else,
    in particular batched data (a torch ``DataLoader``, a list of batches), is refused.
    """
    if isinstance(data, ClientDataset):
        return data
    if isinstance(data, torch.utils.data.DataLoader):
        raise TypeError(f"{what} is a torch DataLoader, i.e. batched data; {_UNBATCHED_HINT}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(_is_array(a) for a in data):
        x, y = data
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(
                f"{what}: x and y must have one row per example, got shapes "
                f"{tuple(x.shape)} and {tuple(y.shape)}."
            )
        if len(x) != len(y):
            raise ValueError(
                f"{what} has {len(x)} feature rows but {len(y)} labels; x and y must have "
                "one row per example each."
            )
        return ClientDataset.from_arrays(_detached(x), _detached(y))
    if isinstance(data, (tuple, list)) and data and all(_looks_like_batch(b) for b in data):
        raise TypeError(f"{what} looks like a list of (x, y) batches; {_UNBATCHED_HINT}")
    raise TypeError(
        f"{what} is a {type(data).__name__}, not unbatched client data; {_UNBATCHED_HINT}"
    )


def check_client_input(client_input: Any, position: int) -> dict[str, Any]:
    """Validate one client input (a mapping) and return it with datasets normalized."""
    where = f"client input {position}"
    if not isinstance(client_input, Mapping):
        raise TypeError(
            f"{where} is a {type(client_input).__name__}; each client input must be a mapping "
            "with keys 'train_data' and 'test_data' (and optionally 'context', 'client_id')."
        )
    missing = [k for k in REQUIRED_KEYS if k not in client_input]
    if missing:
        raise ValueError(
            f"{where} has no {' and no '.join(repr(k) for k in missing)}; each client input "
            f"needs 'train_data' and 'test_data' (it has {sorted(map(str, client_input))})."
        )
    unknown = [k for k in client_input if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if unknown:
        raise ValueError(
            f"{where} has unknown keys {unknown}; allowed are "
            f"{list(REQUIRED_KEYS + OPTIONAL_KEYS)} (put extra information in 'context')."
        )
    if "client_id" in client_input:
        where = f"client {client_input['client_id']!r} (input {position})"
    out = dict(client_input)
    for key in REQUIRED_KEYS:
        out[key] = as_client_dataset(client_input[key], f"{key} of {where}")
    out["client_id"] = str(client_input.get("client_id", position))
    out.setdefault("context", None)
    return out


def _is_array(a: Any) -> bool:
    return isinstance(a, (np.ndarray, torch.Tensor))


def _detached(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def _looks_like_batch(b: Any) -> bool:
    return isinstance(b, (tuple, list)) and len(b) == 2 and all(_is_array(a) for a in b)
