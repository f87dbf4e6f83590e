"""Federated Shakespeare next-character prediction, preprocessed exactly as TFF does.

The data (Caldas et al. 2018, "LEAF"; TFF's ``tff.simulation.datasets.shakespeare``): one
client per speaking role, each example ("snippet") a run of lines the role speaks.

Preprocessing, from TFF 0.87 (``google-parfait/tensorflow-federated``, file
``tensorflow_federated/python/simulation/baselines/shakespeare/char_prediction_preprocessing.py``:
``CHAR_VOCAB``, ``DEFAULT_SEQUENCE_LENGTH``, ``get_special_tokens``,
``_build_tokenize_fn``, ``create_preprocess_fn``; and ``char_prediction_tasks.py``:
``VOCAB_LENGTH``):

- each snippet's *bytes* (``tf.strings.bytes_split``) are looked up in the 86-character
  :data:`VOCAB` (a ``StaticVocabularyTable`` with one out-of-vocabulary bucket) and
  shifted by one to reserve 0 for padding: ``VOCAB[i]`` has id ``i + 1`` (1..86), any
  other byte the out-of-vocabulary id 87;
- the ids are framed as ``[BOS_ID] + ids + [EOS_ID]`` (88, 89) and padded with
  ``PAD_ID`` (0) up to a multiple of ``SEQUENCE_LENGTH + 1`` (81);
- the padded ids of all snippets, in order, are cut into chunks of 81 (no chunk spans two
  snippets: each snippet is padded to whole chunks), and each chunk gives one example
  ``x = chunk[:-1]``, ``y = chunk[1:]``. So a snippet of n bytes gives
  ``ceil((n + 2) / 81)`` examples: a short one (or an empty one, ``[BOS, EOS]`` then
  padding) still gives one.

TFF's evaluation spec (``char_prediction_tasks``: ``ClientSpec(num_epochs=1,
batch_size=32, shuffle_buffer_size=1)``) does not shuffle, so a client's examples here are
in TFF's evaluation order; TFF's training spec shuffles snippets (buffer 50) before this
step, which is the training loop's business, not the data's.

Arrays: ``x`` and ``y`` are ``int32`` of shape ``(n, SEQUENCE_LENGTH)`` (never ``uint8``,
which fedp13n takes for image pixels k/255). ``BOS_ID`` occurs only in ``x``; ``y`` holds
character ids, ``OOV_IDS``, ``EOS_ID`` and ``PAD_ID``. The model's output has
``VOCAB_SIZE`` (90) classes; TFF's Shakespeare task counts accuracy and tokens with only
``PAD_ID`` masked (``MaskedCategoricalAccuracy(masked_tokens=[pad_token])``).

Files read here: TFF's ``shakespeare_{train,test}.h5`` (``examples/<client_id>/snippets``,
a 1-D dataset of byte strings, fixed-length ``|S<n>`` as TFF's files store them, or
variable-length) and LEAF's Shakespeare JSON (see :func:`load_shakespeare_leaf_split`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from fedp13n.data.client_data import ClientData
from fedp13n.data.h5 import _read_dataset, client_group, open_examples
from fedp13n.data.leaf import leaf_entry, leaf_shards, load_leaf_splits
from fedp13n.data.validate import DataFormatError, align_train_test, tff_pair

#: TFF's ``CHAR_VOCAB`` (``char_prediction_preprocessing.py``), in TFF's order: the
#: character ``VOCAB[i]`` has id ``i + 1``.
VOCAB: tuple[str, ...] = tuple(
    "dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
)
#: TFF's ``DEFAULT_SEQUENCE_LENGTH`` (both TFF files): characters per example.
SEQUENCE_LENGTH = 80
#: TFF's ``get_special_tokens()``: pad 0, oov ``len(VOCAB) + 1``, bos ``+ 2``, eos ``+ 3``.
PAD_ID = 0
#: The out-of-vocabulary ids: TFF uses one bucket (``num_oov_buckets=1``).
OOV_IDS: tuple[int, ...] = (len(VOCAB) + 1,)
BOS_ID = len(VOCAB) + 2
EOS_ID = len(VOCAB) + 3
#: The model's output size, TFF's ``VOCAB_LENGTH = len(CHAR_VOCAB) + 4``
#: (``char_prediction_tasks.py``): pad, 86 characters, oov, bos, eos.
VOCAB_SIZE = len(VOCAB) + 4
#: TFF's file names inside ``shakespeare.tar.bz2``.
H5_NAMES = ("shakespeare_train.h5", "shakespeare_test.h5")

#: byte -> id: a vocabulary character's id, every other byte the out-of-vocabulary id.
_BYTE_IDS = np.full(256, OOV_IDS[0], dtype=np.int32)
for _i, _c in enumerate(VOCAB):
    _BYTE_IDS[ord(_c)] = _i + 1
_CHAR_IDS = {c: i + 1 for i, c in enumerate(VOCAB)}


def _check_length(sequence_length: int) -> int:
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int | np.integer):
        raise ValueError(f"sequence_length must be a positive integer, got {sequence_length!r}.")
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be a positive integer, got {sequence_length}.")
    return int(sequence_length)


def _as_bytes(snippet: str | bytes | np.bytes_) -> bytes:
    """A snippet's bytes: strings are UTF-8 encoded, as ``tf.constant`` does."""
    if isinstance(snippet, bytes):  # np.bytes_ too
        return bytes(snippet)
    if isinstance(snippet, str):
        return snippet.encode("utf-8")
    raise TypeError(f"a snippet must be str or bytes, got {type(snippet).__name__}.")


