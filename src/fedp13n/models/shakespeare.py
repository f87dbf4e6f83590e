"""TFF's Shakespeare next-character model, its loss and its accuracy, in PyTorch.

:func:`create_recurrent_model` is TFF's ``create_recurrent_model`` (tensorflow_federated
0.87, ``python/simulation/baselines/shakespeare/char_prediction_models.py``; the model of
McMahan et al. 2017 and of the personalization paper, Jiang et al. 2019): an embedding of
dimension 8 with ``mask_zero=True``, two LSTM layers of 256 units returning sequences, a
dense layer over the vocabulary, no softmax. TFF's task builds it with ``vocab_size=90``
(``char_prediction_tasks.VOCAB_LENGTH``: 86 characters + pad 0, out-of-vocabulary 87,
beginning 88, end 89) and 80-character sequences: 820,522 parameters, Keras'
``count_params()`` (recorded by ``tests/data/record_tff_shakespeare_model.py``).

Exactly as Keras computes it (checked against TFF's Keras model with the same weights):

* :class:`KerasLSTM`: Keras' LSTM, *one* bias per layer (``nn.LSTM`` has two), gates in
  Keras' order (input, forget, cell, output), weights in Keras' layout (``kernel``
  ``(in, 4 * units)``, ``recurrent_kernel`` ``(units, 4 * units)``, ``bias``
  ``(4 * units,)``), sigmoid and tanh.
* Masking (``mask_zero=True``): at a position whose input id is 0 (padding) both LSTMs
  keep their state and output the previous step's output (Keras' ``backend.rnn`` with
  ``zero_output_for_mask=False``), so the dense layer sees the last real step's state.
* Initialisation, Keras' for these layers (``torch.nn.init`` on the global torch
  generator: ``torch.manual_seed`` fixes it, as for the EMNIST models): embedding uniform
  in [-0.05, 0.05]; LSTM kernels ``he_normal`` (truncated normal, stddev
  ``sqrt(2 / fan_in) / .87962566103423978``, cut at two stddevs, as TFF asks),
  recurrent kernels orthogonal, biases 0 with ``unit_forget_bias`` (1 on the forget gate);
  dense Glorot-uniform kernel, zero bias.

Two ways to compute the same LSTM (equal to float rounding, tested): on sequences whose
padding is only at the end (TFF's: every sequence starts with a real id) and outside
``torch.func`` transforms, torch's fused LSTM kernel (oneDNN on CPUs), each padded
position then taking its row's last real output; otherwise a time loop of plain tensor ops
(matmul, sigmoid, tanh, ``torch.where``), which ``torch.func`` (``functional_call``,
``vmap``, ``grad``) batches over clients. Forward + backward + SGD step at batch 10 on one
CPU thread: fused about 3x faster than the loop (``bench/README.md``).

**Layout.** Input: token ids ``(B, S)`` (int64). Output: logits ``(B, vocab, S)``, the
class axis at dim 1 as torch's losses want it: ``F.cross_entropy(logits, y)`` with
targets ``(B, S)`` and ``logits.argmax(dim=1)`` work as for the image models.

**Loss.** TFF trains and evaluates with ``SparseCategoricalCrossentropy(from_logits=True)``
on the model's predictions *without* the embedding's mask: ``from_keras_model``'s
``forward_pass`` gets the predictions from the nested ``tf.function`` ``predict_on_batch``,
which drops Keras' ``_keras_mask``. So TFF's batch loss is the plain mean of the
cross-entropy over all ``B * S`` positions, padding targets included (the recorded TFF loss
equals the unmasked mean; Keras' loss called eagerly on the model, where the mask does
arrive, gives a different number). :data:`shakespeare_loss` is therefore
``F.cross_entropy`` itself (the same object, so code that recognises ``F.cross_entropy``
recognises it). TFF's reported ``loss`` metric weights each batch's loss by its number of
sequences, as fedp13n's batch mean times batch size does.

**Accuracy.** TFF's ``MaskedCategoricalAccuracy(masked_tokens=[pad])``
(``simulation/baselines/keras_metrics.py``, used by ``char_prediction_tasks``): the
fraction of positions whose arg-max logit is the target, over positions whose *target* is
not the pad id 0 (out-of-vocabulary, beginning and end targets count). It accumulates
correct and counted tokens over all batches, so a client's accuracy is its total correct
over its total counted tokens: :func:`masked_accuracy_counts` gives ``(correct, count)``
for that; :func:`masked_accuracy` is one batch's fraction (0 when nothing is counted, as
Keras' ``divide_no_nan``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.models.layers import register_in_order
from fedp13n.models.spec import InputSpec

#: The padding id: Keras' ``Embedding(mask_zero=True)`` masks id 0, and TFF's
#: ``char_prediction_preprocessing.get_special_tokens()`` pads with 0.
PAD_ID = 0
#: TFF's ``create_recurrent_model``: embedding dimension and LSTM units.
EMBEDDING_DIM = 8
LSTM_UNITS = 256
#: TFF's ``DEFAULT_SEQUENCE_LENGTH`` (``char_prediction_tasks``/``_preprocessing``, "from
#: McMahan et al AISTATS 2017"): what the model declares in its ``input_spec`` by default.
DEFAULT_SEQUENCE_LENGTH = 80

#: TFF's loss, exactly (see the module docstring): the mean cross-entropy over all
#: positions, padding included. ``logits`` ``(B, vocab, S)``, targets ``(B, S)``.
shakespeare_loss = F.cross_entropy

# Keras' VarianceScaling with a truncated normal divides the stddev by this (the stddev of
# a unit normal truncated to [-2, 2]).
_TRUNCATED_STDDEV = 0.87962566103423978


def _he_normal_(w: torch.Tensor, fan_in: int) -> None:
    std = math.sqrt(2.0 / fan_in) / _TRUNCATED_STDDEV
    nn.init.trunc_normal_(w, 0.0, std, -2.0 * std, 2.0 * std)


def _transformed(t: torch.Tensor) -> bool:
    """Whether ``t`` is inside a ``torch.func`` transform (vmap, grad, ...)."""
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)  # noqa: SLF001
    return check is None or bool(check(t))


def _fused_applies(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :meth:`KerasLSTM._fused` computes this call: outside ``torch.func``
    transforms (they batch the plain loop; torch's fused LSTM has no vmap rule), and every
    row is real up to some position >= 1 and padding after it (TFF's sequences)."""
    if _transformed(x) or _transformed(mask) or _transformed(weight):
        return False
    if x.shape[1] == 0 or not bool(mask[:, 0].all()):
        return False
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


