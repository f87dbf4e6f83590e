"""Which examples each local step of a client sees: the client's batch plan.

Client work (FedAvg's local training, fine-tuning in personalization) and the batched
multi-client engine all take their batches from :func:`batch_plan`, so they train on
exactly the same examples in the same order for the same random generator.

Pipelines:

* ``"epochs"``: ``epochs`` passes over the data; each pass is a fresh permutation drawn
  from ``generator`` (or the stored order without shuffling) cut into batches of
  ``batch_size``, the last one smaller. ``epochs * ceil(n / batch_size)`` steps. This is
  fedp13n's historical pipeline, :func:`batch_plan`'s default, and what personalization's
  fine-tuning uses (one pass per epoch, as TFF's ``build_personalize_fn``).
* ``"tff"``: TFF's client pipeline of the EMNIST experiments,
  ``dataset.repeat(epochs).shuffle(shuffle_buffer).batch(batch_size)``: the data repeated
  ``epochs`` times as one stream, shuffled by tf.data's buffered shuffle
  (:func:`tf_shuffle_order`), then cut into batches that run across epoch boundaries,
  the last one smaller: ``ceil(n * epochs / batch_size)`` steps. Without shuffling,
  3 examples, 2 epochs, batches of 2 give ``[0, 1], [2, 0], [1, 2]``. FedAvg's client
  pipeline by default (:data:`DEFAULT_CLIENT_PIPELINE`), in the library as in the CLI.

``max_steps=K`` is tf.data's ``.take(K)`` after batching: at most ``K`` local steps (what
a Reptile(K) stage needs: K local steps, not epochs). With ``max_steps``, ``epochs=None``
repeats the data without end (``.repeat()``), so exactly ``K`` full batches come out
(none for a client with no examples, as tf.data's repeat of an empty dataset).
"""

from __future__ import annotations

import numpy as np

from fedp13n.utils.checks import check_positive_int

PIPELINES = ("epochs", "tff")
#: FedAvg's client pipeline when none is given, in the library and the CLI alike: TFF's.
#: (:func:`batch_plan`'s own default, one pass per epoch, is what personalization's
#: fine-tuning does, as TFF's ``build_personalize_fn``.)
DEFAULT_CLIENT_PIPELINE = "tff"
#: tf.data shuffle buffer of TFF's EMNIST experiments (``.shuffle(1000)``).
DEFAULT_SHUFFLE_BUFFER = 1000


def batch_plan(
    num_examples: int,
    batch_size: int,
    *,
    epochs: int | None = 1,
    shuffle: bool = False,
    generator: np.random.Generator | None = None,
    pipeline: str = "epochs",
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    max_steps: int | None = None,
) -> list[np.ndarray]:
    """The example indices of every local step, in order (see the module docstring).

    Args:
        num_examples: the client's number of examples ``n`` (indices ``0 .. n-1``).
        batch_size: examples per step (the last step of the plan may have fewer).
        epochs: passes over the data; ``None`` (only with ``max_steps``) repeats forever.
        shuffle: draw the order from ``generator`` (required then).
        pipeline: ``"epochs"`` or ``"tff"``.
        shuffle_buffer: tf.data's buffer size for the ``"tff"`` pipeline.
        max_steps: at most this many steps (tf.data's ``.take``); ``None``: no limit.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}.")
    check_positive_int("batch_size", batch_size)
    if max_steps is not None:
        check_positive_int("max_steps", max_steps)
    if epochs is None:
        if max_steps is None:
            raise ValueError(
                "epochs=None repeats the data forever; give max_steps (the number of local "
                "steps) or a number of epochs."
            )
    else:
        check_positive_int("epochs", epochs)
    if shuffle and generator is None:
        raise ValueError("shuffle=True needs a numpy Generator so the order is reproducible.")
    n = int(num_examples)
    if n == 0:
        return []
    if pipeline == "epochs":
        return _epochs_plan(n, batch_size, epochs, shuffle, generator, max_steps)
    check_positive_int("shuffle_buffer", shuffle_buffer)
    if epochs is None:  # unbounded repeat: just enough of the stream for max_steps batches
        num_out = max_steps * batch_size
        # the buffer stays full while it emits num_out elements: they only need
        # shuffle_buffer + num_out - 1 stream elements (without shuffling: num_out)
        stream_len = num_out + (shuffle_buffer - 1 if shuffle else 0)
    else:
        stream_len = n * epochs
        num_out = stream_len if max_steps is None else min(stream_len, max_steps * batch_size)
    if shuffle:
        positions = tf_shuffle_order(stream_len, shuffle_buffer, generator, num_out=num_out)
    else:
        positions = np.arange(num_out)
    order = positions % n  # stream position -> example index (the data repeated)
    return [order[s : s + batch_size] for s in range(0, num_out, batch_size)]


def _epochs_plan(
    n: int,
    batch_size: int,
    epochs: int | None,
    shuffle: bool,
    generator: np.random.Generator | None,
    max_steps: int | None,
) -> list[np.ndarray]:
    plan: list[np.ndarray] = []
    epoch = 0
    while epochs is None or epoch < epochs:
        order = generator.permutation(n) if shuffle else np.arange(n)
        plan.extend(order[s : s + batch_size] for s in range(0, n, batch_size))
        epoch += 1
        if max_steps is not None and len(plan) >= max_steps:
            return plan[:max_steps]
    return plan


def tf_shuffle_order(
    num_elements: int,
    buffer_size: int,
    generator: np.random.Generator,
    *,
    num_out: int | None = None,
) -> np.ndarray:
    """tf.data's ``shuffle(buffer_size)`` of the stream ``0 .. num_elements - 1``.

    The buffered shuffle: a buffer is filled with the first ``buffer_size`` elements;
    every output picks a uniformly random slot of the buffer, emits its element and
    refills that slot with the next element of the stream; once the stream is exhausted
    the buffer drains at random (the emptied slot takes the buffer's last element and the
    buffer shrinks by one). ``buffer_size >= num_elements`` gives a uniform permutation,
    ``buffer_size == 1`` the identity; an element never comes out before
    ``position - buffer_size + 1`` others did.

    The random slots: ``u = generator.random(num_out)`` drawn at once, and output ``t``
    takes slot ``floor(u[t] * size_t)`` of a buffer holding
    ``size_t = min(buffer_size, num_elements - t)`` elements. Returns the first
    ``num_out`` (default: all) emitted stream positions.
    """
    total = int(num_elements)
    num_out = total if num_out is None else int(num_out)
    if not 0 <= num_out <= total:
        raise ValueError(f"num_out must be between 0 and num_elements ({total}), got {num_out}.")
    size = min(check_positive_int("buffer_size", buffer_size), total)
    sizes = np.minimum(size, total - np.arange(num_out))
    slots = np.minimum((generator.random(num_out) * sizes).astype(np.int64), sizes - 1)
    buf = list(range(size))
    nxt = size
    out: list[int] = []
    for s in slots.tolist():
        out.append(buf[s])
        if nxt < total:
            buf[s] = nxt
            nxt += 1
        else:
            last = buf.pop()
            if s < len(buf):
                buf[s] = last
    return np.asarray(out, dtype=np.int64)
