"""Models: the EMNIST CNNs of TFF's examples (conv-dropout, McMahan et al. 2017's CNN) and
InputSpec, the per-example input spec a model may declare (TFF's ``input_spec``)."""

from fedp13n.models.emnist import (
    EMNIST_INPUT_SPEC,
    MODELS,
    EmnistConvDropout,
    FedAvgCNN,
    emnist_conv_dropout,
    fedavg_cnn,
    get_model_fn,
)
from fedp13n.models.spec import InputSpec, input_spec_of

__all__ = [
    "EMNIST_INPUT_SPEC",
    "MODELS",
    "EmnistConvDropout",
    "FedAvgCNN",
    "InputSpec",
    "emnist_conv_dropout",
    "fedavg_cnn",
    "get_model_fn",
    "input_spec_of",
]
