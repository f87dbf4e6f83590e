"""Task ``shakespeare``: TFF's federated Shakespeare next-character prediction
(:mod:`fedp13n.data.shakespeare`, :mod:`fedp13n.models.shakespeare`).

Data sources: ``shakespeare`` (no ``data_dir``: TFF's ``shakespeare.tar.bz2`` through the
checked download and cache, :func:`fedp13n.data.datasets.fetch_shakespeare`; with
``data_dir``: the folder holding TFF's ``shakespeare_train.h5`` and
``shakespeare_test.h5``, e.g. ``../shared/data/shakespeare_sample``) and
``shakespeare-leaf`` (``data_dir`` holding LEAF's ``train/`` and ``test/`` JSON shards).
Every example is ``SEQUENCE_LENGTH`` (80, TFF's ``DEFAULT_SEQUENCE_LENGTH``) int32 ids in
``x`` and the next-character ids in ``y``; the model outputs ``VOCAB_SIZE`` (90, TFF's
``char_prediction_tasks.VOCAB_LENGTH``) logits per position.

The accuracy leaves out only targets equal to the pad id 0, as TFF's
``MaskedCategoricalAccuracy(masked_tokens=[pad])`` does (``char_prediction_tasks.py``,
tensorflow_federated 0.87): out-of-vocabulary, beginning and end targets count.
"""

from __future__ import annotations

from typing import Any

#: The target ids the accuracy leaves out: TFF's ``masked_tokens=[pad]`` (pad id 0,
#: :data:`fedp13n.data.shakespeare.PAD_ID`; kept literal so the registry stays import-free,
#: and tests/test_shakespeare_task.py checks it equals both modules' ``PAD_ID``).
ACCURACY_IGNORED_IDS: tuple[int, ...] = (0,)


def load(
    source: str,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    progress: bool = False,
) -> tuple[Any, Any]:
    """The (train, test) ClientData of data source ``source`` (``shakespeare`` or
    ``shakespeare-leaf``) through :func:`fedp13n.data.datasets.load_dataset` (a one-line
    ``DataError`` when it cannot load)."""
    from fedp13n.data.datasets import load_dataset

    return load_dataset(source, data_dir=data_dir, cache_dir=cache_dir, progress=progress)


def notice(source: str, *, data_dir: str | None = None, cache_dir: str | None = None) -> str | None:
    """What will be downloaded before ``source`` loads (TFF's archive), or None."""
    from fedp13n.data.datasets import download_notice

    return download_notice(source, data_dir, cache_dir)


def num_classes() -> int:
    """The model's outputs: TFF's ``VOCAB_LENGTH``, 90 (pad, 86 characters, oov, bos, eos)."""
    from fedp13n.data.shakespeare import VOCAB_SIZE

    return VOCAB_SIZE
