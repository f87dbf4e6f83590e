"""Interpolation: mix the fine-tuned and the global model, the mix chosen on held-out data.

APFL-style mixing at evaluation time (Deng et al. 2020, "Adaptive Personalized Federated
Learning"): the personalized model is ``alpha * w_finetuned + (1 - alpha) * w_global``.
APFL learns ``alpha`` during training; here, as a post-hoc strategy, it is chosen from a
grid on a held-out part of the client's *train* data, so the test data is never used to
choose.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedp13n.data.client_data import ClientDataset
from fedp13n.personalization.strategies._common import HeldOut, monitored, pick
from fedp13n.personalization.strategies.finetune import tff_builder
from fedp13n.utils.checks import check_fraction

#: 0, 0.1, ..., 1: from the global model to the fine-tuned one.
DEFAULT_ALPHAS = tuple(i / 10 for i in range(11))


def interpolate(
    finetuned: Mapping[str, torch.Tensor], global_: Mapping[str, torch.Tensor], alpha: float
) -> OrderedDict[str, torch.Tensor]:
    """``alpha * finetuned + (1 - alpha) * global_`` for every floating-point entry of the
    state dicts (parameters and buffers such as batch-norm statistics); other entries
    (``num_batches_tracked``) are the fine-tuned ones. ``alpha`` 1 and 0 give exactly the
    fine-tuned and the global tensors."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, ft in finetuned.items():
        g = global_[k]
        if not ft.is_floating_point() or alpha == 1.0:
            out[k] = ft.detach().clone()
        elif alpha == 0.0:
            out[k] = g.detach().clone()
        else:
            out[k] = alpha * ft.detach() + (1.0 - alpha) * g.detach()
    return out


@dataclass(frozen=True, kw_only=True)
class Interpolation(HeldOut):
    """Kind ``"interpolation"``: fine-tune on part of the train data, report the best mix
    with the global model.

    At the call, a held-out split of ``train_data`` is drawn (see
    :func:`~fedp13n.personalization.strategies.holdout_split`: ``round(holdout_fraction *
    n)`` examples, at least 1 and at most ``n - 1``) from a numpy Generator seeded by one
    draw of torch's global RNG; then the model fine-tunes on the *rest* exactly as
    :class:`FineTune` does (its shuffle generator is the next draw). At every evaluation
    epoch, every ``alpha`` of ``alphas`` is scored on the held-out split (``monitor``:
    lowest ``loss`` or highest ``accuracy``; ties go to the first in ``alphas``, so with
    the default ascending grid to the one nearer the global model) and the chosen mix is
    evaluated on ``test_data``.

    Returns ``epoch_<k>`` -> :func:`~fedp13n.personalization.evaluate_fn` metrics of the
    chosen mix on ``test_data`` plus its ``alpha``; ``num_train_examples`` (examples
    trained on, summed over epochs: the rest only); ``num_holdout_examples``.

    Fallback: with fewer than 2 train examples nothing is held out
    (``num_holdout_examples`` = 0), the model fine-tunes on all of them and the chosen
    ``alpha`` is the largest of ``alphas`` (1.0 for the default grid: plain fine-tuning).

    After the call ``model`` holds the fine-tuned weights (not the mix).
    """

    alphas: Sequence[float] = DEFAULT_ALPHAS

    def __post_init__(self) -> None:
        super().__post_init__()
        alphas = self.alphas
        if isinstance(alphas, str | bytes) or not isinstance(alphas, Iterable):
            raise ValueError(
                f"alphas must be a non-empty sequence of numbers in [0, 1], got {alphas!r}."
            )
        grid = tuple(check_fraction("every alpha", a, closed_right=True) for a in alphas)
        if not grid:
            raise ValueError("alphas must be a non-empty sequence of numbers in [0, 1], got none.")
        object.__setattr__(self, "alphas", grid)

    def run(self, model: nn.Module, train: ClientDataset, test: ClientDataset) -> OrderedDict:
        rest, holdout = self.split(train)
        global_state = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
        mixed_model = copy.deepcopy(model)
        alphas, monitor = self.alphas, self.monitor
        metrics: OrderedDict[str, Any] = OrderedDict()

        def on_eval(epoch: int) -> None:
            finetuned = model.state_dict()
            if len(holdout) == 0:
                alpha = max(alphas)
            else:
                scores = []
                for a in alphas:
                    mixed_model.load_state_dict(interpolate(finetuned, global_state, a))
                    scores.append(monitored(self.evaluate(mixed_model, holdout), monitor))
                alpha = alphas[pick(scores, monitor)]
            mixed_model.load_state_dict(interpolate(finetuned, global_state, alpha))
            m = self.evaluate(mixed_model, test)
            m["alpha"] = alpha
            metrics[f"epoch_{epoch}"] = m

        metrics["num_train_examples"] = self.train(model, rest, on_eval)
        metrics["num_holdout_examples"] = len(holdout)
        return metrics


build_interpolation_personalize_fn = tff_builder(Interpolation)
