"""What the strategies share: the fine-tuning loop, the held-out split, argument checks.

The loop is :func:`~fedp13n.personalization.p13n_utils.build_personalize_fn`'s, step for
step: the shuffle generator's seed is drawn from torch's global RNG at the start of the
call, every epoch is one :func:`~fedp13n.data.pipeline.batch_plan` pass (a fresh
permutation per epoch, the same one ``ClientDataset.batches`` draws), ``model.train()``
before every epoch, and evaluations after every ``num_epochs_per_eval`` epochs and after
the last. With no extra hook it trains bit-for-bit like the stock strategy (tested).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from fedp13n.data.client_data import ClientDataset
from fedp13n.data.pipeline import batch_plan
from fedp13n.utils.checks import check_callable, check_fraction, check_positive_int
from fedp13n.utils.device import module_device
from fedp13n.utils.types import LossFn

#: What the validation metric of a held-out split may be, and whether larger is better.
MONITORS = {"loss": False, "accuracy": True}


def generator_from_torch() -> np.random.Generator:
    """A numpy Generator seeded from one draw of torch's global RNG (the stock convention)."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng(seed)


def check_loop_args(
    optimizer_fn: Any,
    batch_size: Any,
    num_epochs: Any,
    num_epochs_per_eval: Any,
    loss_fn: Any,
    eval_batch_size: Any,
) -> None:
    """The checks of ``build_personalize_fn``'s arguments, with the shared helpers."""
    check_callable(
        "optimizer_fn",
        optimizer_fn,
        "params -> torch.optim.Optimizer, e.g. functools.partial(torch.optim.SGD, lr=0.02)",
    )
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_epochs", num_epochs)
    check_positive_int("num_epochs_per_eval", num_epochs_per_eval)
    check_positive_int("eval_batch_size", eval_batch_size)
    check_callable("loss_fn", loss_fn, "(outputs, targets) -> mean loss")


def check_holdout_fraction(value: Any) -> float:
    """A fraction in (0, 1)."""
    fraction = check_fraction("holdout_fraction", value)
    if fraction == 0.0:
        raise ValueError(
            "holdout_fraction must be in (0, 1), got 0; the strategy chooses on held-out "
            "train examples (e.g. 0.2)."
        )
    return fraction


def check_monitor(value: Any) -> str:
    if value not in MONITORS:
        raise ValueError(f"monitor must be one of {sorted(MONITORS)}, got {value!r}.")
    return value


def num_holdout(num_examples: int, fraction: float) -> int:
    """How many train examples are held out: ``round(fraction * n)`` (halves up), at least
    1 and at most ``n - 1``; 0 when ``n < 2`` (nothing can be held out *and* trained on)."""
    if num_examples < 2:
        return 0
    return min(num_examples - 1, max(1, math.floor(fraction * num_examples + 0.5)))


def holdout_split(
    data: ClientDataset, fraction: float, generator: np.random.Generator
) -> tuple[ClientDataset, ClientDataset]:
    """``(rest, holdout)``: the first :func:`num_holdout` positions of
    ``generator.permutation(n)`` are held out; both parts keep the stored order."""
    n = len(data)
    k = num_holdout(n, fraction)
    order = generator.permutation(n)
    held = np.sort(order[:k])
    rest = np.sort(order[k:])
    return subset(data, rest), subset(data, held)


def subset(data: ClientDataset, index: np.ndarray) -> ClientDataset:
    return data.subset(index)


def fine_tune(
    model: nn.Module,
    train: ClientDataset,
    *,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    num_epochs: int,
    num_epochs_per_eval: int,
    generator: np.random.Generator | None,
    loss_fn: LossFn,
    on_eval: Callable[[int], None],
    penalty: Callable[[], torch.Tensor] | None = None,
    after_train_mode: Callable[[], None] | None = None,
) -> int:
    """Train ``model`` in place; call ``on_eval(epoch)`` at every evaluation epoch.

    ``generator`` None means no shuffling (stored order). ``penalty()`` is added to every
    batch's loss; ``after_train_mode()`` runs after every ``model.train()`` (e.g. to put
    frozen modules back in eval mode). Returns the examples seen, summed over epochs.
    """
    seen = 0
    device = module_device(model)
    for epoch in range(1, num_epochs + 1):
        model.train()
        if after_train_mode is not None:
            after_train_mode()
        plan = batch_plan(
            len(train), batch_size, epochs=1, shuffle=generator is not None, generator=generator
        )
        for idx in plan:
            x, y = train.batch(idx, device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            optimizer.step()
            seen += len(idx)
        if epoch % num_epochs_per_eval == 0 or epoch == num_epochs:
            on_eval(epoch)
    return seen


def pick(values: Iterable[float], monitor: str) -> int:
    """Position of the best value (NaN counts as the worst); ties go to the first."""
    larger_is_better = MONITORS[monitor]
    best, best_i = None, 0
    for i, v in enumerate(values):
        v = float(v)
        if math.isnan(v):
            v = -math.inf if larger_is_better else math.inf
        if best is None or (v > best if larger_is_better else v < best):
            best, best_i = v, i
    return best_i


def monitored(metrics: OrderedDict[str, Any], monitor: str) -> float:
    if monitor not in metrics:
        raise ValueError(
            f"monitor={monitor!r} but the held-out evaluation has no {monitor!r} (it has "
            f"{list(metrics)}); use monitor='loss' for a regression model."
        )
    return float(metrics[monitor])
