"""Record TFF's Shakespeare model, loss and accuracy on a hand-built batch.

``tests/test_shakespeare_model.py`` compares fedp13n's PyTorch model with the numbers
this script writes (``tff_shakespeare_model.json``); the test needs no TFF. Run it in the
TFF 0.87 venv (``../shared/tff/setup.sh`` builds it; tensorflow 2.14.1, keras 2.14.0):

    /work/main/.tff-venv/bin/python tests/data/record_tff_shakespeare_model.py \
        > tests/data/tff_shakespeare_model.json

What it runs is TFF's own code, unchanged (``tensorflow_federated/python/simulation/
baselines/shakespeare/``): the task's ``model_fn`` of ``char_prediction_tasks`` (the Keras
model of ``char_prediction_models.create_recurrent_model`` with vocab 90, sequence 80,
``mask_zero=True``, wrapped by ``tff.learning.models.from_keras_model`` with the task's
``SparseCategoricalCrossentropy(from_logits=True)`` loss and its
``NumTokensCounter``/``MaskedCategoricalAccuracy`` metrics masking the pad id), and the
batch comes from the task's own preprocessing (``char_prediction_preprocessing.
create_preprocess_fn``, batch 3, no shuffle) of three snippets: 80 characters (82
tokens: a full sequence, then ``[eos, pad * 80]``, whose targets are all padding) and a
short one with out-of-vocabulary characters. Every weight tensor ``k`` (in Keras' order:
embedding, LSTM 1 kernel / recurrent kernel / bias, LSTM 2 likewise, dense kernel / bias)
is set to ``AMPLITUDE[k] * sin(arange(size) + k)`` in Keras' layout (row-major), plus
``SPACE_BUMP`` on the dense bias, so the test can set the same weights without TFF.

Besides TFF's numbers it records Keras' own loss object called eagerly on the Keras
model's output (``loss_keras_eager``): there the embedding's mask reaches the loss and
leaves out the positions whose *input* is padding. In TFF's ``forward_pass`` it does not
(the predictions come out of the nested ``tf.function`` ``predict_on_batch``, which drops
Keras' ``_keras_mask``), so TFF's loss is the plain mean over all positions, padding
included (``loss`` equals ``loss_without_mask``).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_federated as tff  # noqa: E402
from tensorflow_federated.python.simulation.baselines.shakespeare import (  # noqa: E402
    char_prediction_preprocessing as prep,
)
from tensorflow_federated.python.simulation.baselines.shakespeare import (  # noqa: E402
    char_prediction_tasks as tasks,
)

# Amplitude of each weight tensor's closed form, in Keras' weight order.
AMPLITUDE = [1.0, 0.5, 0.2, 0.3, 0.2, 0.1, 0.3, 0.3, 0.5]
# Added to the dense bias at the space id (the commonest target), so that the model gets
# some targets right and predicts several ids: (id, amount).
SPACE_BUMP = (14, 0.7)
SNIPPETS = [
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to su",
    "Ay, madam~ {it} is <so>.",
]
POSITIONS = [(0, 0), (0, 40), (0, 79), (1, 0), (1, 1), (2, 0), (2, 20), (2, 25), (2, 26), (2, 79)]


def closed_form(shape, k):
    size = int(np.prod(shape))
    w = AMPLITUDE[k] * np.sin(np.arange(size, dtype=np.float64) + k)
    return w.reshape(shape).astype(np.float32)


def main() -> None:
    assert len(SNIPPETS[0]) == 80
    spec = tff.simulation.baselines.ClientSpec(num_epochs=1, batch_size=3, shuffle_buffer_size=1)
    task = tasks.create_character_prediction_task_from_datasets(
        spec,
        None,
        80,
        tff.simulation.datasets.TestClientData({"a": {"snippets": ["x"]}}),
        tff.simulation.datasets.TestClientData({"a": {"snippets": ["x"]}}),
    )
    ds = tf.data.Dataset.from_tensor_slices({"snippets": tf.constant(SNIPPETS)})
    batches = list(prep.create_preprocess_fn(spec, 80)(ds))
    assert len(batches) == 1
    x, y = batches[0]

    model = task.model_fn()
    keras_model = model._keras_model  # noqa: SLF001 - TFF keeps the Keras model here
    weights = keras_model.get_weights()
    new = [closed_form(w.shape, k) for k, w in enumerate(weights)]
    new[-1][SPACE_BUMP[0]] += SPACE_BUMP[1]
    keras_model.set_weights(new)
    out = model.forward_pass((x, y), training=False)
    metrics = {m.name: m.result().numpy().tolist() for m in model.get_metrics()}
    logits = out.predictions.numpy()  # (batch, sequence, vocab)
    # Keras' compiled-style loss on the same logits without the mask, for contrast.
    unmasked = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        y, tf.constant(logits)
    )
    eager = keras_model(x, training=False)  # carries _keras_mask: x != 0
    masked = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, eager)
    record = {
        "tff_version": tff.__version__,
        "tensorflow_version": tf.__version__,
        "vocab_length": tasks.VOCAB_LENGTH,
        "special_tokens_pad_oov_bos_eos": list(prep.get_special_tokens()),
        "count_params": int(keras_model.count_params()),
        "weight_shapes": [[w.name, list(w.shape)] for w in keras_model.weights],
        "amplitude": AMPLITUDE,
        "space_bump": list(SPACE_BUMP),
        "snippets": SNIPPETS,
        "x": x.numpy().tolist(),
        "y": y.numpy().tolist(),
        "loss": float(out.loss.numpy()),
        "loss_without_mask": float(unmasked.numpy()),
        "loss_keras_eager": float(masked.numpy()),
        "metrics": metrics,
        "logits_at": [{"position": [b, t], "logits": logits[b, t].tolist()} for b, t in POSITIONS],
        "argmax": logits.argmax(-1).tolist(),
    }
    json.dump(record, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
