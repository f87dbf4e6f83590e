"""Personalization strategies by name: what configs and the command line refer to.

``build_strategy(kind, **params)`` returns a picklable no-argument builder (a
``functools.partial`` of the kind's factory), the value type of
:func:`~fedp13n.build_personalization_eval`'s ``personalize_fn_dict``; builders travel
to worker processes with cloudpickle. Parameter names are checked against the factory's
signature, and the factory is called once so a bad value fails at configuration time.

Kinds and their keyword parameters (defaults in brackets). Every kind takes the
fine-tuning parameters

* ``optimizer`` ["sgd"]: ``"sgd"`` or ``"adam"`` (``torch.optim.Adam``, bias-corrected);
* ``learning_rate`` [None: 0.02 for sgd, 0.002 for adam, TFF's example's rates,
  :data:`DEFAULT_LEARNING_RATES`; :func:`default_learning_rate` says a kind's];
* ``momentum`` [0.0]: SGD momentum (must be 0 for adam);
* ``batch_size`` [20], ``epochs`` [3], ``epochs_per_eval`` [1], ``shuffle`` [True];

and, per kind (builders in :mod:`fedp13n.personalization.strategies`):

* ``"finetune"``: the stock strategy, :func:`~fedp13n.personalization.build_personalize_fn`
  (Jiang et al. 2019 / TFF's ``p13n_utils``); nothing else.
* ``"head_only"``: only the head trains (FedPer, FedRep). ``head`` [None: the last module
  with parameters, ``fc2`` for the EMNIST models]: a module/parameter name or a list.
* ``"proximal"``: Ditto's ``loss + lam/2 ||w - w_global||^2``. ``lam`` (required, >= 0).
* ``"interpolation"``: ``alpha * fine-tuned + (1 - alpha) * global`` with ``alpha``
  chosen on held-out train data (APFL-style). ``alphas`` [0, 0.1, ..., 1],
  ``holdout_fraction`` [0.2], ``monitor`` ["loss" or "accuracy"].
* ``"early_stopping"``: the epoch chosen on held-out train data. ``holdout_fraction``
  [0.2], ``monitor`` ["loss"], ``include_epoch_0`` [True].
* ``"adam_recommended"``: the stock strategy with Adam at lr 5e-4 (the fix for TFF's
  Adam 0.002, which hurts a third of EMNIST clients by epoch 3). ``learning_rate``
  [5e-4], ``batch_size`` [20], ``epochs`` [3], ``epochs_per_eval`` [1], ``shuffle``
  [True]; ``optimizer`` ["adam"] may only be ``"adam"`` (another one is an error, not
  silently ignored); no ``momentum``.
* ``"package.module:function"``: a user factory, imported on use: a callable taking
  keyword hyperparameters and returning ``personalize_fn(model, train_data, test_data,
  context=None)``. Or register it under a name with :func:`register_strategy`.

The loss is cross-entropy throughout (EMNIST); build strategies directly with the
builders for another ``loss_fn``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from fedp13n.personalization.p13n_utils import build_personalize_fn
from fedp13n.personalization.strategies import (
    DEFAULT_ALPHAS,
    RECOMMENDED_ADAM_LR,
    build_early_stopping_personalize_fn,
    build_head_only_personalize_fn,
    build_interpolation_personalize_fn,
    build_proximal_personalize_fn,
    build_recommended_adam_personalize_fn,
)
from fedp13n.utils.checks import check_positive_number
from fedp13n.utils.optimizers import DEFAULT_LEARNING_RATES, OPTIMIZERS
from fedp13n.utils.optimizers import make_optimizer_fn as optimizer_fn_by_name
from fedp13n.utils.types import OptimizerFn, PersonalizeFn

StrategyFactory = Callable[..., PersonalizeFn]


def make_optimizer_fn(
    optimizer: str = "sgd", learning_rate: float | None = None, momentum: float = 0.0
) -> OptimizerFn:
    """A picklable ``params -> torch.optim.Optimizer`` from a name and a rate."""
    if optimizer not in DEFAULT_LEARNING_RATES:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}.")
    lr = DEFAULT_LEARNING_RATES[optimizer] if learning_rate is None else learning_rate
    lr = check_positive_number("learning_rate", lr)
    if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not momentum >= 0:
        raise ValueError(f"momentum must be a number >= 0, got {momentum!r}.")
    if optimizer == "adam" and momentum:
        raise ValueError(
            f"momentum={momentum!r} applies to sgd only; Adam has its own betas (use 0)."
        )
    return optimizer_fn_by_name(optimizer, lr, momentum=float(momentum))


# -- the built-in factories (module level: picklable by reference) ----------------------------
def finetune(
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    momentum: float = 0.0,
    batch_size: int = 20,
    epochs: int = 3,
    epochs_per_eval: int = 1,
    shuffle: bool = True,
) -> PersonalizeFn:
    """Kind ``"finetune"``: :func:`~fedp13n.personalization.build_personalize_fn`."""
    return build_personalize_fn(
        make_optimizer_fn(optimizer, learning_rate, momentum),
        batch_size,
        epochs,
        epochs_per_eval,
        shuffle,
    )


def head_only(
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    momentum: float = 0.0,
    batch_size: int = 20,
    epochs: int = 3,
    epochs_per_eval: int = 1,
    shuffle: bool = True,
    head: str | Sequence[str] | None = None,
) -> PersonalizeFn:
    """Kind ``"head_only"``: ``strategies.build_head_only_personalize_fn``."""
    return build_head_only_personalize_fn(
        make_optimizer_fn(optimizer, learning_rate, momentum),
        batch_size,
        epochs,
        epochs_per_eval,
        shuffle,
        head=head,
    )


def proximal(
    lam: float,
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    momentum: float = 0.0,
    batch_size: int = 20,
    epochs: int = 3,
    epochs_per_eval: int = 1,
    shuffle: bool = True,
) -> PersonalizeFn:
    """Kind ``"proximal"``: ``strategies.build_proximal_personalize_fn``."""
    return build_proximal_personalize_fn(
        make_optimizer_fn(optimizer, learning_rate, momentum),
        batch_size,
        epochs,
        epochs_per_eval,
        shuffle,
        lam=lam,
    )


def interpolation(
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    momentum: float = 0.0,
    batch_size: int = 20,
    epochs: int = 3,
    epochs_per_eval: int = 1,
    shuffle: bool = True,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    holdout_fraction: float = 0.2,
    monitor: str = "loss",
) -> PersonalizeFn:
    """Kind ``"interpolation"``: ``strategies.build_interpolation_personalize_fn``."""
    return build_interpolation_personalize_fn(
        make_optimizer_fn(optimizer, learning_rate, momentum),
        batch_size,
        epochs,
        epochs_per_eval,
        shuffle,
        alphas=alphas,
        holdout_fraction=holdout_fraction,
        monitor=monitor,
    )


def early_stopping(
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    momentum: float = 0.0,
    batch_size: int = 20,
    epochs: int = 3,
    epochs_per_eval: int = 1,
    shuffle: bool = True,
    holdout_fraction: float = 0.2,
    monitor: str = "loss",
    include_epoch_0: bool = True,
) -> PersonalizeFn:
    """Kind ``"early_stopping"``: ``strategies.build_early_stopping_personalize_fn``."""
    return build_early_stopping_personalize_fn(
        make_optimizer_fn(optimizer, learning_rate, momentum),
        batch_size,
        epochs,
        epochs_per_eval,
        shuffle,
        holdout_fraction=holdout_fraction,
        monitor=monitor,
        include_epoch_0=include_epoch_0,
    )


def adam_recommended(
    learning_rate: float = RECOMMENDED_ADAM_LR,
    batch_size: int = 20,
    epochs: int = 3,
    epochs_per_eval: int = 1,
    shuffle: bool = True,
    optimizer: str = "adam",
) -> PersonalizeFn:
    """Kind ``"adam_recommended"``: ``strategies.build_recommended_adam_personalize_fn``.

    It is Adam: ``optimizer`` may only say so (another one is a ``ValueError``, not
    silently ignored)."""
    if optimizer != "adam":
        raise ValueError(
            f"it fine-tunes with Adam, so optimizer {optimizer!r} contradicts it; drop "
            f"optimizer, or use kind 'finetune' with optimizer {optimizer!r}."
        )
    return build_recommended_adam_personalize_fn(
        batch_size, epochs, epochs_per_eval, shuffle, learning_rate=learning_rate
    )


_REGISTRY: dict[str, StrategyFactory] = {
    "finetune": finetune,
    "head_only": head_only,
    "proximal": proximal,
    "interpolation": interpolation,
    "early_stopping": early_stopping,
    "adam_recommended": adam_recommended,
}


_BUILT_IN = frozenset(_REGISTRY.values())


def _keyword_defaults(factory: StrategyFactory) -> dict[str, Any] | None:
    """The factory's keyword parameters and their defaults (``inspect.Parameter.empty``
    for a required one); None when it takes ``**kwargs`` or has no signature."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {
        p.name: p.default for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


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
    if rate is None and _REGISTRY[kind] in _BUILT_IN:  # make_optimizer_fn's rule
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
    """Make ``factory`` (keyword hyperparameters -> ``personalize_fn``) available as ``name``.

    Returns ``factory``. Registration lives in this process; the builders
    :func:`build_strategy` returns hold the factory itself, so workers do not need it.
    A name already taken is a ``ValueError`` unless ``replace=True``.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(
            f"strategy kind name must be a non-empty string without ':' (that form means "
            f"'module:function'), got {name!r}."
        )
    if not callable(factory):
        raise TypeError(
            f"the factory for strategy kind {name!r} must be callable (keyword "
            f"hyperparameters -> personalize_fn), got a {type(factory).__name__}."
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
    module_name, _, attr = kind.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ValueError(
            f"strategy kind {kind!r} is not of the form 'package.module:function' "
            "(e.g. 'my_strategies:build_my_strategy')."
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"strategy kind {kind!r}: cannot import module {module_name!r} ({e}); check the "
            "name and that its directory is on PYTHONPATH."
        ) from None
    except Exception as e:  # the user's module itself fails as it runs (NameError, ...)
        raise ValueError(
            f"strategy kind {kind!r}: importing module {module_name!r} raised "
            f"{_exception_text(e)}; fix the module."
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")][:20]
            raise ValueError(
                f"strategy kind {kind!r}: module {module_name!r} has no attribute {attr!r}; "
                f"it has {names}."
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(
            f"strategy kind {kind!r}: {attr!r} is a {type(obj).__name__}, not callable; it "
            "must be a factory (keyword hyperparameters -> personalize_fn)."
        )
    return obj


def build_strategy(kind: str, **params: Any) -> Callable[[], PersonalizeFn]:
    """A picklable no-argument builder of the strategy ``kind`` with ``params``.

    ``kind`` is a registered name (see the module docstring) or ``"module:function"``.
    Unknown or missing parameters are a ``ValueError`` listing the valid ones; the factory
    is called once here, so a bad value raises now (its own ``ValueError``/``TypeError``,
    prefixed with the kind) rather than in a worker.
    """
    factory = resolve_factory(kind)
    _check_params(kind, factory, params)
    builder = functools.partial(factory, **params)
    try:
        built = builder()
    except (ValueError, TypeError) as e:
        raise type(e)(f"strategy kind {kind!r}: {_one_line(str(e))}") from None
    except Exception as e:  # a user's factory failing in its own way (RuntimeError, ...)
        raise ValueError(
            f"strategy kind {kind!r}: the factory raised {_exception_text(e)}."
        ) from None
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
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none: let the call decide
        return
    accepted = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    valid = [p.name for p in accepted]
    required = [p.name for p in accepted if p.default is p.empty]
    if required[:3] == ["model", "train_data", "test_data"]:
        raise TypeError(
            f"strategy kind {kind!r} is a built strategy (it takes {required[:3]}), not a "
            "factory: a strategy kind names a factory that takes keyword hyperparameters "
            "and returns personalize_fn(model, train_data, test_data, context=None)."
        )
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        unknown = [k for k in params if k not in valid]
        if unknown:
            raise ValueError(
                f"strategy kind {kind!r} has no parameter(s) {unknown}; valid: {valid}."
            )
    missing = [name for name in required if name not in params]
    if missing:
        raise ValueError(f"strategy kind {kind!r} needs parameter(s) {missing}; valid: {valid}.")
