"""The personalization strategies researchers compare, one class (and file) each.

A strategy is a frozen dataclass (see :mod:`~fedp13n.personalization.strategies.finetune`):
its fields are its hyperparameters, checked when it is built, and the instance is the
picklable no-argument builder of TFF's ``personalize_fn_dict``: ``strategy()`` returns
``personalize_fn(model, train_data, test_data, context=None)``, which trains ``model`` in
place (it holds the global weights when called) and returns an ``OrderedDict`` with
``epoch_<k>`` -> :func:`~fedp13n.personalization.evaluate_fn` metrics on ``test_data`` and
``num_train_examples``; randomness (held-out splits, shuffling, dropout) comes from torch's
global RNG, which :func:`~fedp13n.build_personalization_eval` seeds per (seed, client,
strategy).

* :class:`FineTune`: TFF's fine-tuning (:func:`~fedp13n.build_personalize_fn`);
* :class:`HeadOnly`: only the head trains (FedPer, FedRep);
* :class:`BiasOnly`: only the biases train (BitFit);
* :class:`Proximal`: Ditto's proximal objective;
* :class:`Interpolation`: the best mix of fine-tuned and global weights on held-out
  train data (APFL-style);
* :class:`EarlyStopping`: the epoch chosen on held-out train data;
* :class:`AdamRecommended`: Adam at lr 5e-4.

The ``build_*_personalize_fn`` functions build the same strategies from TFF's
``build_personalize_fn`` arguments (an ``optimizer_fn``, a ``loss_fn``). By name, with
keyword hyperparameters: :mod:`fedp13n.personalization.registry`.
"""

from fedp13n.personalization.strategies._common import HeldOut, holdout_split, num_holdout
from fedp13n.personalization.strategies.adam_recommended import (
    RECOMMENDED_ADAM_LR,
    AdamRecommended,
    build_recommended_adam_personalize_fn,
    recommended_adam_optimizer_fn,
)
from fedp13n.personalization.strategies.bias_only import BiasOnly, bias_parameter_names
from fedp13n.personalization.strategies.early_stopping import (
    EarlyStopping,
    build_early_stopping_personalize_fn,
)
from fedp13n.personalization.strategies.finetune import FineTune
from fedp13n.personalization.strategies.head_only import (
    HeadOnly,
    build_head_only_personalize_fn,
    default_head,
    head_parameter_names,
)
from fedp13n.personalization.strategies.interpolation import (
    DEFAULT_ALPHAS,
    Interpolation,
    build_interpolation_personalize_fn,
    interpolate,
)
from fedp13n.personalization.strategies.proximal import Proximal, build_proximal_personalize_fn
from fedp13n.utils.optimizers import make_optimizer_fn

__all__ = [
    "DEFAULT_ALPHAS",
    "RECOMMENDED_ADAM_LR",
    "AdamRecommended",
    "BiasOnly",
    "EarlyStopping",
    "FineTune",
    "HeadOnly",
    "HeldOut",
    "Interpolation",
    "Proximal",
    "bias_parameter_names",
    "build_early_stopping_personalize_fn",
    "build_head_only_personalize_fn",
    "build_interpolation_personalize_fn",
    "build_proximal_personalize_fn",
    "build_recommended_adam_personalize_fn",
    "default_head",
    "head_parameter_names",
    "holdout_split",
    "interpolate",
    "make_optimizer_fn",
    "num_holdout",
    "recommended_adam_optimizer_fn",
]
