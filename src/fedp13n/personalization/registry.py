"""Personalization strategies by name: what configs and the command line refer to.

A kind names a strategy class of :mod:`fedp13n.personalization.strategies` (one file
each); its dataclass fields are its keyword parameters, the keys of a ``[[strategies]]``
table (defaults and checks in the class). ``build_strategy(kind, **params)`` constructs
it, so a bad value fails at configuration time; the instance is a picklable no-argument
builder, the value type of :func:`~fedp13n.build_personalization_eval`'s
``personalize_fn_dict``, and travels to worker processes with cloudpickle.

Every built-in kind takes :class:`~fedp13n.personalization.strategies.FineTune`'s
parameters (defaults in brackets):

* ``optimizer`` ["sgd"]: ``"sgd"`` or ``"adam"`` (``torch.optim.Adam``, bias-corrected);
* ``learning_rate`` [None: 0.02 for sgd, 0.002 for adam, TFF's example's rates,
  :data:`DEFAULT_LEARNING_RATES`; :func:`default_learning_rate` says a kind's];
* ``momentum`` [0.0]: SGD momentum (must be 0 for adam);
* ``batch_size`` [20], ``epochs`` [3], ``epochs_per_eval`` [1], ``shuffle`` [True];

and, per kind:

* ``"finetune"``: :class:`~fedp13n.personalization.strategies.FineTune`, the stock
  strategy (Jiang et al. 2019 / TFF's ``p13n_utils``); nothing else.
* ``"head_only"``: :class:`~fedp13n.personalization.strategies.HeadOnly`, only the head
  trains (FedPer, FedRep). ``head`` [None: the last module with parameters, ``fc2`` for
  the EMNIST models]: a module/parameter name or a list.
* ``"proximal"``: :class:`~fedp13n.personalization.strategies.Proximal`, Ditto's
  ``loss + lam/2 ||w - w_global||^2``. ``lam`` (required, >= 0).
* ``"interpolation"``: :class:`~fedp13n.personalization.strategies.Interpolation`,
  ``alpha * fine-tuned + (1 - alpha) * global`` with ``alpha`` chosen on held-out train
  data (APFL-style). ``alphas`` [0, 0.1, ..., 1], ``holdout_fraction`` [0.2], ``monitor``
  ["loss" or "accuracy"].
* ``"early_stopping"``: :class:`~fedp13n.personalization.strategies.EarlyStopping`, the
  epoch chosen on held-out train data. ``holdout_fraction`` [0.2], ``monitor`` ["loss"],
  ``include_epoch_0`` [True].
* ``"adam_recommended"``: :class:`~fedp13n.personalization.strategies.AdamRecommended`,
  the stock strategy with Adam at lr 5e-4 (the fix for TFF's Adam 0.002, which hurts a
  third of EMNIST clients by epoch 3). ``learning_rate`` [5e-4]; ``optimizer`` ["adam"]
  may only be ``"adam"`` (another one is an error, not silently ignored).
* ``"bias_only"``: :class:`~fedp13n.personalization.strategies.BiasOnly`, only the
  parameters named ``bias`` train (BitFit); nothing else.
* ``"package.module:function"``: a user factory, imported on use: a strategy class, or a
  callable taking keyword hyperparameters and returning ``personalize_fn(model,
  train_data, test_data, context=None)``. Or register it under a name with
  :func:`register_strategy`.

The loss is cross-entropy throughout (EMNIST); construct the classes directly with
``loss_fn=...`` (and ``optimizer_fn=...`` for any optimizer) from code.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

from fedp13n.personalization.strategies import (
    AdamRecommended,
    BiasOnly,
    EarlyStopping,
    FineTune,
    HeadOnly,
    Interpolation,
    Proximal,
)
from fedp13n.personalization.strategies.finetune import is_strategy_class, strategy_keys
from fedp13n.utils.imports import resolve_import_path
from fedp13n.utils.optimizers import DEFAULT_LEARNING_RATES, make_optimizer_fn
from fedp13n.utils.types import PersonalizeFn

#: A strategy class, or keyword hyperparameters -> ``personalize_fn``.
StrategyFactory = Callable[..., Any]

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "build_strategy",
    "default_learning_rate",
    "default_optimizer",
    "make_optimizer_fn",
    "register_strategy",
    "resolve_factory",
    "strategy_kinds",
    "strategy_parameters",
    "unregister_strategy",
]

_REGISTRY: dict[str, StrategyFactory] = {
    "finetune": FineTune,
    "head_only": HeadOnly,
    "proximal": Proximal,
    "interpolation": Interpolation,
    "early_stopping": EarlyStopping,
    "adam_recommended": AdamRecommended,
    "bias_only": BiasOnly,
}


def _parameters(factory: StrategyFactory) -> tuple[dict[str, Any], bool] | None:
    """The factory's keyword parameters with their defaults (``inspect.Parameter.empty``
    for a required one; a strategy class's: its configuration keys) and whether it takes
    ``**kwargs``; None when it has no signature."""
    if is_strategy_class(factory):
        keys = strategy_keys(factory)
        empty = inspect.Parameter.empty
        return {k: empty if v is dataclasses.MISSING else v for k, v in keys.items()}, False
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return (
        {p.name: p.default for p in parameters if p.kind in named},
        any(p.kind is p.VAR_KEYWORD for p in parameters),
    )


def _keyword_defaults(factory: StrategyFactory) -> dict[str, Any] | None:
    """:func:`_parameters`' defaults; None when it takes ``**kwargs`` or has no signature."""
    found = _parameters(factory)
    return None if found is None or found[1] else found[0]


