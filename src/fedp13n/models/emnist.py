"""The EMNIST models of TFF's examples (two CNNs and the two-hidden-layer DNN), in PyTorch.

* :func:`emnist_conv_dropout`: TFF's ``create_conv_dropout_model``, the model of the
  personalization experiment (Jiang et al. 2019, "Improving Federated Learning
  Personalization via Model Agnostic Meta Learning") and of Reddi et al. 2020.
  1,206,590 parameters for 62 classes.
* :func:`fedavg_cnn`: TFF's ``create_original_fedavg_cnn_model``, the CNN of McMahan et
  al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data".
  1,663,370 parameters for 10 classes (as in the paper), 1,690,046 for 62.
* :func:`emnist_conv_bn`: the conv-dropout model with a ``BatchNorm2d`` after each
  convolution (the batch-norm model FedBN needs, :mod:`fedp13n.algorithms.fedbn`; not a
  TFF model): 1,206,782 parameters for 62 classes, and per-channel running statistics.
* :func:`emnist_dnn`: TFF's ``create_two_hidden_layer_model`` (its ``model_id='2nn'``,
  ``simulation/baselines/emnist/emnist_models.py`` of TFF 0.87), the "2NN" of McMahan et
  al. 2017: Dense 200 relu, Dense 200 relu, Dense ``num_classes``. 199,210 parameters for
  10 classes (TFF's docstring), 209,662 for 62. About 50x fewer multiply-adds per example
  than the CNNs, so comparisons that need many runs (bench/methods) fit a CPU.
* :func:`emnist_dnn_bn`: the DNN with a ``BatchNorm1d`` after each hidden dense layer
  (before its ReLU), for FedBN on the DNN (not a TFF model): 210,462 parameters for 62.

Layers, shapes, parameter counts and initialisation (Keras' Glorot-uniform kernels and
zero biases, not PyTorch's smaller default) match the Keras originals. The initialisation
matters: with PyTorch's default the conv-dropout model sat about twice as long on the
initial loss plateau on real EMNIST writers (centralised SGD 0.02, batch 20: test accuracy
0.25 vs 0.42 after 600 steps). Two deliberate differences: flattening is channels-first
(C, H, W), so Keras weights would need the dense kernel's rows permuted to be imported;
and the conv-dropout model's dropout draws its masks with
:class:`~fedp13n.models.layers.FastDropout` (the same inverted dropout, cheaper masks).
Both models take ``(B, 28, 28)`` images (the layout the
EMNIST data has) or ``(B, 1, 28, 28)`` and return logits.

Both declare what one example looks like, TFF's ``input_spec``
(:data:`EMNIST_INPUT_SPEC`, an :class:`~fedp13n.models.spec.InputSpec` class attribute):
``float32`` images of shape ``(28, 28)`` or ``(1, 28, 28)`` (``uint8`` pixels are
converted to ``float32`` on the way in) and ``int64`` scalar labels (integer labels are
converted to ``int64``). Personalization evaluation refuses client data that does not
match, e.g. data that is already batched.

Speed (CPU training with small batches is what federated clients do; measured in
``bench/README.md``), without changing what is computed:

* max-pooling comes *before* the ReLU that Keras applies in the convolution:
  ``relu(maxpool(x)) == maxpool(relu(x))`` exactly (ReLU is monotone), with the same
  gradients, and the ReLU then touches 4x fewer values;
* convolutions run on channels-last (NHWC) tensors, oneDNN's fast layout on CPUs (its
  NCHW max-pooling is several times slower); activations go back to channels-first before
  flattening, so the dense layer's weights keep their layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.models.layers import BatchNorm1d, FastDropout, register_in_order
from fedp13n.models.spec import InputSpec

#: One EMNIST example as the models see it: a 28x28 float32 image (optionally with a
#: channel axis) and an int64 class label.
EMNIST_INPUT_SPEC = InputSpec(
    x_shape=(28, 28),
    y_shape=(),
    x_dtype=torch.float32,
    y_dtype=torch.int64,
    also_x_shapes=((1, 28, 28),),
)


def _as_nhwc(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, 28, 28)`` view of the images in channels-last memory layout."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() == 4 and x.shape[1] == 1:
        return x.contiguous(memory_format=torch.channels_last)
    raise ValueError(
        f"EMNIST models expect images of shape (B, 28, 28) or (B, 1, 28, 28), got {tuple(x.shape)}."
    )


def _keras_init(model: nn.Module) -> None:
    """Glorot-uniform weights and zero biases: Keras' defaults for Conv2D and Dense."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def _channels_last(model: nn.Module) -> None:
    """Store convolution kernels channels-last: with a 1-channel input the layout of the
    input alone is ambiguous, and oneDNN follows the kernels' layout."""
    model.to(memory_format=torch.channels_last)


