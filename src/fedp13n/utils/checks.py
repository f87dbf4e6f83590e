"""Argument checks shared by the library API and the configuration.

Each raises with a message that names the argument, the value it got and what it
accepts; ``error`` picks the exception type (``ValueError`` by default; the config layer
passes its own ``ConfigError``, a ``ValueError``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any, error: type[Exception] = ValueError) -> int:
    """``value`` as an int >= 1."""
    if not _is_int(value) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_non_negative_int(name: str, value: Any, error: type[Exception] = ValueError) -> int:
    """``value`` as an int >= 0."""
    if not _is_int(value) or value < 0:
        raise error(f"{name} must be a non-negative integer, got {value!r}.")
    return int(value)


def check_positive_number(name: str, value: Any, error: type[Exception] = ValueError) -> float:
    """``value`` as a finite float > 0 (``inf`` and ``nan`` are refused)."""
    if not _is_number(value) or not math.isfinite(value) or not value > 0:
        raise error(f"{name} must be a finite positive number, got {value!r}.")
    return float(value)


def check_non_negative_number(
    name: str, value: Any, error: type[Exception] = ValueError, hint: str = ""
) -> float:
    """``value`` as a finite float >= 0; ``hint`` (e.g. ``" (0 = off)"``) follows the name."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise error(f"{name} must be a finite number >= 0{hint}, got {value!r}.")
    return float(value)


def check_fraction(
    name: str, value: Any, *, closed_right: bool = False, error: type[Exception] = ValueError
) -> float:
    """``value`` as a float in [0, 1) (or [0, 1] with ``closed_right``)."""
    ok = _is_number(value) and value >= 0.0 and (value <= 1.0 if closed_right else value < 1.0)
    if not ok:
        bound = "]" if closed_right else ")"
        raise error(f"{name} must be a number in [0, 1{bound}, got {value!r}.")
    return float(value)


def check_callable(name: str, value: Any, what: str = "") -> None:
    """A ``TypeError`` unless ``value`` is callable; ``what`` says what it should be."""
    if not callable(value):
        hint = f" ({what})" if what else ""
        raise TypeError(f"{name} must be callable{hint}, got {type(value).__name__}.")


def check_bool(name: str, value: Any, error: type[Exception] = TypeError) -> bool:
    """``value`` as a bool (True/False or a numpy bool): a string such as ``"no"`` would
    otherwise count as true."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise error(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_seed(value: Any, name: str = "seed", error: type[Exception] = TypeError) -> int:
    """``value`` as an int seed (an integer, numpy integers included; not a bool, a float
    or a string, which would silently become another seed)."""
    if not _is_int(value):
        raise error(f"{name} must be an int, got {value!r}.")
    return int(value)


def check_id_list(name: str, ids: Any) -> list[Any]:
    """``ids`` as a list of client ids; a one-line ``TypeError`` for a single string (which
    would otherwise be read letter by letter) or a non-sequence."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of client ids, got the string {ids!r}; use [{ids!r}]."
        )
    try:
        return list(ids)
    except TypeError:
        raise TypeError(f"{name} must be a list of client ids, got {type(ids).__name__}.") from None


def error_line(e: BaseException) -> str:
    """``RuntimeError: mat1 and mat2 shapes cannot be multiplied``: an exception's type and
    the first line of its message, to quote inside a one-line error."""
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