def default_optimizer(kind: str) -> str | None:
    """The optimizer a registered ``kind`` fine-tunes with when none is given (``"sgd"``;
    ``"adam"`` for ``adam_recommended``); None for a kind without one, or for a
    ``"module:function"`` (not imported for this: its own defaults apply)."""
    defaults = _keyword_defaults(_REGISTRY[kind]) if kind in _REGISTRY else None
    optimizer = (defaults or {}).get("optimizer")
    return optimizer if isinstance(optimizer, str) else None


def default_learning_rate(kind: str, optimizer: str | None = None) -> float | None:
    """The rate a registered ``kind`` fine-tunes at when none is given: the kind's own
    default (``adam_recommended``: 5e-4), else its ``optimizer``'s
    (:data:`DEFAULT_LEARNING_RATES`: sgd 0.02, adam 0.002). None where that is unknown
    here (a ``"module:function"``, a user kind with no numeric default)."""
    defaults = _keyword_defaults(_REGISTRY[kind]) if kind in _REGISTRY else None
    if not defaults or "learning_rate" not in defaults:
        return None
    rate = defaults["learning_rate"]
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        return rate
    if rate is None and is_strategy_class(_REGISTRY[kind]):  # make_optimizer_fn's rule
        if optimizer is None:
            optimizer = default_optimizer(kind)
        return DEFAULT_LEARNING_RATES.get(optimizer)  # type: ignore[arg-type]
    return None


def strategy_parameters(kind: str) -> list[str] | None:
    """The keyword parameters of ``kind``'s factory (importing a ``"module:function"``);
    None when it takes any (``**kwargs``). Raises like :func:`resolve_factory`."""
    defaults = _keyword_defaults(resolve_factory(kind))
    return None if defaults is None else list(defaults)


def strategy_kinds() -> list[str]:
    """The registered kind names, built-in first, then in order of registration."""
    return list(_REGISTRY)