def char_ids(snippet: str | bytes) -> np.ndarray:
    """The id of each byte of ``snippet`` (int32; no BOS, EOS or padding)."""
    return _BYTE_IDS[np.frombuffer(_as_bytes(snippet), dtype=np.uint8)]


def to_ids(snippet: str | bytes, sequence_length: int = SEQUENCE_LENGTH) -> np.ndarray:
    """TFF's ``to_tokens_and_pad`` of one snippet: ``[BOS] + ids + [EOS]``, then ``PAD_ID``
    up to a multiple of ``sequence_length + 1`` (int32, 1-D)."""
    split = _check_length(sequence_length) + 1
    ids = char_ids(snippet)
    out = np.zeros(-(-(len(ids) + 2) // split) * split, dtype=np.int32)
    out[0], out[1 : len(ids) + 1], out[len(ids) + 1] = BOS_ID, ids, EOS_ID
    return out


def snippets_to_examples(
    snippets: Iterable[str | bytes], sequence_length: int = SEQUENCE_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """TFF's preprocessing of one client's snippets, in order: ``(x, y)``, both int32
    ``(n, sequence_length)``, ``x`` the first ``sequence_length`` ids of each chunk of
    ``to_ids`` and ``y`` the last (the next-character targets)."""
    length = _check_length(sequence_length)
    tokens = np.concatenate([np.zeros(0, np.int32), *(to_ids(s, length) for s in snippets)])
    seqs = tokens.reshape(-1, length + 1)
    return np.ascontiguousarray(seqs[:, :-1]), np.ascontiguousarray(seqs[:, 1:])


def _from_clients(clients: list[tuple[str, np.ndarray, np.ndarray]], source: str) -> ClientData:
    if not clients:
        raise DataFormatError(f"{source}: no clients.")
    return ClientData.from_clients(clients)


# -- TFF's h5 files ---------------------------------------------------------------------------


def _snippet_list(raw: np.ndarray, *, path: Path, cid: str) -> list[bytes]:
    """The snippets of ``examples/<cid>/snippets``: fixed-length (``|S<n>``, numpy strips
    the trailing NUL padding) or variable-length strings, 1-D."""
    where = f"{path}: client {cid!r}: examples/{cid}/snippets"
    if raw.ndim != 1:
        raise DataFormatError(f"{where} has shape {raw.shape}; expected a 1-D list of strings.")
    if raw.dtype.kind == "S":
        return [bytes(s) for s in raw]
    if raw.dtype.kind in "OU":
        try:
            return [_as_bytes(s) for s in raw]
        except TypeError:
            pass
    raise DataFormatError(f"{where} has dtype {raw.dtype}; expected byte strings (TFF's layout).")


def load_shakespeare_h5(
    path: str | os.PathLike, *, sequence_length: int = SEQUENCE_LENGTH
) -> tuple[ClientData, int]:
    """One TFF Shakespeare h5 file, preprocessed: ``(ClientData, number of snippets)``;
    clients in the file's (sorted) key order."""
    path = Path(path)
    f, group, limit = open_examples(path, "snippets")
    clients, num_snippets = [], 0
    with f:
        for cid in group:
            client = client_group(group, cid, path=path, wants="'snippets'")
            raw = _read_dataset(client, "snippets", path=path, cid=cid, limit=limit)
            snippets = _snippet_list(raw, path=path, cid=cid)
            num_snippets += len(snippets)
            clients.append((cid, *snippets_to_examples(snippets, sequence_length)))
    return _from_clients(clients, str(path)), num_snippets


def read_shakespeare_dir(
    data_dir: str | os.PathLike, *, sequence_length: int = SEQUENCE_LENGTH
) -> tuple[ClientData, ClientData, tuple[int, int]]:
    """``shakespeare_{train,test}.h5`` in ``data_dir`` (uncached): ``(train, test,
    (train snippets, test snippets))``, both listing the same clients in the same order."""
    paths = tff_pair(Path(data_dir), H5_NAMES, "shakespeare.tar.bz2", "the directory")
    train, n_train = load_shakespeare_h5(paths[0], sequence_length=sequence_length)
    test, n_test = load_shakespeare_h5(paths[1], sequence_length=sequence_length)
    train, test = align_train_test(train, test, source=f"{paths[0]} + {paths[1]}")
    return train, test, (n_train, n_test)


# -- LEAF's JSON ------------------------------------------------------------------------------


def leaf_window_to_example(
    x: str, y: str, sequence_length: int = SEQUENCE_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """One LEAF sample (``x`` a window of ``sequence_length`` characters, ``y`` the next
    character) as one example: ``x`` ids of the window's characters (no BOS: LEAF's
    windows are cut from running text) and ``y = x[1:] + [id of y]``, the next character
    at every position, as TFF's examples have. Characters map as in :func:`char_ids`
    (LEAF's text is ASCII; any character outside :data:`VOCAB` is out of vocabulary)."""
    ids = np.fromiter((_CHAR_IDS.get(c, OOV_IDS[0]) for c in x), dtype=np.int32, count=len(x))
    nxt = _CHAR_IDS.get(y, OOV_IDS[0])
    return ids, np.append(ids[1:], np.int32(nxt))


def _leaf_client(entry: dict, *, path: Path, cid: str, sequence_length: int):
    xs, ys = entry["x"], entry["y"]
    if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
        raise DataFormatError(
            f"{path}: client {cid!r}: 'x' and 'y' must be lists of the same length."
        )
    x = np.zeros((len(xs), sequence_length), dtype=np.int32)
    y = np.zeros((len(xs), sequence_length), dtype=np.int32)
    for j, (wx, wy) in enumerate(zip(xs, ys, strict=True)):
        if isinstance(wx, list) and len(wx) == 784:
            raise DataFormatError(
                f"{path}: client {cid!r}: x[{j}] is a list of 784 numbers, FEMNIST's LEAF "
                "pixels, not Shakespeare text: load it as EMNIST (--task emnist --dataset leaf)."
            )
        if not isinstance(wx, str) or len(wx) != sequence_length:
            raise DataFormatError(
                f"{path}: client {cid!r}: x[{j}] is not a string of {sequence_length} "
                "characters (LEAF's Shakespeare windows); pass the sequence length the "
                "data was made with."
            )
        if not isinstance(wy, str) or len(wy) != 1:
            raise DataFormatError(
                f"{path}: client {cid!r}: y[{j}] is not a single character (LEAF's next character)."
            )
        x[j], y[j] = leaf_window_to_example(wx, wy, sequence_length)
    return x, y


def load_shakespeare_leaf_split(
    split_dir: str | os.PathLike, *, sequence_length: int = SEQUENCE_LENGTH
) -> ClientData:
    """Every ``*.json`` shard of one LEAF Shakespeare split (files in name order, users
    in each file's ``users`` order): ``{"users": [...], "user_data": {uid: {"x":
    [windows], "y": [next characters]}}}``, each sample one example
    (:func:`leaf_window_to_example`)."""
    length = _check_length(sequence_length)
    clients, seen = [], set()
    for path, data in leaf_shards(split_dir):
        for user in data["users"]:
            if str(user) in seen:
                raise DataFormatError(f"{path}: client {str(user)!r} appears twice in the split.")
            cid, entry = leaf_entry(data, user, path)
            seen.add(cid)
            clients.append((cid, *_leaf_client(entry, path=path, cid=cid, sequence_length=length)))
    return _from_clients(clients, str(Path(split_dir)))


def load_shakespeare_leaf_dir(
    data_dir: str | os.PathLike, *, sequence_length: int = SEQUENCE_LENGTH
) -> tuple[ClientData, ClientData]:
    """A LEAF Shakespeare directory with ``train/`` and ``test/`` JSON shards (uncached)."""
    return load_leaf_splits(
        data_dir,
        lambda d: load_shakespeare_leaf_split(d, sequence_length=sequence_length),
        "shakespeare",
    )
