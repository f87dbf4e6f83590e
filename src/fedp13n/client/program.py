"""One client's program: local training and evaluation, each written once.

FedAvg's and Reptile's client work, the stock personalization strategy, every strategy of
:mod:`fedp13n.personalization.strategies` and every evaluation run :class:`LocalTraining`
and :func:`evaluate`; a caller sets only what differs (which parameters train, a penalty,
a hook after ``model.train()``, a callback after every epoch, loss and metric sums).

Batches come from :func:`fedp13n.data.pipeline.batch_plan`. With the per-epoch pipeline
(``"epochs"``, no ``max_steps``) the plan is cut epoch by epoch: ``model.train()`` (then
``after_train_mode()``) before every epoch, ``on_epoch_end(epoch)`` after it, one
permutation per epoch from the generator (the same draws as the whole plan at once).
TFF's stream (``"tff"``) and a step limit are one segment: ``model.train()`` once, no
epoch callback. The example order comes only from the generator handed to
:meth:`LocalTraining.run`; dropout from torch's global RNG, as the caller seeded it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedp13n.data.client_data import ClientDataset
from fedp13n.data.pipeline import DEFAULT_SHUFFLE_BUFFER, batch_plan
from fedp13n.models.objectives import accuracy_of
from fedp13n.utils.checks import error_line
from fedp13n.utils.device import module_device
from fedp13n.utils.types import LossFn, MetricFn, OptimizerFn

#: Evaluation batch size of :func:`evaluate` (fedp13n's ``evaluate_fn``) and of the engine:
#: large because it only trades memory for speed (only the num_batches counter depends on it).
EVAL_BATCH_SIZE = 1000


def generator_from_torch() -> np.random.Generator:
    """A numpy Generator seeded from one draw of torch's global RNG: how personalization
    strategies get their shuffle order (one ``torch.manual_seed`` fixes it and dropout)."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng(seed)


@dataclass
class TrainStats:
    """What :meth:`LocalTraining.run` counted: examples processed (over all epochs) and,
    with a ``metric_fn``, the sums over them of the loss (without penalty) and the metric."""

    num_trained: int
    loss_sum: float = 0.0
    metric_sum: float = 0.0
    #: the optimizer steps taken (SCAFFOLD's K)
    num_steps: int = 0


