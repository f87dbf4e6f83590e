"""Personalization evaluation (TFF's ``build_personalization_eval``) and its example
strategy (TFF's ``p13n_utils``): Jiang et al. 2019, "Improving Federated Learning
Personalization via Model Agnostic Meta Learning".

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import by_module, lazy_exports

_EXPORTS = by_module(
    {
        "fedp13n.personalization.result": "PersonalizationResult",
        "fedp13n.personalization.inputs": "as_client_dataset check_fits_model",
        "fedp13n.personalization.p13n_utils": "build_evaluate_fn build_personalize_fn evaluate_fn",
        "fedp13n.personalization.eval": (
            "build_personalization_eval build_personalization_eval_computation reservoir_sample"
        ),
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
