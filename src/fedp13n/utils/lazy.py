"""Lazy package exports (PEP 562): ``import fedp13n`` costs nothing until a name is used.

Why: importing torch takes seconds, and ``fedp13n --help`` or reading a run's CSV needs
none of it. A package lists its public names and the module each comes from; the module
is imported on first access of the name (and cached in the package's namespace).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; ``exports``: name -> module path.

    Use as ``__getattr__, __dir__ = lazy_exports(__name__, {"Name": "pkg.module"})``.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        importlib.import_module(package).__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__


def by_module(table: Mapping[str, str]) -> dict[str, str]:
    """``{"pkg.module": "Name Other"}`` as :func:`lazy_exports`' ``{name: module}``."""
    return {name: module for module, names in table.items() for name in names.split()}