@dataclass
class LocalTraining:
    """One client's local training: SGD-style steps of ``optimizer_fn`` on ``loss_fn``.

    Args:
        optimizer_fn: ``params -> torch.optim.Optimizer``, built fresh at every run.
        loss_fn: ``(outputs, targets) -> batch mean`` loss.
        batch_size, epochs, shuffle, pipeline, shuffle_buffer, max_steps: the batch plan
            (:func:`~fedp13n.data.pipeline.batch_plan`; its default pipeline, one pass
            per epoch, is personalization's).
        trainable: names of the parameters that train; every other parameter has
            ``requires_grad`` off during the run (restored afterwards) and is not given to
            the optimizer. ``None``: ``model.parameters()`` go to the optimizer as they are.
        penalty: ``() -> tensor`` added to every batch's loss (e.g. a proximal term).
        after_train_mode: runs after every ``model.train()`` (e.g. frozen batch norms
            back to eval mode).
        on_epoch_end: ``epoch -> None`` after every epoch (1-based), per-epoch plan only;
            which epochs to evaluate or keep is the caller's business.
        metric_fn: with it, the loss and ``metric_fn(outputs, targets)`` are summed over
            the processed examples (batch mean times batch size, in float64).
    """

    optimizer_fn: OptimizerFn
    loss_fn: LossFn
    batch_size: int
    epochs: int | None = 1
    shuffle: bool = False
    pipeline: str = "epochs"
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    max_steps: int | None = None
    trainable: Sequence[str] | None = None
    penalty: Callable[[], torch.Tensor] | None = None
    after_train_mode: Callable[[], None] | None = None
    on_epoch_end: Callable[[int], None] | None = None
    metric_fn: MetricFn | None = None

    @property
    def per_epoch(self) -> bool:
        """Whether the plan is cut into epochs (see the module docstring)."""
        return self.pipeline == "epochs" and self.epochs is not None and self.max_steps is None

    def run(
        self,
        model: nn.Module,
        data: ClientDataset,
        generator: np.random.Generator | None = None,
        device: torch.device | None = None,
    ) -> TrainStats:
        """Train ``model`` in place on ``data``; ``generator`` draws the example order
        (needed with ``shuffle``); ``device``: where batches go (default: the model's)."""
        if self.on_epoch_end is not None and not self.per_epoch:
            raise ValueError(
                "on_epoch_end needs the per-epoch plan (pipeline 'epochs', no max_steps); "
                f"got pipeline={self.pipeline!r}, max_steps={self.max_steps!r}."
            )
        named = list(model.named_parameters())
        if self.trainable is None:
            if not any(p.requires_grad for _, p in named):
                raise ValueError(
                    f"the model ({type(model).__name__}) has no trainable parameters (none "
                    "with requires_grad), so there is nothing to train; give it some."
                )
            optimizer = _checked_optimizer(self.optimizer_fn(model.parameters()))
            return self._loop(model, data, optimizer, generator, device)
        chosen = set(self.trainable)
        was = {n: p.requires_grad for n, p in named}
        optimizer = _checked_optimizer(self.optimizer_fn([p for n, p in named if n in chosen]))
        try:
            for n, p in named:
                p.requires_grad_(n in chosen)
            return self._loop(model, data, optimizer, generator, device)
        finally:
            for n, p in named:
                p.requires_grad_(was[n])

    def segments(self, n: int, generator: np.random.Generator | None) -> Iterator[list]:
        """The batch plan of ``n`` examples, one list of index arrays per epoch (or one
        for the whole plan): this program's loop, and that of the methods whose step is
        not one batch's (Per-FedAvg, pFedMe)."""
        if self.per_epoch:
            for _ in range(self.epochs):
                yield batch_plan(n, self.batch_size, shuffle=self.shuffle, generator=generator)
            return
        yield batch_plan(
            n,
            self.batch_size,
            epochs=self.epochs,
            shuffle=self.shuffle,
            generator=generator,
            pipeline=self.pipeline,
            shuffle_buffer=self.shuffle_buffer,
            max_steps=self.max_steps,
        )

    def _loop(
        self,
        model: nn.Module,
        data: ClientDataset,
        optimizer: torch.optim.Optimizer,
        generator: np.random.Generator | None,
        device: torch.device | None,
    ) -> TrainStats:
        device = module_device(model) if device is None else device
        loss_sum: float | torch.Tensor = 0.0
        metric_sum: float | torch.Tensor = 0.0
        seen = steps = 0
        for epoch, plan in enumerate(self.segments(len(data), generator), start=1):
            model.train()
            if self.after_train_mode is not None:
                self.after_train_mode()
            for idx in plan:
                x, y = data.batch(idx, device)
                optimizer.zero_grad(set_to_none=True)
                outputs = model(x)
                loss = self.loss_fn(outputs, y) if steps else checked_loss(self.loss_fn, outputs, y)
                objective = loss if self.penalty is None else loss + self.penalty()
                objective.backward()
                optimizer.step()
                if self.metric_fn is not None:
                    with torch.no_grad():
                        loss_sum = _add(loss_sum, loss, len(y))
                        metric_sum = _add(metric_sum, self.metric_fn(outputs, y), len(y))
                seen += len(y)
                steps += 1
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch)
        return TrainStats(seen, float(loss_sum), float(metric_sum), steps)


def _checked_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer_fn returned {type(optimizer).__name__}, not a torch.optim.Optimizer; "
            "pass params -> optimizer, e.g. functools.partial(torch.optim.SGD, lr=0.02)."
        )
    return optimizer


