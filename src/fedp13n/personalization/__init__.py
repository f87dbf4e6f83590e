"""Personalization evaluation (TFF's ``build_personalization_eval``) and its example
strategy (TFF's ``p13n_utils``): Jiang et al. 2019, "Improving Federated Learning
Personalization via Model Agnostic Meta Learning"."""

from fedp13n.personalization.eval import build_personalization_eval, reservoir_sample
from fedp13n.personalization.inputs import as_client_dataset, check_fits_model
from fedp13n.personalization.p13n_utils import (
    build_evaluate_fn,
    build_personalize_fn,
    evaluate_fn,
)
from fedp13n.personalization.result import PersonalizationResult

__all__ = [
    "PersonalizationResult",
    "as_client_dataset",
    "build_evaluate_fn",
    "build_personalization_eval",
    "build_personalize_fn",
    "check_fits_model",
    "evaluate_fn",
    "reservoir_sample",
]