class EmnistConvDropout(nn.Module):
    """Conv 32 3x3 relu, Conv 64 3x3 relu, MaxPool 2, Dropout .25, Dense 128 relu,
    Dropout .5, Dense ``num_classes`` (valid padding, as Keras' default)."""

    input_spec = EMNIST_INPUT_SPEC

    def __init__(self, num_classes: int = 62) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.dropout1 = FastDropout(0.25)
        self.fc1 = nn.Linear(12 * 12 * 64, 128)
        self.dropout2 = FastDropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)
        _keras_init(self)
        _channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(_as_nhwc(x)))
        x = F.relu(F.max_pool2d(self.conv2(x), 2)).contiguous()  # NCHW again
        x = self.dropout1(x)
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


class EmnistConvBN(EmnistConvDropout):
    """:class:`EmnistConvDropout` with ``BatchNorm2d`` after each convolution (before its
    ReLU): Conv 32 3x3, BN, relu, Conv 64 3x3, BN, MaxPool 2, relu, Dropout .25, Dense 128
    relu, Dropout .5, Dense ``num_classes``. FedBN's batch-norm model (Li et al. 2021 put
    a batch norm after every convolution of their CNN)."""

    def __init__(self, num_classes: int = 62) -> None:
        super().__init__(num_classes)
        self.bn1 = nn.BatchNorm2d(32)
        self.bn2 = nn.BatchNorm2d(64)
        _channels_last(self)
        register_in_order(self, "conv1", "bn1", "conv2", "bn2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(_as_nhwc(x))))
        x = F.relu(F.max_pool2d(self.bn2(self.conv2(x)), 2)).contiguous()  # NCHW again
        x = self.dropout1(x)
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


class FedAvgCNN(nn.Module):
    """McMahan et al. 2017: Conv 32 5x5 'same' relu, MaxPool 2, Conv 64 5x5 'same' relu,
    MaxPool 2, Dense 512 relu, Dense ``num_classes``."""

    input_spec = EMNIST_INPUT_SPEC

    def __init__(self, num_classes: int = 62) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(7 * 7 * 64, 512)
        self.fc2 = nn.Linear(512, num_classes)
        _keras_init(self)
        _channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(_as_nhwc(x)), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2)).contiguous()  # NCHW again
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class EmnistDNN(nn.Module):
    """Flatten, Dense 200 relu, Dense 200 relu, Dense ``num_classes`` (TFF's ``2nn``)."""

    input_spec = EMNIST_INPUT_SPEC

    def __init__(self, num_classes: int = 62, hidden_units: int = 200) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden_units)
        self.fc2 = nn.Linear(hidden_units, hidden_units)
        self.fc3 = nn.Linear(hidden_units, num_classes)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(_as_nhwc(x), 1)))
        return self.fc3(F.relu(self.fc2(x)))


class EmnistDNNBN(EmnistDNN):
    """:class:`EmnistDNN` with ``BatchNorm1d`` after each hidden dense layer, before its
    ReLU (FedBN's placement: a batch norm after every hidden layer)."""

    def __init__(self, num_classes: int = 62, hidden_units: int = 200) -> None:
        super().__init__(num_classes, hidden_units)
        self.bn1 = BatchNorm1d(hidden_units)  # trains on a batch of one, as Keras's does
        self.bn2 = BatchNorm1d(hidden_units)
        register_in_order(self, "fc1", "bn1", "fc2", "bn2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.fc1(torch.flatten(_as_nhwc(x), 1))))
        return self.fc3(F.relu(self.bn2(self.fc2(x))))


def _check_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")


def emnist_conv_dropout(num_classes: int = 62) -> EmnistConvDropout:
    """TFF's ``create_conv_dropout_model`` (62 classes = EMNIST-62, 10 = digits only)."""
    _check_classes(num_classes)
    return EmnistConvDropout(num_classes)


def emnist_conv_bn(num_classes: int = 62) -> EmnistConvBN:
    """The conv-dropout model with batch norms after its convolutions (FedBN's model)."""
    _check_classes(num_classes)
    return EmnistConvBN(num_classes)


def fedavg_cnn(num_classes: int = 62) -> FedAvgCNN:
    """TFF's ``create_original_fedavg_cnn_model``: the CNN of McMahan et al. 2017."""
    _check_classes(num_classes)
    return FedAvgCNN(num_classes)


def emnist_dnn(num_classes: int = 62) -> EmnistDNN:
    """TFF's ``create_two_hidden_layer_model`` (``2nn``): two dense layers of 200 units."""
    _check_classes(num_classes)
    return EmnistDNN(num_classes)


def emnist_dnn_bn(num_classes: int = 62) -> EmnistDNNBN:
    """The two-hidden-layer DNN with batch norms after its hidden layers (FedBN on it)."""
    _check_classes(num_classes)
    return EmnistDNNBN(num_classes)