class KerasLSTM(nn.Module):
    """Keras' ``LSTM(units, return_sequences=True)`` with Keras' masking: one bias, gates
    (input, forget, cell, output), weights in Keras' layout (see the module docstring).

    ``forward(x, mask)``: ``x`` ``(B, S, in)``, ``mask`` ``(B, S)`` bool (False: padding,
    the state is carried) -> outputs ``(B, S, units)``.
    """

    def __init__(self, input_dim: int, units: int) -> None:
        super().__init__()
        self.units = units
        self.kernel = nn.Parameter(torch.empty(input_dim, 4 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 4 * units))
        self.bias = nn.Parameter(torch.empty(4 * units))
        _he_normal_(self.kernel, fan_in=input_dim)  # TFF: kernel_initializer='he_normal'
        nn.init.orthogonal_(self.recurrent_kernel)  # Keras' default
        with torch.no_grad():  # Keras: zeros, unit_forget_bias=True
            self.bias.zero_()
            self.bias[units : 2 * units] = 1.0

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if _fused_applies(x, mask, self.kernel):
            return self._fused(x, mask)
        return self._loop(x, mask)

    def _loop(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Any mask, with plain tensor ops (what ``torch.func`` transforms batch)."""
        # The input parts of all steps in one matmul; unbind / chunk (not indexing) so that
        # backward stacks the steps' gradients instead of filling a zero tensor per step.
        steps = (torch.matmul(x, self.kernel) + self.bias).unbind(1)
        keeps = mask.unsqueeze(-1).unbind(1)
        h = x.new_zeros(x.shape[0], self.units)
        c = h
        outputs = []
        for xz, keep in zip(steps, keeps, strict=True):
            zi, zf, zc, zo = (xz + torch.matmul(h, self.recurrent_kernel)).chunk(4, dim=1)
            c_new = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zc)
            h_new = torch.sigmoid(zo) * torch.tanh(c_new)
            c = torch.where(keep, c_new, c)
            h = torch.where(keep, h_new, h)
            outputs.append(h)
        return torch.stack(outputs, dim=1)

    def _fused(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Padding only at the ends (each row's mask is True then False): torch's fused
        LSTM kernel (oneDNN on CPUs) on the whole rows, then each padded position takes its
        row's last real output. The same numbers as :meth:`_loop`: torch's gates are in
        Keras' order, its weights are Keras' transposed, its second bias is zero here, and
        an LSTM is causal (a real step never sees the padding after it)."""
        h0 = x.new_zeros(1, x.shape[0], self.units)
        weights = [
            self.kernel.t(),
            self.recurrent_kernel.t(),
            self.bias,
            torch.zeros_like(self.bias),
        ]
        train = torch.is_grad_enabled()  # keep what backward needs (dropout is 0 either way)
        out = torch.lstm(x, (h0, h0), weights, True, 1, 0.0, train, False, True)[0]
        positions = torch.arange(x.shape[1], device=x.device)
        last = mask.sum(1, keepdim=True) - 1  # the last real position per row
        index = torch.minimum(positions.unsqueeze(0), last).unsqueeze(-1)
        return out.gather(1, index.expand(-1, -1, self.units))

    def extra_repr(self) -> str:
        return f"input_dim={self.kernel.shape[0]}, units={self.units}"


class ShakespeareRNN(nn.Module):
    """Embedding 8 (id 0 masked), LSTM 256, LSTM 256, Dense ``vocab_size``: TFF's
    ``create_recurrent_model``. Token ids ``(B, S)`` -> logits ``(B, vocab_size, S)``."""

    def __init__(
        self, vocab_size: int, sequence_length: int | None = DEFAULT_SEQUENCE_LENGTH
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, EMBEDDING_DIM)
        self.lstm1 = KerasLSTM(EMBEDDING_DIM, LSTM_UNITS)
        self.lstm2 = KerasLSTM(LSTM_UNITS, LSTM_UNITS)
        self.dense = nn.Linear(LSTM_UNITS, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)  # Keras' 'uniform'
        nn.init.xavier_uniform_(self.dense.weight)  # Keras' Dense defaults
        nn.init.zeros_(self.dense.bias)
        # int32 ids: what fedp13n.data.shakespeare stores (forward takes int64 too)
        self.input_spec = InputSpec(
            x_shape=(sequence_length,),
            y_shape=(sequence_length,),
            x_dtype=torch.int32,
            y_dtype=torch.int64,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self._features(x)).transpose(1, 2)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The second LSTM's outputs ``(B, S, 256)`` for token ids ``x``."""
        if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"the Shakespeare model expects token ids of shape (B, S) and an integer "
                f"dtype, got shape {tuple(x.shape)} and {x.dtype}."
            )
        mask = x != PAD_ID
        return self.lstm2(self.lstm1(self.embedding(x), mask), mask)


