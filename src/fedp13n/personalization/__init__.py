"""Personalization evaluation (TFF's ``build_personalization_eval``) and its example
strategy (TFF's ``p13n_utils``): Jiang et al. 2019, "Improving Federated Learning
Personalization via Model Agnostic Meta Learning".

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import lazy_exports

_EXPORTS = {
    "PersonalizationResult": "fedp13n.personalization.result",
    "as_client_dataset": "fedp13n.personalization.inputs",
    "build_evaluate_fn": "fedp13n.personalization.p13n_utils",
    "build_personalization_eval": "fedp13n.personalization.eval",
    "build_personalize_fn": "fedp13n.personalization.p13n_utils",
    "check_fits_model": "fedp13n.personalization.inputs",
    "evaluate_fn": "fedp13n.personalization.p13n_utils",
    "reservoir_sample": "fedp13n.personalization.eval",
}
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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
