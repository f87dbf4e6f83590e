"""A researcher's own code named ``"package.module:function"`` (a dataset, a model, a loss).

:func:`resolve_import_path` imports the module and returns the attribute, each failure a
one-line ``ValueError`` naming the setting, the problem and the fix. A module that is not
importable from ``sys.path`` but sits in the current folder (``my_task.py`` beside the
command, as ``python -m`` would find it) is imported from there, and its functions and
classes are then pickled by value (cloudpickle), so worker processes and Ray workers need
not find the file.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any


def is_import_path(value: Any) -> bool:
    """Whether ``value`` has the ``"module:function"`` form (registered names have no ':')."""
    return isinstance(value, str) and ":" in value


def resolve_import_path(path: str, what: str) -> Any:
    """The attribute ``path`` (``"package.module:function"``, dotted attributes allowed)
    names; ``what`` names the setting in the errors (e.g. ``"dataset"``)."""
    module_name, _, attr = path.partition(":")
    if not module_name.strip() or not attr.strip() or ":" in attr:
        raise ValueError(
            f"{what} {path!r} is not of the form 'package.module:function' (e.g. 'my_task:load')."
        )
    module = _import(module_name, path, what)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")][:20]
            raise ValueError(
                f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}; it has "
                f"{names}."
            )
        obj = getattr(obj, part)
    return obj


def _import(module_name: str, path: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top = module_name.split(".")[0]
        here = os.getcwd()
        if e.name != top or here in sys.path or not _in_folder(here, top):
            raise ValueError(
                f"{what} {path!r}: cannot import module {module_name!r} ({e}); check the "
                "name and that its folder is the current one or on PYTHONPATH."
            ) from None
        sys.path.append(here)  # as `python -m` finds it; appended: shadows nothing
        module = _import(module_name, path, what)
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[top])
        return module
    except Exception as e:  # the module itself fails as it runs (NameError, ...)
        message = " ".join(str(e).split())
        raise ValueError(
            f"{what} {path!r}: importing module {module_name!r} raised "
            f"{type(e).__name__}{': ' + message if message else ''}; fix the module."
        ) from None


def _in_folder(folder: str, top: str) -> bool:
    return os.path.isfile(os.path.join(folder, top + ".py")) or os.path.isfile(
        os.path.join(folder, top, "__init__.py")
    )
