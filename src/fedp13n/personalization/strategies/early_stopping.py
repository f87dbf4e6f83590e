"""Early-stopped fine-tuning: the number of epochs chosen per client on held-out data.

Fine-tuning hurts some clients after a few epochs (Jiang et al. 2019, "Improving
Federated Learning Personalization via Model Agnostic Meta Learning", report the spread
of per-client changes; Adam at lr 0.002 hurts about a third of the EMNIST clients by
epoch 3). Early stopping on a validation split of the client's own train data (Prechelt
1998, "Early Stopping -- But When?") picks, per client, how long to fine-tune -- including
not at all.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedp13n.data.client_data import ClientDataset
from fedp13n.personalization.strategies._common import HeldOut, monitored, pick
from fedp13n.personalization.strategies.finetune import tff_builder
from fedp13n.utils.checks import check_bool


@dataclass(frozen=True, kw_only=True)
class EarlyStopping(HeldOut):
    """Kind ``"early_stopping"``: fine-tune on part of the train data; select the epoch on
    the held-out rest.

    The held-out split and the training are those of :class:`Interpolation` (split drawn
    first from torch's global RNG, then :class:`FineTune` on the rest). The candidates are
    the evaluation epochs (every ``epochs_per_eval``-th and the last) and, with
    ``include_epoch_0``, epoch 0 (the global model: no fine-tuning). The chosen epoch has
    the lowest held-out ``loss`` (``monitor="loss"``, the default: smooth, unlike the
    accuracy of a few dozen examples) or the highest ``accuracy``; ties go to the earliest
    epoch. All ``epochs`` are trained, so the whole curve is reported; that is early
    stopping with unbounded patience and the best checkpoint restored.

    Returns ``epoch_<k>`` -> :func:`~fedp13n.personalization.evaluate_fn` on ``test_data``
    after ``k`` epochs (the curve, as :class:`FineTune`), ``validation`` -> ``epoch_<k>``
    (and ``epoch_0``) -> held-out metrics, ``best_epoch`` (int), ``selected`` -> ``test``
    and ``validation`` metrics at the best epoch, ``num_train_examples`` (all epochs, the
    rest only), ``num_holdout_examples``. (``selected`` is nested one level so that code
    which reads every top-level mapping with an ``accuracy`` as an ``epoch_<k>`` row skips
    it.)

    Fallback: with fewer than 2 train examples nothing is held out
    (``num_holdout_examples`` = 0, validation metrics NaN), training uses all of them and
    ``best_epoch`` is ``epochs`` (plain fine-tuning).
    """

    include_epoch_0: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("include_epoch_0", self.include_epoch_0)

    def run(self, model: nn.Module, train: ClientDataset, test: ClientDataset) -> OrderedDict:
        rest, holdout = self.split(train)
        tests: OrderedDict[int, Any] = OrderedDict()
        validation: OrderedDict[int, Any] = OrderedDict()

        def on_eval(epoch: int) -> None:
            tests[epoch] = self.evaluate(model, test)
            validation[epoch] = self.evaluate(model, holdout)

        if self.include_epoch_0:
            on_eval(0)
        seen = self.train(model, rest, on_eval)
        epochs = list(validation)
        if len(holdout) == 0:
            best = self.epochs
        else:
            scores = [monitored(validation[e], self.monitor) for e in epochs]
            best = epochs[pick(scores, self.monitor)]
        metrics: OrderedDict[str, Any] = OrderedDict(
            (f"epoch_{e}", m) for e, m in tests.items() if e > 0
        )
        metrics["validation"] = OrderedDict((f"epoch_{e}", m) for e, m in validation.items())
        metrics["best_epoch"] = best
        metrics["selected"] = OrderedDict(test=tests[best], validation=validation[best])
        metrics["num_train_examples"] = seen
        metrics["num_holdout_examples"] = len(holdout)
        return metrics


build_early_stopping_personalize_fn = tff_builder(EarlyStopping)
