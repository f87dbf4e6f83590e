"""A small bounded cache: keep the most recently used entries, drop the oldest.

Worker processes keep a few expensive objects (a built model, a fetched dataset) across
tasks; bounding the cache keeps objects of finished runs from accumulating.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class LRUCache:
    """At most ``size`` entries; :meth:`get` builds a missing one with ``make()``."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}.")
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = make()
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value
