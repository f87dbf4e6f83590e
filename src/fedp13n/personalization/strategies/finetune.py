"""Kind ``"finetune"``: TFF's fine-tuning, and the class every strategy extends.

A strategy is a frozen dataclass: its fields are its hyperparameters (the keys of a
``[[strategies]]`` table and of :func:`~fedp13n.personalization.registry.build_strategy`,
declared once, here and in each subclass), ``__post_init__`` checks them, and the instance
is the picklable no-argument builder that TFF's ``personalize_fn_dict`` wants: calling it
returns ``personalize_fn(model, train_data, test_data, context=None)``.

Training is the client program (:class:`fedp13n.client.LocalTraining`) run by
:func:`~fedp13n.personalization.p13n_utils.fine_tune`; a subclass changes only its hooks
(:meth:`FineTune.hooks`: which parameters train, a penalty, a hook after ``model.train()``)
or what it does around the training (:meth:`FineTune.run`: a held-out split, which
epoch or mixture to report). With no hook it trains bit-for-bit as
:func:`~fedp13n.personalization.build_personalize_fn` (which returns a ``FineTune``'s).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import nn

from fedp13n.client.program import EVAL_BATCH_SIZE, LocalTraining, evaluate
from fedp13n.data.client_data import ClientDataset
from fedp13n.personalization.inputs import as_client_dataset
from fedp13n.personalization.p13n_utils import fine_tune
from fedp13n.utils.checks import (
    check_bool,
    check_callable,
    check_positive_int,
)
from fedp13n.utils.optimizers import make_optimizer_fn
from fedp13n.utils.types import LossFn, OptimizerFn, PersonalizeFn

_CODE_ONLY = {"config": False}
_OPTIMIZER_FN = "params -> torch.optim.Optimizer, e.g. functools.partial(torch.optim.SGD, lr=0.02)"


@dataclass(frozen=True, kw_only=True)
class FineTune:
    """TFF's fine-tuning (Jiang et al. 2019 / TFF's ``p13n_utils``): ``epochs`` epochs of
    ``optimizer`` (``"sgd"`` or ``"adam"``, bias-corrected) at ``learning_rate`` (None:
    sgd 0.02, adam 0.002, TFF's rates) with SGD ``momentum`` (0 for adam) on batches of
    ``batch_size``, shuffled every epoch (``shuffle``), evaluated on the test data after
    every ``epochs_per_eval``-th epoch and the last.

    Returns ``epoch_<k>`` -> :func:`~fedp13n.personalization.evaluate_fn` metrics, then
    ``num_train_examples`` (summed over epochs). From code only (not configuration keys):
    ``optimizer_fn`` (any ``params -> torch.optim.Optimizer``, instead of ``optimizer``,
    ``learning_rate`` and ``momentum``), ``loss_fn`` and ``eval_batch_size``.
    """

    optimizer: str = "sgd"
    learning_rate: float | None = None
    momentum: float = 0.0
    batch_size: int = 20
    epochs: int = 3
    epochs_per_eval: int = 1
    shuffle: bool = True
    optimizer_fn: OptimizerFn | None = field(default=None, metadata=_CODE_ONLY)
    loss_fn: LossFn = field(default=F.cross_entropy, metadata=_CODE_ONLY)
    eval_batch_size: int = field(default=EVAL_BATCH_SIZE, metadata=_CODE_ONLY)

    def __post_init__(self) -> None:
        if self.optimizer_fn is None:
            make_optimizer_fn(self.optimizer, self.learning_rate, self.momentum)
        else:
            check_callable("optimizer_fn", self.optimizer_fn, _OPTIMIZER_FN)
            given = [k for k in ("optimizer", "learning_rate", "momentum") if _set_here(self, k)]
            if given:
                raise ValueError(f"optimizer_fn replaces {given}; give one or the other.")
        for name in ("batch_size", "epochs", "epochs_per_eval", "eval_batch_size"):
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
        object.__setattr__(self, "shuffle", check_bool("shuffle", self.shuffle))
        check_callable("loss_fn", self.loss_fn, "(outputs, targets) -> mean loss")

    @classmethod
    def from_tff(
        cls,
        optimizer_fn: OptimizerFn,
        batch_size: int,
        num_epochs: int,
        num_epochs_per_eval: int,
        shuffle: bool = True,
        *,
        loss_fn: LossFn = F.cross_entropy,
        eval_batch_size: int = EVAL_BATCH_SIZE,
        **fields: Any,
    ) -> FineTune:
        """This strategy from TFF's ``build_personalize_fn`` arguments (those named
        otherwise here checked under TFF's names) and the class's own ``fields``."""
        check_positive_int("num_epochs", num_epochs)
        check_positive_int("num_epochs_per_eval", num_epochs_per_eval)
        return cls(
            optimizer_fn=optimizer_fn,
            batch_size=batch_size,
            epochs=num_epochs,
            epochs_per_eval=num_epochs_per_eval,
            shuffle=shuffle,
            loss_fn=loss_fn,
            eval_batch_size=eval_batch_size,
            **fields,
        )

    def __call__(self) -> PersonalizeFn:
        """The strategy: ``personalize_fn(model, train_data, test_data, context=None)``."""
        return self.personalize

    def personalize(
        self, model: nn.Module, train_data: Any, test_data: Any, context: Any = None
    ) -> OrderedDict[str, Any]:
        """Train ``model`` in place (it holds the global weights) and report (see the class)."""
        del context  # no strategy uses extra information (TFF's example does the same)
        train = as_client_dataset(train_data, "train_data")
        test = as_client_dataset(test_data, "test_data")
        return self.run(model, train, test)

    def run(self, model: nn.Module, train: ClientDataset, test: ClientDataset) -> OrderedDict:
        """The metrics of fine-tuning on ``train``, evaluated on ``test``."""
        metrics: OrderedDict[str, Any] = OrderedDict()

        def on_eval(epoch: int) -> None:
            metrics[f"epoch_{epoch}"] = self.evaluate(model, test)

        metrics["num_train_examples"] = self.train(model, train, on_eval)
        return metrics

    def train(self, model: nn.Module, data: ClientDataset, on_eval: Callable[[int], None]) -> int:
        """The client program with this class's :meth:`hooks`, run by ``fine_tune``
        (``on_eval(epoch)`` at the evaluation epochs); the examples seen."""
        program = LocalTraining(
            self.build_optimizer_fn(),
            self.loss_fn,
            self.batch_size,
            epochs=self.epochs,
            shuffle=self.shuffle,
            **self.hooks(model),
        )
        return fine_tune(
            model, data, program, num_epochs_per_eval=self.epochs_per_eval, on_eval=on_eval
        )

    def hooks(self, model: nn.Module) -> dict[str, Any]:
        """``LocalTraining`` hooks for this call on ``model`` (``trainable``, ``penalty``,
        ``after_train_mode``); none for plain fine-tuning."""
        del model
        return {}

    def evaluate(self, model: nn.Module, data: ClientDataset) -> OrderedDict[str, Any]:
        """:func:`~fedp13n.personalization.evaluate_fn` with this loss and batch size."""
        return evaluate(model, data, self.loss_fn, self.eval_batch_size)

    def build_optimizer_fn(self) -> OptimizerFn:
        """``optimizer_fn``, or the one ``optimizer``, ``learning_rate``, ``momentum`` name."""
        if self.optimizer_fn is not None:
            return self.optimizer_fn
        return make_optimizer_fn(self.optimizer, self.learning_rate, self.momentum)

    def finetune_settings(self) -> dict[str, Any] | None:
        """The settings of plain fine-tuning, what a batched engine needs to run this
        strategy for many clients at once (:func:`fedp13n.engine.strategy_from_builder`
        calls it); None when the class changes the training or the report (it overrides
        one of :data:`PROGRAM_METHODS`)."""
        if any(getattr(type(self), m) is not getattr(FineTune, m) for m in PROGRAM_METHODS):
            return None
        return dict(
            optimizer_fn=self.build_optimizer_fn(),
            batch_size=self.batch_size,
            num_epochs=self.epochs,
            num_epochs_per_eval=self.epochs_per_eval,
            shuffle=self.shuffle,
            loss_fn=self.loss_fn,
            eval_batch_size=self.eval_batch_size,
        )


def tff_builder(cls: type[FineTune]) -> Callable[..., PersonalizeFn]:
    """``build_..._personalize_fn(optimizer_fn, batch_size, num_epochs,
    num_epochs_per_eval, shuffle=True, *, loss_fn=..., eval_batch_size=..., **fields)``:
    the strategy of ``cls`` from TFF's ``build_personalize_fn`` arguments
    (:meth:`FineTune.from_tff`) and the class's own ``fields`` (at its defaults unless given)."""

    def build(
        optimizer_fn: OptimizerFn,
        batch_size: int,
        num_epochs: int,
        num_epochs_per_eval: int,
        shuffle: bool = True,
        **fields: Any,
    ) -> PersonalizeFn:
        return cls.from_tff(
            optimizer_fn, batch_size, num_epochs, num_epochs_per_eval, shuffle, **fields
        )()

    build.__doc__ = f":class:`{cls.__name__}` with TFF's ``build_personalize_fn`` arguments."
    # bound as build_<module>_personalize_fn in cls's module: pickle finds it by that name
    build.__module__ = cls.__module__
    build.__name__ = build.__qualname__ = (
        f"build_{cls.__module__.rpartition('.')[2]}_personalize_fn"
    )
    return build


#: The methods that decide what a strategy trains and reports.
PROGRAM_METHODS = ("personalize", "run", "train", "hooks", "evaluate", "build_optimizer_fn")


def _set_here(strategy: FineTune, name: str) -> bool:
    """Whether ``strategy``'s field ``name`` differs from its class's default."""
    (f,) = (f for f in dataclasses.fields(strategy) if f.name == name)
    return getattr(strategy, name) != f.default


def is_strategy_class(obj: Any) -> bool:
    """Whether ``obj`` is a strategy class (:class:`FineTune` or a subclass)."""
    return isinstance(obj, type) and issubclass(obj, FineTune)


def strategy_keys(cls: type[FineTune]) -> dict[str, Any]:
    """The configuration keys of strategy class ``cls`` (its fields, less the code-only
    ones), its own first, then the fine-tuning ones, each with its default
    (``dataclasses.MISSING`` for a required one)."""
    keys = [f for f in dataclasses.fields(cls) if f.metadata.get("config", True)]
    shared = {f.name for f in dataclasses.fields(FineTune)}
    return {f.name: f.default for f in sorted(keys, key=lambda f: f.name in shared)}
