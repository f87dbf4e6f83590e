"""Record TFF's own Shakespeare preprocessing of the real sample, for
``tests/test_shakespeare_data.py`` (which must not need TFF).

Runs TFF 0.87's ``char_prediction_preprocessing.create_preprocess_fn``
(``tensorflow_federated/python/simulation/baselines/shakespeare/``) with TFF's evaluation
spec (``char_prediction_tasks``: ``ClientSpec(num_epochs=1, batch_size=32,
shuffle_buffer_size=1)``, i.e. no shuffling) on each client of
``../shared/data/shakespeare_sample``. Each client's dataset is built exactly as TFF's
former ``HDF5ClientData`` (``tensorflow_federated/python/simulation/hdf5_client_data.py``)
did for ``shakespeare_{train,test}.h5``: ``tf.data.Dataset.from_tensor_slices`` of
``OrderedDict(snippets=h5[f"examples/{cid}/snippets"][()])``.

Prints JSON: per split, the total number of examples over all clients, the sum of all
x ids and of all y ids, the SHA-256 of all x (and of all y) as little-endian int64 in
client order, and for a few named clients the number of examples, the sums of
their x and y ids and their first example's x and y. Run with the TFF venv:

    /work/main/.tff-venv/bin/python tests/data/record_tff_shakespeare.py > /tmp/tff.json
"""

from __future__ import annotations

import collections
import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import tensorflow as tf
from tensorflow_federated.python.simulation.baselines import client_spec
from tensorflow_federated.python.simulation.baselines.shakespeare import (
    char_prediction_preprocessing as pp,
)

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "shakespeare_sample"

#: Clients recorded in detail: the smallest test client (10 characters), one client
#: with an empty test snippet, one with an empty train snippet, the first and the last.
CLIENTS = [
    "THE_FIRST_PART_OF_KING_HENRY_THE_FOURTH_BULLCALF",
    "ALL_S_WELL_THAT_ENDS_WELL_MARDIAN",
    "ALL_S_WELL_THAT_ENDS_WELL_AEDILE",
    "THE_TRAGEDY_OF_KING_LEAR_KING",
]


def tff_examples(snippets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TFF's preprocessing of one client's snippets: (x, y), each (n, 80) int64."""
    spec = client_spec.ClientSpec(num_epochs=1, batch_size=32, shuffle_buffer_size=1)
    preprocess = pp.create_preprocess_fn(spec, sequence_length=pp.DEFAULT_SEQUENCE_LENGTH)
    ds = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(snippets=snippets))
    xs, ys = [], []
    for x, y in preprocess(ds):
        xs.append(x.numpy())
        ys.append(y.numpy())
    width = pp.DEFAULT_SEQUENCE_LENGTH
    if not xs:
        return np.zeros((0, width), np.int64), np.zeros((0, width), np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def record_split(path: Path, extra: list[str]) -> dict:
    out: dict = {"clients": {}, "num_examples": 0, "sum_x": 0, "sum_y": 0, "num_clients": 0}
    hx, hy = hashlib.sha256(), hashlib.sha256()
    with h5py.File(path, "r") as f:
        group = f["examples"]
        for cid in group:
            x, y = tff_examples(group[cid]["snippets"][()])
            out["num_clients"] += 1
            out["num_examples"] += len(x)
            out["sum_x"] += int(x.sum())
            out["sum_y"] += int(y.sum())
            hx.update(x.astype("<i8").tobytes())
            hy.update(y.astype("<i8").tobytes())
            if cid in CLIENTS or cid in extra:
                out["clients"][cid] = {
                    "num_snippets": len(group[cid]["snippets"]),
                    "num_examples": len(x),
                    "sum_x": int(x.sum()),
                    "sum_y": int(y.sum()),
                    "first_x": x[0].tolist() if len(x) else [],
                    "first_y": y[0].tolist() if len(y) else [],
                }
    out["sha256_x"], out["sha256_y"] = hx.hexdigest(), hy.hexdigest()
    return out


def main() -> None:
    with h5py.File(SAMPLE / "shakespeare_train.h5", "r") as f:
        empty_train = [
            c for c in f["examples"] if any(len(s) == 0 for s in f["examples"][c]["snippets"][()])
        ]
    record = {
        "tff": __import__("tensorflow_federated").__version__,
        "char_vocab": "".join(pp.CHAR_VOCAB),
        "special_tokens": list(pp.get_special_tokens()),
        "train": record_split(SAMPLE / "shakespeare_train.h5", empty_train[:1]),
        "test": record_split(SAMPLE / "shakespeare_test.h5", []),
    }
    json.dump(record, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