def checked_loss(loss_fn: LossFn, outputs: Any, y: torch.Tensor, train: bool = True) -> Any:
    """``loss_fn(outputs, y)`` of a client's first batch, or a ``TypeError``/``ValueError``
    naming what does not fit: a model output that is no float tensor (a tuple, a dict,
    arg-max classes), a loss that fails on it or is no one-element tensor (with a gradient
    when training): user models and losses fail here, not deep inside torch."""
    what = f"labels {tuple(y.shape)} {str(y.dtype).replace('torch.', '')}"
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point():
        got = (f"a {str(outputs.dtype).replace('torch.', '')} tensor"
               if isinstance(outputs, torch.Tensor) else f"a {type(outputs).__name__}")  # fmt: skip
        raise TypeError(
            f"the model's forward returned {got} for a batch with {what}; it must return "
            "one float tensor, the logits (batch, classes) (or the loss_fn's predictions)."
        )
    try:
        loss = loss_fn(outputs, y)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise TypeError(
            f"the loss failed on the model's output {tuple(outputs.shape)} and {what}: "
            f"{error_line(e)}; the model must output logits (batch, classes) "
            "for integer labels, or pass a loss_fn that takes its output."
        ) from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = (
            f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        )
        raise ValueError(
            f"loss_fn returned {got}, not one number as a tensor: it must return the "
            "batch's mean loss (e.g. reduction='mean')."
        )
    if train and not loss.requires_grad:
        raise ValueError(
            "loss_fn's value has no gradient (computed without the model's output, or "
            "detached); it must be a differentiable function of the output."
        )
    return loss


def _add(total: float | torch.Tensor, value: object, n: int) -> float | torch.Tensor:
    """``total + value * n`` in float64, without waiting for a device: ``value`` (a batch
    mean) stays a tensor where it is one (the same IEEE operations as ``float(value) * n``)."""
    if isinstance(value, torch.Tensor):
        return total + value.detach().double() * n
    return total + float(value) * n


def proximal_penalty(
    model: nn.Module, anchor: Mapping[str, torch.Tensor], mu: float, names: Sequence[str]
) -> Callable[[], torch.Tensor]:
    """``() -> mu/2 * sum_n ||p_n - anchor_n||^2`` over the parameters ``names`` of
    ``model`` (the anchor, e.g. the round's global weights, is copied to each parameter's
    device and dtype once, here; it carries no gradient): the ``penalty`` of FedProx,
    Ditto (:mod:`fedp13n.algorithms.fedprox`, :mod:`fedp13n.algorithms.ditto`) and the
    proximal personalization strategy."""
    params = dict(model.named_parameters())
    pairs = [(params[n], anchor[n].detach().to(params[n].device, params[n].dtype)) for n in names]
    half_mu = mu / 2.0

    def penalty() -> torch.Tensor:
        return half_mu * sum((p - a).pow(2).sum() for p, a in pairs)

    return penalty


def evaluate(
    model: nn.Module, data: ClientDataset, loss_fn: LossFn, batch_size: int = EVAL_BATCH_SIZE
) -> OrderedDict[str, Any]:
    """``model``'s metrics on ``data`` in TFF's names, NaN without examples: the semantics
    of ``fedp13n.evaluate_fn`` (which checks its arguments and calls this). The accuracy
    is the one ``loss_fn`` carries (:func:`fedp13n.models.objectives.accuracy_of`: a
    task's may leave target ids out of the count), NaN when no target is counted."""
    count = accuracy_of(loss_fn).counts
    was_training = model.training
    model.eval()
    loss_sum, correct, label_count, classification = 0.0, 0, 0, None
    try:
        with torch.no_grad():
            for x, y in data.batches(batch_size, device=module_device(model)):
                out = model(x)
                first = classification is None  # the first batch: a loss of the model's output
                loss = checked_loss(loss_fn, out, y, train=False) if first else loss_fn(out, y)
                loss_sum += float(loss) * len(y)
                if classification is None:
                    classification = not y.is_floating_point() and out.dim() == y.dim() + 1
                if classification:
                    right, counted = count(out, y)
                    correct += int(right)
                    label_count += int(counted)
    finally:
        model.train(was_training)
    n = len(data)
    metrics: OrderedDict[str, Any] = OrderedDict(num_test_examples=n)
    metrics["loss"] = loss_sum / n if n else math.nan
    if classification is None:  # no batch: decide from the labels alone
        classification = not np.issubdtype(data.y.dtype, np.floating)
    if classification:
        metrics["accuracy"] = correct / label_count if label_count else math.nan
        metrics["sparse_categorical_accuracy"] = metrics["accuracy"]
    metrics["num_examples"] = n
    metrics["num_batches"] = math.ceil(n / batch_size)
    return metrics
