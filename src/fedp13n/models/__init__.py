"""Models: the EMNIST CNNs of TFF's examples (conv-dropout, McMahan et al. 2017's CNN),
models by name (``registry``) and InputSpec, the per-example input spec a model may
declare (TFF's ``input_spec``). Names are imported on first use (torch is heavy)."""

from fedp13n.utils.lazy import lazy_exports

_EXPORTS = {
    "EMNIST_INPUT_SPEC": "fedp13n.models.emnist",
    "EmnistConvDropout": "fedp13n.models.emnist",
    "FedAvgCNN": "fedp13n.models.emnist",
    "emnist_conv_dropout": "fedp13n.models.emnist",
    "fedavg_cnn": "fedp13n.models.emnist",
    "MODELS": "fedp13n.models.registry",
    "MODEL_NAMES": "fedp13n.models.registry",
    "get_model_fn": "fedp13n.models.registry",
    "model_fn_for": "fedp13n.models.registry",
    "InputSpec": "fedp13n.models.spec",
    "input_spec_of": "fedp13n.models.spec",
}
__all__ = [
    "EMNIST_INPUT_SPEC",
    "MODELS",
    "MODEL_NAMES",
    "EmnistConvDropout",
    "FedAvgCNN",
    "InputSpec",
    "emnist_conv_dropout",
    "fedavg_cnn",
    "get_model_fn",
    "input_spec_of",
    "model_fn_for",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
