"""The personalization strategies researchers compare, in TFF's ``personalize_fn_dict`` form.

Each builder returns ``personalize_fn(model, train_data, test_data, context=None)`` that
trains ``model`` in place (it holds the global weights when called) and returns an
``OrderedDict`` with ``epoch_<k>`` -> :func:`~fedp13n.personalization.evaluate_fn`
metrics on ``test_data`` and ``num_train_examples``, like the stock
:func:`~fedp13n.personalization.build_personalize_fn`; randomness (held-out splits,
shuffling, dropout) comes from torch's global RNG, which
:func:`~fedp13n.build_personalization_eval` seeds per (seed, client, strategy).

* :func:`build_head_only_personalize_fn`: only the head trains (FedPer, FedRep);
* :func:`build_proximal_personalize_fn`: Ditto's proximal objective;
* :func:`build_interpolation_personalize_fn`: the best mix of fine-tuned and global
  weights on held-out train data (APFL-style);
* :func:`build_early_stopping_personalize_fn`: the epoch chosen on held-out train data;
* :func:`build_recommended_adam_personalize_fn`: Adam at lr 5e-4.

By name, with keyword hyperparameters: :mod:`fedp13n.personalization.registry`.
"""

from fedp13n.personalization.strategies._common import holdout_split, num_holdout
from fedp13n.personalization.strategies.early_stopping import build_early_stopping_personalize_fn
from fedp13n.personalization.strategies.head_only import (
    build_head_only_personalize_fn,
    default_head,
    head_parameter_names,
)
from fedp13n.personalization.strategies.interpolation import (
    DEFAULT_ALPHAS,
    build_interpolation_personalize_fn,
    interpolate,
)
from fedp13n.personalization.strategies.presets import (
    RECOMMENDED_ADAM_LR,
    build_recommended_adam_personalize_fn,
    recommended_adam_optimizer_fn,
)
from fedp13n.personalization.strategies.proximal import build_proximal_personalize_fn

__all__ = [
    "DEFAULT_ALPHAS",
    "RECOMMENDED_ADAM_LR",
    "build_early_stopping_personalize_fn",
    "build_head_only_personalize_fn",
    "build_interpolation_personalize_fn",
    "build_proximal_personalize_fn",
    "build_recommended_adam_personalize_fn",
    "default_head",
    "head_parameter_names",
    "holdout_split",
    "interpolate",
    "num_holdout",
    "recommended_adam_optimizer_fn",
]
