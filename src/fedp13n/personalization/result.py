"""The result of a personalization evaluation: TFF's nested metrics, one list per leaf.

TFF returns an ``OrderedDict`` mapping ``baseline_metrics`` and every strategy name to
its (possibly nested) metrics, where every leaf is a list with one scalar per sampled
client and position ``i`` is the same client everywhere. :class:`PersonalizationResult`
is exactly that ``OrderedDict`` (same keys, so TFF-style code iterates it unchanged) plus
two attributes TFF does not have: ``client_ids`` (the sampled clients, in list order, so
per-client numbers can be joined with the user's own data) and ``seed`` (what the sample
and the strategies' randomness derived from, so the run can be reproduced).
"""

from __future__ import annotations

import json
import math
import numbers
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedp13n.rundir.layout import (  # noqa: E402  (the run-directory format)
    BASELINE_KEY,
    META_KEYS,
)


class PersonalizationResult(OrderedDict):
    """``baseline_metrics`` and one key per strategy -> nested metrics, leaves = lists.

    Attributes:
        client_ids: the sampled clients; leaf position ``i`` belongs to ``client_ids[i]``.
        seed: the seed the sample and the per-client randomness were derived from.
    """

    def __init__(
        self, *args: Any, client_ids: Sequence[str] = (), seed: int | None = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.client_ids: tuple[str, ...] = tuple(client_ids)
        self.seed = seed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict: ``client_ids``, ``seed``, then the metrics (NaN -> None)."""
        out: dict[str, Any] = {"client_ids": list(self.client_ids), "seed": self.seed}
        out.update((k, _jsonable(v)) for k, v in self.items())
        return out

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON text (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PersonalizationResult:
        """Inverse of :meth:`to_dict` (JSON ``null`` leaves come back as NaN)."""
        if "client_ids" not in data or BASELINE_KEY not in data:
            raise ValueError(
                "not a personalization result: expected the keys 'client_ids' and "
                f"'{BASELINE_KEY}' written by PersonalizationResult.to_dict()."
            )
        metrics = [(k, _from_jsonable(v)) for k, v in data.items() if k not in META_KEYS]
        return cls(metrics, client_ids=data["client_ids"], seed=data.get("seed"))

    def __repr__(self) -> str:
        keys = ", ".join(self.keys())
        return (
            f"PersonalizationResult({len(self.client_ids)} clients, seed={self.seed}, keys: {keys})"
        )


def to_scalar(value: Any, where: str) -> int | float:
    """A metric leaf as a Python int/float: 0-d tensors and numpy scalars are unwrapped."""
    if isinstance(value, torch.Tensor | np.ndarray):
        if value.ndim != 0:
            raise TypeError(
                f"metric {where} has shape {tuple(value.shape)}; every metric must be a scalar "
                "(a Python number or a 0-d tensor)."
            )
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, numbers.Real):
        raise TypeError(
            f"metric {where} is a {type(value).__name__}; every metric must be a scalar "
            "number (a Python int/float or a 0-d tensor)."
        )
    return value if isinstance(value, int) else float(value)


def scalar_tree(metrics: Any, where: str) -> Any:
    """Nested mapping of metric leaves -> ``OrderedDict`` of Python scalars (same nesting)."""
    if isinstance(metrics, Mapping):
        out = OrderedDict()
        for k, v in metrics.items():
            if not isinstance(k, str):
                raise TypeError(f"metric names must be strings, got {k!r} in {where}.")
            out[k] = scalar_tree(v, f"{where}/{k}")
        return out
    return to_scalar(metrics, where)


def stack_trees(trees: Sequence[Any], client_ids: Sequence[str], where: str) -> Any:
    """Per-client trees of scalars -> one tree whose leaves are lists (position = client).

    Every client must report the same nesting and names (TFF's fixed result type).
    """
    first = trees[0]
    for tree, cid in zip(trees[1:], client_ids[1:], strict=True):
        if _structure(tree) != _structure(first):
            raise ValueError(
                f"{where} returned differently structured metrics for client {cid!r} "
                f"({_structure(tree)}) than for client {client_ids[0]!r} ({_structure(first)}); "
                "a strategy must return the same metric names for every client."
            )
    return _stack(trees)


def _structure(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return tuple((k, _structure(v)) for k, v in tree.items())
    return None


def _stack(trees: Sequence[Any]) -> Any:
    if isinstance(trees[0], Mapping):
        return OrderedDict((k, _stack([t[k] for t in trees])) for k in trees[0])
    return list(trees)


def _jsonable(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_jsonable(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def _from_jsonable(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return OrderedDict((k, _from_jsonable(v)) for k, v in tree.items())
    if isinstance(tree, list):
        return [math.nan if v is None else v for v in tree]
    return tree
