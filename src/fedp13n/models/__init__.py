"""Models: the EMNIST models of TFF's examples (conv-dropout, McMahan et al. 2017's CNN
and two-hidden-layer DNN),
TFF's Shakespeare next-character LSTM with its loss and masked accuracy, models by name
(``registry``) and InputSpec, the per-example input spec a model may declare (TFF's
``input_spec``). Names are imported on first use (torch is heavy)."""

from fedp13n.utils.lazy import lazy_exports

_EXPORTS = {
    "EMNIST_INPUT_SPEC": "fedp13n.models.emnist",
    "EmnistConvDropout": "fedp13n.models.emnist",
    "EmnistConvBN": "fedp13n.models.emnist",
    "EmnistDNN": "fedp13n.models.emnist",
    "EmnistDNNBN": "fedp13n.models.emnist",
    "FedAvgCNN": "fedp13n.models.emnist",
    "emnist_conv_bn": "fedp13n.models.emnist",
    "emnist_conv_dropout": "fedp13n.models.emnist",
    "emnist_dnn": "fedp13n.models.emnist",
    "emnist_dnn_bn": "fedp13n.models.emnist",
    "fedavg_cnn": "fedp13n.models.emnist",
    "ShakespeareRNN": "fedp13n.models.shakespeare",
    "create_recurrent_model": "fedp13n.models.shakespeare",
    "shakespeare_rnn": "fedp13n.models.shakespeare",
    "shakespeare_loss": "fedp13n.models.shakespeare",
    "masked_accuracy": "fedp13n.models.shakespeare",
    "masked_accuracy_counts": "fedp13n.models.shakespeare",
    "MODELS": "fedp13n.models.registry",
    "MODEL_NAMES": "fedp13n.models.registry",
    "get_model_fn": "fedp13n.models.registry",
    "default_head": "fedp13n.models.heads",
    "head_parameter_names": "fedp13n.models.heads",
    "model_fn_for": "fedp13n.models.registry",
    "InputSpec": "fedp13n.models.spec",
    "input_spec_of": "fedp13n.models.spec",
}
__all__ = [
    "EMNIST_INPUT_SPEC",
    "MODELS",
    "MODEL_NAMES",
    "EmnistConvBN",
    "EmnistConvDropout",
    "EmnistDNN",
    "EmnistDNNBN",
    "FedAvgCNN",
    "InputSpec",
    "ShakespeareRNN",
    "create_recurrent_model",
    "default_head",
    "emnist_conv_bn",
    "emnist_conv_dropout",
    "emnist_dnn",
    "emnist_dnn_bn",
    "fedavg_cnn",
    "get_model_fn",
    "head_parameter_names",
    "input_spec_of",
    "masked_accuracy",
    "masked_accuracy_counts",
    "model_fn_for",
    "shakespeare_loss",
    "shakespeare_rnn",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