class ShakespeareRNNBN(ShakespeareRNN):
    """:class:`ShakespeareRNN` with a ``BatchNorm1d`` over the second LSTM's 256 features
    (statistics over the batch and every position, padding included) before the dense
    layer: a Shakespeare model for FedBN (:mod:`fedp13n.algorithms.fedbn`; not a TFF model).
    Registered in forward order (:func:`~fedp13n.models.layers.register_in_order`), so its
    head is still ``dense``."""

    def __init__(
        self, vocab_size: int, sequence_length: int | None = DEFAULT_SEQUENCE_LENGTH
    ) -> None:
        super().__init__(vocab_size, sequence_length)
        self.bn = nn.BatchNorm1d(LSTM_UNITS)
        register_in_order(self, "embedding", "lstm1", "lstm2", "bn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self._features(x).transpose(1, 2))  # (B, 256, S): per feature
        return self.dense(h.transpose(1, 2)).transpose(1, 2)


def create_recurrent_model(
    vocab_size: int, sequence_length: int | None = DEFAULT_SEQUENCE_LENGTH
) -> ShakespeareRNN:
    """TFF's ``create_recurrent_model`` (``mask_zero=True``): see the module docstring.

    ``sequence_length`` only fixes the declared ``input_spec`` (as Keras'
    ``input_length``; the layers take any length); ``None`` declares any length. A fixed
    length lets fedp13n's batched engine dry-run the model before training.
    """
    _check_sizes(vocab_size, sequence_length)
    return ShakespeareRNN(vocab_size, sequence_length)


def _check_sizes(vocab_size: int, sequence_length: int | None) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}.")
    if sequence_length is not None and (
        isinstance(sequence_length, bool)
        or not isinstance(sequence_length, int)
        or sequence_length < 1
    ):
        raise ValueError(f"sequence_length must be a positive integer, got {sequence_length!r}.")


def shakespeare_rnn(num_classes: int) -> ShakespeareRNN:
    """The registry's builder (``num_classes`` = vocabulary size, 90 for TFF's task)."""
    return create_recurrent_model(num_classes)


def shakespeare_rnn_bn(num_classes: int) -> ShakespeareRNNBN:
    """:class:`ShakespeareRNNBN` for the registry (FedBN on Shakespeare)."""
    _check_sizes(num_classes, DEFAULT_SEQUENCE_LENGTH)
    return ShakespeareRNNBN(num_classes)


def masked_accuracy_counts(
    logits: torch.Tensor, targets: torch.Tensor, masked_tokens: Sequence[int] = (PAD_ID,)
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct, count)`` as int64 tensors: positions whose arg-max over the class axis
    (dim 1) is the target, and positions counted, leaving out targets in
    ``masked_tokens`` (TFF's: the pad id only)."""
    masked = torch.as_tensor(tuple(masked_tokens), dtype=targets.dtype, device=targets.device)
    counted = ~torch.isin(targets, masked)
    correct = (logits.argmax(dim=1) == targets) & counted
    return correct.sum(), counted.sum()


def masked_accuracy(
    logits: torch.Tensor, targets: torch.Tensor, masked_tokens: Sequence[int] = (PAD_ID,)
) -> torch.Tensor:
    """TFF's ``MaskedCategoricalAccuracy`` on one batch: correct / counted positions
    (float64; 0 when no position is counted, as Keras' ``divide_no_nan``)."""
    correct, count = masked_accuracy_counts(logits, targets, masked_tokens)
    return correct.double() / count.clamp(min=1).double()
