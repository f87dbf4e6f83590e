"""Models: the EMNIST models of TFF's examples (conv-dropout, McMahan et al. 2017's CNN
and two-hidden-layer DNN),
TFF's Shakespeare next-character LSTM with its loss and masked accuracy, models by name
(``registry``) and InputSpec, the per-example input spec a model may declare (TFF's
``input_spec``). Names are imported on first use (torch is heavy)."""

from fedp13n.utils.lazy import by_module, lazy_exports

_EXPORTS = by_module(
    {
        "fedp13n.models.emnist": "EMNIST_INPUT_SPEC EmnistConvDropout EmnistConvBN EmnistDNN "
        "EmnistDNNBN FedAvgCNN emnist_conv_bn emnist_conv_dropout emnist_dnn emnist_dnn_bn "
        "fedavg_cnn",
        "fedp13n.models.shakespeare": "ShakespeareRNN ShakespeareRNNBN create_recurrent_model "
        "shakespeare_rnn shakespeare_rnn_bn "
        "shakespeare_loss masked_accuracy masked_accuracy_counts",
        "fedp13n.models.registry": "MODELS MODEL_NAMES get_model_fn model_fn_for",
        "fedp13n.models.heads": "default_head head_parameter_names",
        "fedp13n.models.spec": "InputSpec input_spec_of",
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
