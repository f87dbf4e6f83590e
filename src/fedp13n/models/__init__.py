"""Models: the EMNIST CNNs of TFF's examples (conv-dropout, McMahan et al. 2017's CNN)."""

from fedp13n.models.emnist import (
    EmnistConvDropout,
    FedAvgCNN,
    emnist_conv_dropout,
    fedavg_cnn,
)
from fedp13n.models.registry import MODELS, get_model_fn

__all__ = [
    "MODELS",
    "EmnistConvDropout",
    "FedAvgCNN",
    "emnist_conv_dropout",
    "fedavg_cnn",
    "get_model_fn",
]