def register_strategy(
    name: str, factory: StrategyFactory, *, replace: bool = False
) -> StrategyFactory:
    """Make ``factory`` available as ``name``: a strategy class (a subclass of
    :class:`~fedp13n.personalization.strategies.FineTune`, whose fields are the kind's
    parameters) or a function of keyword hyperparameters returning ``personalize_fn``.

    Returns ``factory``. Registration lives in this process; the builders
    :func:`build_strategy` returns hold the class or factory itself, so workers do not
    need it.
    A name already taken is a ``ValueError`` unless ``replace=True``.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(
            f"strategy kind name must be a non-empty string without ':' (that form means "
            f"'module:function'), got {name!r}."
        )
    if not callable(factory):
        raise TypeError(
            f"the factory for strategy kind {name!r} must be callable (a strategy class, or "
            f"keyword hyperparameters -> personalize_fn), got a {type(factory).__name__}."
        )
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"strategy kind {name!r} is already registered; pass replace=True to replace it."
        )
    _REGISTRY[name] = factory
    return factory


def unregister_strategy(name: str) -> None:
    """Remove a registered kind (a ``KeyError`` if there is none)."""
    del _REGISTRY[name]


def resolve_factory(kind: str) -> StrategyFactory:
    """The factory of a registered kind or of a ``"module:function"`` path (imported)."""
    if not isinstance(kind, str):
        raise TypeError(f"strategy kind must be a string, got {type(kind).__name__}.")
    if kind in _REGISTRY:
        return _REGISTRY[kind]
    if ":" not in kind:
        raise ValueError(
            f"unknown strategy kind {kind!r}; known kinds: {strategy_kinds()}, or "
            "'package.module:function' for your own factory."
        )
    obj = resolve_import_path(kind, "strategy kind")
    if not callable(obj):
        raise TypeError(
            f"strategy kind {kind!r}: {kind.partition(':')[2]!r} is a {type(obj).__name__}, not "
            "callable; it must be a factory (keyword hyperparameters -> personalize_fn)."
        )
    return obj


def build_strategy(kind: str, **params: Any) -> Callable[[], PersonalizeFn]:
    """A picklable no-argument builder of the strategy ``kind`` with ``params``.

    ``kind`` is a registered name (see the module docstring) or ``"module:function"``.
    Unknown or missing parameters are a ``ValueError`` listing the valid ones. A strategy
    class is constructed (the instance is the builder); a factory function is called once
    here and the builder is ``functools.partial(factory, **params)``. Either way a bad
    value raises now (its own ``ValueError``/``TypeError``, prefixed with the kind) rather
    than in a worker.
    """
    factory = resolve_factory(kind)
    _check_params(kind, factory, params)
    if is_strategy_class(factory):
        return _call(kind, functools.partial(factory, **params))
    builder = functools.partial(factory, **params)
    built = _call(kind, builder)
    if not callable(built):
        raise TypeError(
            f"strategy kind {kind!r}: the factory returned a {type(built).__name__}; it must "
            "return a callable personalize_fn(model, train_data, test_data, context=None)."
        )
    if _takes_no_arguments(built):
        raise TypeError(
            f"strategy kind {kind!r}: the factory returned a callable that takes no "
            "arguments (a strategy builder?); it must return the strategy itself, "
            "personalize_fn(model, train_data, test_data, context=None)."
        )
    return builder


def _call(kind: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, its errors one line prefixed with the kind."""
    try:
        return fn()
    except (ValueError, TypeError) as e:
        raise type(e)(f"strategy kind {kind!r}: {_one_line(str(e))}") from None
    except Exception as e:  # a user's factory failing in its own way (RuntimeError, ...)
        raise ValueError(
            f"strategy kind {kind!r}: the factory raised {_exception_text(e)}."
        ) from None


def _takes_no_arguments(fn: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return not any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        for p in signature.parameters.values()
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _exception_text(e: BaseException) -> str:
    """``NameError: name 'x' is not defined``: an exception's type and message, one line."""
    message = _one_line(str(e))
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _check_params(kind: str, factory: StrategyFactory, params: dict[str, Any]) -> None:
    found = _parameters(factory)
    if found is None:  # some builtins have no signature: let the call decide
        return
    defaults, open_ended = found
    valid = list(defaults)
    required = [k for k, v in defaults.items() if v is inspect.Parameter.empty]
    if required[:3] == ["model", "train_data", "test_data"]:
        raise TypeError(
            f"strategy kind {kind!r} is a built strategy (it takes {required[:3]}), not a "
            "factory: a strategy kind names a factory that takes keyword hyperparameters "
            "and returns personalize_fn(model, train_data, test_data, context=None)."
        )
    if not open_ended:
        unknown = [k for k in params if k not in valid]
        if unknown:
            raise ValueError(
                f"strategy kind {kind!r} has no parameter(s) {unknown}; valid: {valid}."
            )
    missing = [name for name in required if name not in params]
    if missing:
        raise ValueError(f"strategy kind {kind!r} needs parameter(s) {missing}; valid: {valid}.")
